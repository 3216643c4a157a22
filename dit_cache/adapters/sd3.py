"""Stable Diffusion 3 / 3.5 (SD3Transformer2DModel): joint `transformer_blocks` returning (encoder, hidden); the last
block returns encoder=None. CFG batched as [uncond, cond], no cache_context."""

from .spec import double_single

SPEC = double_single("sd3", ("SD3Transformer2DModel",), "joint MMDiT blocks", hidden_index=1, encoder_index=0,
                     attention=("attn", "attn2"))  # fmt: skip
