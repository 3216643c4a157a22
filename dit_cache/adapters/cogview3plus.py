"""CogView3-Plus (CogView3PlusTransformer2DModel): `transformer_blocks` returning (hidden, encoder); joint attention
`attn1`, one MLP `ff` over the concatenated streams; the blocks get the timestep embedding as `emb`."""

from .spec import double_single, temb_indicator

SPEC = double_single(
    "cogview3plus", ("CogView3PlusTransformer2DModel",), "dual-stream blocks", hidden_index=0, encoder_index=1,
    attention=("attn1",), mlp=("ff",), indicator=temb_indicator("emb"), indicator_doc="the timestep embedding `emb`",
)  # fmt: skip
