"""LTX-Video (LTXVideoTransformer3DModel): `transformer_blocks` returning the hidden tensor; self-attention `attn1`,
cross-attention `attn2`, MLP `ff`; CFG batched as [uncond, cond]."""

import torch
from torch import nn

from .spec import BlockCall, dit_like
from .tokens import FRAME_ARGS


def _modulated_input(block: nn.Module, call: BlockCall) -> torch.Tensor:
    hidden, temb = call.hidden, call.get("temb")
    table = block.scale_shift_table
    ada = table[None, None].to(temb.device) + temb.reshape(hidden.size(0), temb.size(1), table.shape[0], -1)
    shift, scale = ada[:, :, 0], ada[:, :, 1]
    return block.norm1(hidden) * (1 + scale) + shift


SPEC = dit_like("ltx", ("LTXVideoTransformer3DModel",), "DiT blocks with cross-attention", indicator=_modulated_input,
                indicator_doc="transformer_blocks[0].norm1(hidden) modulated by scale_shift_table + temb", tokens=FRAME_ARGS)  # fmt: skip
