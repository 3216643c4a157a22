"""PixArt-alpha / sigma (PixArtTransformer2DModel): BasicTransformerBlocks returning the hidden tensor, with
self-attention `attn1`, cross-attention `attn2` and MLP `ff`; they receive the adaLN-single timestep embedding as
`timestep`. CFG batched as [uncond, cond], no cache_context."""

from .spec import BlockGroup, ModelSpec, temb_indicator

SPEC = ModelSpec(
    name="pixart",
    class_names=("PixArtTransformer2DModel",),
    groups=(
        BlockGroup(
            "transformer_blocks", hidden_index=None, attention=("attn1",), cross_attention=("attn2",), mlp=("ff",)
        ),
    ),
    indicator=temb_indicator("timestep"),
    indicator_doc="the adaLN-single timestep embedding passed to every block as `timestep`",
)
