"""FLUX.1 (FluxTransformer2DModel): 19 double-stream blocks then 38 single-stream blocks, both returning
(encoder, hidden). The pipeline passes the timestep divided by 1000."""

from .spec import BlockGroup, ModelSpec, adanorm_indicator, single_stream_blocks

SPEC = ModelSpec(
    name="flux",
    class_names=("FluxTransformer2DModel",),
    groups=(
        BlockGroup("transformer_blocks", hidden_index=1, encoder_index=0, mlp=("ff", "ff_context")),
        single_stream_blocks(hidden_index=1, encoder_index=0),
    ),
    indicator=adanorm_indicator("norm1"),
    indicator_doc="transformer_blocks[0].norm1(hidden_states, emb=temb): the modulated image input",
    timestep_scale=1000.0,
)
