"""The families added beyond the first eight, and the transformer classes dit_cache refuses, with the reason."""

from . import allegro, auraflow, chroma, cogview4, flux2, hunyuan_video15, mochi, sana, skyreels_v2, wan_vace

SPECS = tuple(module.SPEC for module in (skyreels_v2, wan_vace, flux2, chroma, mochi, sana, cogview4, hunyuan_video15, auraflow, allegro))

# class name -> why its blocks cannot be cached exactly (apply refuses it with this reason; see docs/adapters.md)
REFUSED: dict[str, str] = {}
