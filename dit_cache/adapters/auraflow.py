"""AuraFlow (AuraFlowTransformer2DModel): a few MMDiT `joint_transformer_blocks`, then text and image tokens as one
sequence through `single_transformer_blocks` (attention `attn`, MLP `ff`). The cached segment must keep one layout:
the single blocks (most of the layers) are cached, the joint ones always run. The pipeline passes t / 1000."""

from .spec import dit_like

SPEC = dit_like(
    "auraflow", ("AuraFlowTransformer2DModel",), "single blocks cached; joint blocks always run",
    attr="single_transformer_blocks", attention=("attn",), cross_attention=(), encoder_arg=None, timestep_scale=1000.0,
)  # fmt: skip
