"""Ovis-Image (OvisImageTransformer2DModel): Flux's layout, dual-stream `transformer_blocks` then
`single_transformer_blocks`, both returning (encoder, hidden). Its single blocks split `proj_mlp`'s output into a
SiLU gate and a value (no activation tail, and the split pieces are not stand-ins FORA could hand on)."""

from .spec import double_single, single_stream_blocks
from .tokens import IMG_IDS

SPEC = double_single("ovis_image", ("OvisImageTransformer2DModel",), "Flux-like, gated single-block MLP",
                     hidden_index=1, encoder_index=0, timestep_scale=1000.0,
                     single=single_stream_blocks(hidden_index=1, encoder_index=0, tails=(), feeds=()), tokens=IMG_IDS)  # fmt: skip
