"""The families added beyond the first eight, and the transformer classes dit_cache refuses, with the reason."""

from . import (
    allegro,
    auraflow,
    bria,
    chronoedit,
    chroma,
    cogview3plus,
    cogview4,
    dit,
    easyanimate,
    ernie_image,
    flux2,
    hunyuan_video15,
    hunyuandit,
    hunyuanimage,
    kandinsky5,
    krea2,
    latte,
    longcat_image,
    mochi,
    motif_video,
    ovis_image,
    prx,
    sana,
    sana_video,
    skyreels_v2,
    wan_vace,
)

SPECS = tuple(
    module.SPEC
    for module in (
        skyreels_v2,
        wan_vace,
        flux2,
        chroma,
        mochi,
        sana,
        cogview4,
        hunyuan_video15,
        auraflow,
        allegro,
        bria,
        ovis_image,
        longcat_image,
        motif_video,
        hunyuanimage,
        easyanimate,
        cogview3plus,
        kandinsky5,
        sana_video,
        hunyuandit,
        dit,
        krea2,
        prx,
        latte,
        chronoedit,
        ernie_image,
    )
)

# class name -> why its blocks cannot be cached exactly (apply refuses it with this reason; see docs/adapters.md)
REFUSED: dict[str, str] = {}
