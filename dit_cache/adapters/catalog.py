"""The families added beyond the first eight, and the transformer classes dit_cache refuses, with the reason."""

from . import (
    allegro,
    auraflow,
    bria,
    bria_fibo,
    chroma,
    chronoedit,
    cogview3plus,
    cogview4,
    dit,
    easyanimate,
    ernie_image,
    flux2,
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
    mochi,
    motif_video,
    ovis_image,
    prx,
    sana,
    sana_video,
    skyreels_v2,
    wan_animate,
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
        hunyuan_video_framepack,
        ltx2,
        wan_animate,
        bria_fibo,
        glm_image,
        hidream_image,
    )
)

# class name -> why its blocks cannot be cached exactly (apply refuses it with this reason; see docs/adapters.md)
_NO_STEP = (
    "dit_cache reads a call's step by matching its timestep (times the adapter's timestep_scale) to the scheduler's "
    "timesteps, and its CFG branch from a cache_context"
)
REFUSED: dict[str, str] = {
    "Lumina2Transformer2DModel": (
        "Lumina2Pipeline passes the timestep as 1 - t / 1000 and runs classifier-free guidance as two calls per step "
        f"without a cache_context; {_NO_STEP}, so it could tell neither (a timestep map in the step locator would "
        "lift this)"
    ),
    "ZImageTransformer2DModel": (
        "ZImagePipeline passes the timestep reversed, as (1000 - t) / 1000; "
        f"{_NO_STEP}, so it cannot tell the step (a timestep map in the step locator would lift this)"
    ),
    "CosmosTransformer3DModel": (
        "the Cosmos 2 pipelines pass sigma / (sigma + 1) as the timestep and run classifier-free guidance as two "
        f"calls without a cache_context; {_NO_STEP}, so it could tell neither (the Cosmos 1 pipelines also need the "
        "cosmos_guardrail safety checker to run at all)"
    ),
}
