"""Qwen-Image (QwenImageTransformer2DModel): dual-stream `transformer_blocks` returning (encoder, hidden), with joint
attention `attn` and MLPs `img_mlp` / `txt_mlp`. The pipeline passes the timestep divided by 1000."""

import torch
from torch import nn

from .spec import BlockCall, double_single
from .tokens import IMG_SHAPES


def _modulated_input(block: nn.Module, call: BlockCall) -> torch.Tensor:
    img_mod1 = block.img_mod(call.get("temb")).chunk(2, dim=-1)[0]
    return block._modulate(block.img_norm1(call.hidden), img_mod1)[0]


SPEC = double_single("qwenimage", ("QwenImageTransformer2DModel",), "dual-stream MMDiT blocks", hidden_index=1,
                     encoder_index=0, mlp=("img_mlp", "txt_mlp"), indicator=_modulated_input,
                     indicator_doc="transformer_blocks[0] image stream after img_norm1, modulated by img_mod(temb)",
                     timestep_scale=1000.0, tokens=IMG_SHAPES)  # fmt: skip
