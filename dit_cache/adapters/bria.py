"""Bria (BriaTransformer2DModel): Flux's layout, dual-stream `transformer_blocks` then `single_transformer_blocks`,
both returning (encoder, hidden); the pipeline passes the raw timestep."""

from .spec import double_single, single_stream_blocks
from .tokens import IMG_IDS

SPEC = double_single("bria", ("BriaTransformer2DModel",), "Flux-like", hidden_index=1, encoder_index=0,
                     single=single_stream_blocks(hidden_index=1, encoder_index=0), tokens=IMG_IDS)  # fmt: skip
