"""CogVideoX (CogVideoXTransformer3DModel): `transformer_blocks` returning (hidden, encoder); the pipeline batches
CFG as [uncond, cond] under one cache_context("cond_uncond"). TeaCache's indicator is the time embedding."""

from .spec import double_single, temb_indicator
from .tokens import FRAMES_FIRST

SPEC = double_single("cogvideox", ("CogVideoXTransformer3DModel",), "expert-adaLN joint blocks", hidden_index=0,
                     encoder_index=1, attention=("attn1",), mlp=("ff",), indicator=temb_indicator("temb"),
                     indicator_doc="the time embedding `emb` passed to every block", tokens=FRAMES_FIRST)  # fmt: skip
