"""Sana (SanaTransformer2DModel): `transformer_blocks` returning the hidden tensor; linear self-attention `attn1`,
cross-attention `attn2`, Mix-FFN `ff`; the adaLN-single timestep embedding reaches the blocks as `timestep`."""

from .spec import dit_like

SPEC = dit_like("sana", ("SanaTransformer2DModel",), "PixArt-like blocks", temb="timestep")
