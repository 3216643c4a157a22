"""The families added beyond the first eight, and the transformer classes dit_cache refuses, with the reason."""

from . import skyreels_v2, wan_vace

SPECS = tuple(module.SPEC for module in (skyreels_v2, wan_vace))

# class name -> why its blocks cannot be cached exactly (apply refuses it with this reason; see docs/adapters.md)
REFUSED: dict[str, str] = {}
