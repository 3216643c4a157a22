"""EasyAnimate (EasyAnimateTransformer3DModel): `transformer_blocks` returning (hidden, encoder); joint attention
`attn1`, MLPs `ff` (image) and `txt_ff` (text)."""

from .spec import double_single, temb_indicator

SPEC = double_single(
    "easyanimate", ("EasyAnimateTransformer3DModel",), "dual-stream blocks", hidden_index=0, encoder_index=1,
    attention=("attn1",), mlp=("ff", "txt_ff"), indicator=temb_indicator("temb"), indicator_doc="the timestep embedding",
)  # fmt: skip
