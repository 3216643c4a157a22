"""HiDream-I1 (HiDreamImageTransformer2DModel): each block is wrapped (`HiDreamBlock.block`). Dual-stream blocks
get a new Llama layer spliced into the text stream each; the single-stream blocks take the image + T5 tokens with
that block's Llama layer appended (removed after it), one layout from block to block, so they are the cached
segment (two thirds of the layers); the dual-stream blocks always run. Attention `attn1`, (MoE) MLP `ff_i`."""

from .spec import BlockGroup, ModelSpec, temb_indicator

SPEC = ModelSpec(
    name="hidream_image",
    class_names=("HiDreamImageTransformer2DModel",),
    groups=(BlockGroup("single_stream_blocks.*.block", hidden_index=None, attention=("attn1",), mlp=("ff_i",)),),
    indicator=temb_indicator("temb"),
    indicator_doc="the timestep + pooled-text embedding `temb`",
    timestep_arg="timesteps",
    notes="single-stream blocks only: the dual-stream blocks run uncached",
)
