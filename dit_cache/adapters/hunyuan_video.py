"""HunyuanVideo (HunyuanVideoTransformer3DModel): double-stream `transformer_blocks` then single-stream
`single_transformer_blocks`, both returning (hidden, encoder)."""

from .spec import BlockGroup, ModelSpec, adanorm_indicator

SPEC = ModelSpec(
    name="hunyuan_video",
    class_names=("HunyuanVideoTransformer3DModel",),
    groups=(
        BlockGroup("transformer_blocks", hidden_index=0, encoder_index=1, mlp=("ff", "ff_context")),
        BlockGroup(
            "single_transformer_blocks",
            hidden_index=0,
            encoder_index=1,
            mlp=("proj_mlp", "proj_out"),
            tails=(("proj_mlp", "act_mlp"),),
            feeds=(("attn", "proj_out"), ("proj_mlp", "proj_out")),
        ),
    ),
    indicator=adanorm_indicator("norm1"),
    indicator_doc="transformer_blocks[0].norm1(hidden_states, emb=temb): the modulated image input",
)
