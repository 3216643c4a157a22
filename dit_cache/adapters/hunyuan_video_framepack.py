"""HunyuanVideo FramePack (HunyuanVideoFramepackTransformer3DModel): HunyuanVideo's own blocks and layout; the clean
history latents it packs in front are extra tokens of the same sequence. The pipeline denoises one section after
another, each a full trajectory (state resets at each section's first step)."""

import dataclasses

from . import hunyuan_video

SPEC = dataclasses.replace(
    hunyuan_video.SPEC, name="hunyuan_video_framepack", class_names=("HunyuanVideoFramepackTransformer3DModel",)
)
