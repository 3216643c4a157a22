"""Hunyuan-DiT (HunyuanDiT2DModel): `blocks` returning the hidden tensor (`attn1`, `attn2`, `ff`); the second half
of the blocks also takes a long skip from the first half, which a reused step replays with the cached residual.
Its cross-attention `attn2` applies RoPE to the image queries, so it is declared as attention (token policies
never run it on a subset of tokens)."""

from .spec import dit_like

SPEC = dit_like("hunyuandit", ("HunyuanDiT2DModel",), "U-ViT-like long skips; attn2 has RoPE queries",
                attr="blocks", attention=("attn1", "attn2"), cross_attention=())  # fmt: skip
