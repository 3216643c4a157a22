"""HunyuanVideo (HunyuanVideoTransformer3DModel): double-stream `transformer_blocks` then single-stream
`single_transformer_blocks`, both returning (hidden, encoder)."""

from .spec import BlockGroup, ModelSpec, adanorm_indicator, single_stream_blocks

SPEC = ModelSpec(
    name="hunyuan_video",
    class_names=("HunyuanVideoTransformer3DModel",),
    groups=(
        BlockGroup("transformer_blocks", hidden_index=0, encoder_index=1, mlp=("ff", "ff_context")),
        single_stream_blocks(hidden_index=0, encoder_index=1),
    ),
    indicator=adanorm_indicator("norm1"),
    indicator_doc="transformer_blocks[0].norm1(hidden_states, emb=temb): the modulated image input",
)
