"""Allegro (AllegroTransformer3DModel): PixArt-like `transformer_blocks` returning the hidden tensor (self-attention
`attn1`, cross-attention `attn2`, MLP `ff`), with the adaLN-single embedding as `temb`; CFG batched."""

from .spec import dit_like

SPEC = dit_like("allegro", ("AllegroTransformer3DModel",), "PixArt-like blocks")
