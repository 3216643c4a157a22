"""HiDream-I1 (HiDreamImageTransformer2DModel): each block is wrapped (`HiDreamBlock.block`). Dual-stream blocks
get a new Llama layer spliced into the text stream each; the single-stream blocks take the image + T5 tokens with
that block's Llama layer appended (removed after it), one layout from block to block, so they are the cached
segment (two thirds of the layers); the dual-stream blocks always run. Attention `attn1`, (MoE) MLP `ff_i`."""

from .spec import dit_like

SPEC = dit_like("hidream_image", ("HiDreamImageTransformer2DModel",),
                "single-stream blocks only: the dual-stream blocks run uncached", attr="single_stream_blocks.*.block",
                attention=("attn1",), cross_attention=(), mlp=("ff_i",),
                indicator_doc="the timestep + pooled-text embedding `temb`", timestep_arg="timesteps")  # fmt: skip
