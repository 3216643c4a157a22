"""Wan 2.1 / 2.2 (WanTransformer3DModel): one list `blocks` returning the hidden tensor; self-attention `attn1`,
cross-attention `attn2`, MLP `ffn`. TeaCache's indicator is the projected timestep embedding the blocks receive
(`temb`, TeaCache's `e0`), which matches the published `@ret_steps` polynomials."""

from .spec import wan_like

SPEC = wan_like("wan", ("WanTransformer3DModel",), "Wan blocks")
