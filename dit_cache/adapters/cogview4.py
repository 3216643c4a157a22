"""CogView4 (CogView4Transformer2DModel): `transformer_blocks` returning (hidden, encoder); joint attention `attn1`.
The block calls its one MLP `ff` twice (image, then text tokens), so `ff` is not a unit (a unit is one call per
block): block policies reuse the attention only. TeaCache's indicator is the timestep embedding `temb`."""

from .spec import double_single, temb_indicator

SPEC = double_single(
    "cogview4", ("CogView4Transformer2DModel",), "dual-stream blocks; `ff` runs twice per block, not a unit",
    hidden_index=0, encoder_index=1, attention=("attn1",), mlp=(), indicator=temb_indicator("temb"),
    indicator_doc="the timestep embedding `temb`",
)  # fmt: skip
