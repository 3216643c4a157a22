"""LTX-2 (LTX2VideoTransformer3DModel): audio and video in one model; each of `transformer_blocks` takes both
streams and returns (video, audio), so the audio stream is cached as the second stream. Video and audio self-
and cross-attention, the audio<->video attentions (with RoPE on their queries: declared as attention, never
token-subset) and the MLPs `ff` / `audio_ff` are the units. CFG batched under cache_context("cond_uncond")."""

from .spec import BlockGroup, ModelSpec, temb_indicator
from .tokens import FRAME_ARGS

SPEC = ModelSpec(
    name="ltx2",
    class_names=("LTX2VideoTransformer3DModel",),
    groups=(
        BlockGroup(
            "transformer_blocks", hidden_index=0, encoder_index=1,
            attention=("attn1", "audio_attn1", "audio_to_video_attn", "video_to_audio_attn"),
            cross_attention=("attn2", "audio_attn2"), mlp=("ff", "audio_ff"), encoder_arg="audio_hidden_states",
        ),
    ),
    indicator=temb_indicator("temb"),
    indicator_doc="the video timestep embedding `temb`",
    tokens=FRAME_ARGS,
)  # fmt: skip
