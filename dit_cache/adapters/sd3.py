"""Stable Diffusion 3 / 3.5 (SD3Transformer2DModel): joint `transformer_blocks` returning (encoder, hidden); the last
block returns encoder=None. CFG batched as [uncond, cond], no cache_context."""

from .spec import BlockGroup, ModelSpec, adanorm_indicator

SPEC = ModelSpec(
    name="sd3",
    class_names=("SD3Transformer2DModel",),
    groups=(
        BlockGroup(
            "transformer_blocks", hidden_index=1, encoder_index=0, attention=("attn", "attn2"), mlp=("ff", "ff_context")
        ),
    ),
    indicator=adanorm_indicator("norm1"),
    indicator_doc="transformer_blocks[0].norm1(hidden_states, emb=temb): the modulated image input",
)
