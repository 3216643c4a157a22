"""DiT (DiTTransformer2DModel, class-conditional): BasicTransformerBlocks with adaLN-zero, self-attention `attn1`
and MLP `ff`. The blocks get the raw integer timestep and the class labels, so TeaCache's indicator is the first
block's adaLN-zero-modulated input."""

from .spec import dit_like


def _modulated_input(block, call):
    return block.norm1(call.hidden, call.get("timestep"), call.get("class_labels"), hidden_dtype=call.hidden.dtype)[0]


SPEC = dit_like(
    "dit", ("DiTTransformer2DModel",), "class-conditional DiT", cross_attention=(), encoder_arg=None,
    indicator=_modulated_input, indicator_doc="transformers_blocks[0].norm1(hidden, timestep, class_labels)[0]",
)  # fmt: skip
