"""FLUX.2 (Flux2Transformer2DModel): 8 dual-stream blocks, then text and image tokens concatenated through 48
single-stream blocks that return the one sequence (`split_hidden_states=False`). The cached segment must keep one
layout, so the single-stream blocks (most of the work) are cached and the dual-stream ones always run. A single
block fuses attention and MLP in one `attn` (Flux2ParallelSelfAttention): that is its one unit."""

from .spec import BlockGroup, ModelSpec, temb_indicator
from .tokens import IMG_IDS

SPEC = ModelSpec(
    name="flux2",
    class_names=("Flux2Transformer2DModel",),
    groups=(BlockGroup("single_transformer_blocks", hidden_index=None, mlp=(), encoder_arg=None),),
    indicator=temb_indicator("temb_mod"),
    indicator_doc="the single-stream modulation `temb_mod` (a function of timestep and guidance)",
    timestep_scale=1000.0,
    notes="single-stream blocks only: the dual-stream blocks run uncached",
    tokens=IMG_IDS,
)
