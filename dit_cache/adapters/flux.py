"""FLUX.1 (FluxTransformer2DModel): 19 double-stream blocks then 38 single-stream blocks, both returning
(encoder, hidden). The pipeline passes the timestep divided by 1000."""

from .spec import double_single, single_stream_blocks
from .tokens import IMG_IDS

SPEC = double_single("flux", ("FluxTransformer2DModel",), "dual-stream then single-stream blocks", hidden_index=1,
                     encoder_index=0, single=single_stream_blocks(hidden_index=1, encoder_index=0),
                     timestep_scale=1000.0, tokens=IMG_IDS)  # fmt: skip
