"""Wan 2.1 / 2.2 (WanTransformer3DModel): one list `blocks` returning the hidden tensor; self-attention `attn1`,
cross-attention `attn2`, MLP `ffn`. TeaCache's indicator is the projected timestep embedding the blocks receive
(`temb`, TeaCache's `e0`), which matches the published `@ret_steps` polynomials."""

from .spec import BlockGroup, ModelSpec, temb_indicator

SPEC = ModelSpec(
    name="wan",
    class_names=("WanTransformer3DModel",),
    groups=(BlockGroup("blocks", hidden_index=None, attention=("attn1",), cross_attention=("attn2",), mlp=("ffn",)),),
    indicator=temb_indicator("temb"),
    indicator_doc="the projected timestep embedding passed to every block (timestep_proj, TeaCache's e0)",
)
