"""HunyuanVideo 1.5 (HunyuanVideo15Transformer3DModel): dual-stream `transformer_blocks` only, returning
(hidden, encoder); its pipeline runs CFG through a guider under cache_context("cond"/"uncond")."""

from .spec import double_single

SPEC = double_single("hunyuan_video15", ("HunyuanVideo15Transformer3DModel",), "dual-stream blocks",
                     hidden_index=0, encoder_index=1)  # fmt: skip
