"""GLM-Image (GlmImageTransformer2DModel): CogView4's block layout, (hidden, encoder) with joint attention `attn1`
and one MLP `ff` called twice per block (image, then text tokens), so `ff` is not a unit."""

from .spec import double_single, temb_indicator

SPEC = double_single(
    "glm_image", ("GlmImageTransformer2DModel",), "CogView4-like; `ff` runs twice per block, not a unit",
    hidden_index=0, encoder_index=1, attention=("attn1",), mlp=(), indicator=temb_indicator("temb"),
    indicator_doc="the timestep embedding `temb`",
)  # fmt: skip
