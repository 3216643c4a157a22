"""The families added beyond the first eight, and the transformer classes dit_cache refuses, with the reason."""

from . import (
    allegro,
    auraflow,
    bria,
    bria_fibo,
    bria_fibo2,
    chroma,
    chronoedit,
    cogview3plus,
    cogview4,
    consisid,
    dit,
    easyanimate,
    ernie_image,
    flux2,
    flux3,
    glm_image,
    hidream_image,
    hunyuan_video15,
    hunyuan_video_framepack,
    hunyuandit,
    hunyuanimage,
    kandinsky5,
    krea2,
    latte,
    longcat_image,
    ltx2,
    lumina2,
    mochi,
    motif_video,
    omnigen,
    ovis_image,
    prx,
    qwenimage21,
    sana,
    sana_video,
    skyreels_v2,
    wan_animate,
    wan_vace,
    z_image,
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
        hunyuan_video_framepack,
        ltx2,
        wan_animate,
        bria_fibo,
        glm_image,
        hidream_image,
        z_image,
        lumina2,
        flux3,
        qwenimage21,
        bria_fibo2,
        consisid,
        omnigen,
    )
)

# class name -> why its blocks cannot be cached exactly (apply refuses it with this reason; see docs/adapters.md)
REFUSED: dict[str, str] = {
    "LuminaNextDiT2DModel": (
        "no adapter yet: LuminaPipeline passes the timestep reversed (1 - t / 1000), which the generic adapter would "
        "read as the wrong step; an adapter with timestep_scale=-1000, timestep_offset=1000 (as Lumina 2's) and a "
        "tiny pipeline entry would lift this (docs/adapters.md, adding a family)"
    ),
    "CosmosTransformer3DModel": (
        "its pipelines pass the timestep in three conventions (Cosmos 1: the EDM scheduler's timestep; Cosmos 2: "
        "sigma / (sigma + 1), not an affine map of the scheduler's timestep; Cosmos 2.5: sigma, per frame where "
        "frames are conditioning), so one adapter's timestep map (scheduler timestep = timestep_offset + "
        "timestep_scale * timestep) cannot locate the step for all of them; and every Cosmos pipeline needs the "
        "cosmos_guardrail safety checker to run at all"
    ),
}
