"""Krea 2 (Krea2Transformer2DModel): text tokens fused by its own text blocks, then text and image tokens as one
sequence through `transformer_blocks` (attention `attn`, MLP `ff`, timestep embedding `temb`). The pipeline passes
t / 1000."""

from .spec import dit_like

SPEC = dit_like("krea2", ("Krea2Transformer2DModel",), "joint-sequence blocks", attention=("attn",),
                cross_attention=(), encoder_arg=None, timestep_scale=1000.0)  # fmt: skip
