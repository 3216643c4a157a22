"""`apply_residual(inp, residual, scale)`: `inp + scale * residual`, how a cache reuses a stored residual."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .. import _checks, _launch
from .._launch import triton_kernel
from .._op import join_scalar, register_op, split_scalar, upcast

if TYPE_CHECKING:  # bound for real by triton_kernel on first launch
    import triton.language as tl

NAME = "apply_residual"


def twin(inp: Tensor, residual: Tensor, scale: float | Tensor | None = None) -> Tensor:
    """`inp + scale * residual`; `scale` is None (1), a float, a 0-d tensor or a per-channel tensor of shape (C,)."""
    if scale is None:
        return inp + residual
    if isinstance(scale, Tensor):
        scale = scale.to(torch.float64 if inp.dtype == torch.float64 else torch.float32)
    return (upcast(inp) + scale * upcast(residual)).to(inp.dtype)


def _check_scale(scale: Tensor, n_channels: int) -> None:
    _checks.check_floating(NAME, "scale", scale)
    if scale.dim() > 1 or scale.numel() not in (1, n_channels):
        raise ValueError(
            f"{NAME}: a tensor scale must be 0-d, of shape (1,) or per-channel of shape ({n_channels},) "
            f"(the last dim of inp); got shape {tuple(scale.shape)}; reshape it, or use apply_residual's "
            "float scale"
        )


def check(inp: Tensor, residual: Tensor, scale: Tensor | None) -> None:
    _checks.check_pair(NAME, "inp", inp, "residual", residual, same_dtype=True)
    tensors = {"inp": inp, "residual": residual}
    if scale is not None:
        _check_scale(scale, _checks.channels(inp))
        tensors["scale"] = scale
    _checks.check_same_device(NAME, **tensors)


@triton_kernel
def _apply_residual_kernel(
    inp_ptr,
    res_ptr,
    scale_ptr,
    y_ptr,
    n_rows,
    n_cols,
    scale_value,
    SCALE_MODE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """y = inp + s * res on a (BLOCK_R, BLOCK_C) tile of the (rows, channels) view.

    SCALE_MODE 0: s = 1; 1: s = scale_value; 2: s = scale_ptr[0] (a device scalar, no host sync); 3: s = scale_ptr[c].
    """
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < n_cols
    mask = (rows < n_rows)[:, None] & cmask[None, :]
    offs = rows[:, None] * n_cols + cols[None, :]
    x = tl.load(inp_ptr + offs, mask=mask, eviction_policy="evict_first").to(tl.float32)
    r = tl.load(res_ptr + offs, mask=mask, eviction_policy="evict_first").to(tl.float32)
    if SCALE_MODE == 0:
        y = x + r
    elif SCALE_MODE == 1:
        y = x + scale_value * r
    elif SCALE_MODE == 2:
        s = tl.load(scale_ptr).to(tl.float32)
        y = x + s * r
    else:
        s = tl.load(scale_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
        y = x + s[None, :] * r
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


def launch(
    inp: Tensor,
    residual: Tensor,
    scale: float | Tensor | None = None,
    *,
    block_r: int | None = None,
    block_c: int | None = None,
    num_warps: int = 0,
) -> Tensor:
    """`inp + scale * residual` into a new tensor of inp's dtype; scale None, a float, a 0-d/(1,) tensor (read on
    the device: no host sync) or a per-channel (C,) tensor."""
    scale_t = scale if isinstance(scale, Tensor) else None
    check(inp, residual, scale_t)
    tensors = {"inp": inp, "residual": residual}
    if scale_t is not None:
        tensors["scale"] = scale_t
    device = _launch.check_launchable(NAME, **tensors)
    y = torch.empty_like(inp, memory_format=torch.contiguous_format)
    if inp.numel() == 0:
        return y
    inp, residual = _launch.readable(inp), _launch.readable(residual)
    n_cols = _checks.channels(inp)
    n_rows = inp.numel() // n_cols
    scale_value = 1.0
    if scale is None:
        mode, scale_ptr = 0, inp
    elif scale_t is None:
        if not isinstance(scale, (int, float)):
            raise TypeError(f"{NAME}: scale must be None, a float or a tensor, got {type(scale).__name__}")
        mode, scale_ptr, scale_value = 1, inp, float(scale)
    elif scale_t.numel() == 1:
        mode, scale_ptr = 2, _launch.readable(scale_t)
    else:
        mode, scale_ptr = 3, _launch.readable(scale_t)
    br, bc, grid = _launch.tile_grid(NAME, n_rows, n_cols, block_r, block_c)
    with _launch.on_device(device):
        _apply_residual_kernel[grid](
            inp,
            residual,
            scale_ptr,
            y,
            n_rows,
            n_cols,
            scale_value,
            SCALE_MODE=mode,
            BLOCK_R=br,
            BLOCK_C=bc,
            num_warps=num_warps or _launch.TILE_WARPS,
        )
    return y


def _fake(inp: Tensor, residual: Tensor, scale: Tensor | None, scale_value: float) -> Tensor:
    return inp.new_empty(inp.shape)


_op = register_op(
    NAME,
    _fake,
    check=lambda inp, residual, scale, scale_value: check(inp, residual, scale),
    call=lambda backend, inp, residual, scale, scale_value: backend.apply_residual(
        inp, residual, join_scalar(scale, scale_value)
    ),
)


def apply_residual(inp: Tensor, residual: Tensor, scale: float | Tensor | None = None) -> Tensor:
    """`inp + scale * residual` in inp's dtype; `scale` is None (1), a float, a 0-d tensor or a per-channel tensor of
    shape (C,). A tensor scale stays on the device (no host sync). inp and residual must share shape and dtype."""
    scale_t, scale_value = split_scalar(NAME, "scale", scale)
    return _op(inp, residual, scale_t, scale_value)
