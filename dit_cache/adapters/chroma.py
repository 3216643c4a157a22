"""Chroma (ChromaTransformer2DModel): Flux's layout, but after the dual-stream blocks the model concatenates text and
image tokens and its `single_transformer_blocks` take and return that one sequence. The cached segment must keep
one layout, so only the single-stream blocks (2/3 of the layers) are cached; the dual-stream ones always run.
Each block gets its own slice of the pruned modulation as `temb`; the indicator reads the first single block's."""

from .spec import ModelSpec, single_stream_blocks, temb_indicator
from .tokens import IMG_IDS

SPEC = ModelSpec(
    name="chroma",
    class_names=("ChromaTransformer2DModel",),
    groups=(single_stream_blocks(hidden_index=None, encoder_arg=None),),
    indicator=temb_indicator("temb"),
    indicator_doc="single_transformer_blocks[0]'s modulation `temb`",
    timestep_scale=1000.0,
    notes="single-stream blocks only: the dual-stream blocks run uncached",
    tokens=IMG_IDS,
)
