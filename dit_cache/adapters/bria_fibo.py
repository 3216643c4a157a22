"""Bria FIBO (BriaFiboTransformer2DModel): Flux-like, but every block gets another text-encoder layer spliced into
the text stream, and the single-stream blocks take and return the concatenated text + image sequence. The cached
segment is the single-stream blocks (one layout); the dual-stream blocks always run."""

from .spec import ModelSpec, single_stream_blocks, temb_indicator
from .tokens import IMG_IDS

SPEC = ModelSpec(
    name="bria_fibo",
    class_names=("BriaFiboTransformer2DModel",),
    groups=(single_stream_blocks(hidden_index=None, encoder_arg=None),),
    indicator=temb_indicator("temb"),
    indicator_doc="the timestep embedding `temb`",
    notes="single-stream blocks only: the dual-stream blocks run uncached",
    tokens=IMG_IDS,
)
