"""Sana-Video (SanaVideoTransformer3DModel): Sana's blocks (`attn1`, `attn2`, `ff`, adaLN-single `timestep`)."""

from .spec import dit_like

SPEC = dit_like("sana_video", ("SanaVideoTransformer3DModel",), "PixArt-like blocks", temb="timestep")
