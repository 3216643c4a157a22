"""Mochi (MochiTransformer3DModel): dual-stream `transformer_blocks` returning (hidden, encoder); joint attention
`attn1`, MLPs `ff` / `ff_context` (the last block has no `ff_context`)."""

from .spec import double_single

SPEC = double_single(
    "mochi", ("MochiTransformer3DModel",), "dual-stream blocks", hidden_index=0, encoder_index=1, attention=("attn1",)
)
