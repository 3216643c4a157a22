"""`store_residual(out, inp, buffer)`: `buffer = out - inp`, the residual a step or block cache keeps for later reuse."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .. import _checks, _launch
from .._launch import triton_kernel
from .._op import register_op

if TYPE_CHECKING:  # bound for real by triton_kernel on first launch
    import triton.language as tl

NAME = "store_residual"


def _fits(buffer: Tensor | None, out: Tensor) -> bool:
    """A buffer the result can be written into: out's shape, dtype and device."""
    return (
        buffer is not None and buffer.shape == out.shape and buffer.dtype == out.dtype and buffer.device == out.device
    )


def twin(out: Tensor, inp: Tensor, buffer: Tensor | None = None) -> Tensor:
    """`buffer = out - inp`, written into `buffer` when it has the right shape and dtype, else into a new tensor."""
    if not _fits(buffer, out):
        return out - inp
    return torch.sub(out, inp, out=buffer)


def check(out: Tensor, inp: Tensor, buffer: Tensor | None) -> None:
    _checks.check_pair(NAME, "out", out, "inp", inp, same_dtype=True)
    tensors = {"out": out, "inp": inp}
    if buffer is not None:
        _checks.check_tensor(NAME, "buffer", buffer)
        _checks.check_same_shape(NAME, "out", out, "buffer", buffer)
        _checks.check_same_dtype(NAME, "out", out, "buffer", buffer)
        tensors["buffer"] = buffer
    _checks.check_same_device(NAME, **tensors)


@triton_kernel
def _store_residual_kernel(out_ptr, inp_ptr, buf_ptr, numel, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    o = tl.load(out_ptr + offs, mask=mask, eviction_policy="evict_first").to(tl.float32)
    i = tl.load(inp_ptr + offs, mask=mask, eviction_policy="evict_first").to(tl.float32)
    tl.store(buf_ptr + offs, (o - i).to(buf_ptr.dtype.element_ty), mask=mask)


def launch(
    out: Tensor, inp: Tensor, buffer: Tensor | None = None, *, block: int | None = None, num_warps: int = 0
) -> Tensor:
    """`buffer = out - inp` in place (a new contiguous tensor when buffer is None or has another shape, dtype or
    device, like the twin)."""
    if not isinstance(buffer, Tensor) or not _fits(buffer, out):
        buffer = torch.empty_like(out, memory_format=torch.contiguous_format)
    check(out, inp, buffer)
    device = _launch.check_launchable(NAME, out=out, inp=inp, buffer=buffer)
    _launch.writable(NAME, "buffer", buffer)
    numel = out.numel()
    if numel == 0:
        return buffer
    out, inp = _launch.readable(out), _launch.readable(inp)
    block, grid = _launch.flat_grid(NAME, numel, block)
    with _launch.on_device(device):
        _store_residual_kernel[grid](out, inp, buffer, numel, BLOCK=block, num_warps=num_warps or _launch.FLAT_WARPS)
    return buffer


def _fake(out: Tensor, inp: Tensor, buffer: Tensor) -> None:
    pass


_op = register_op(
    NAME,
    _fake,
    check=check,
    call=lambda backend, out, inp, buffer: backend.store_residual(out, inp, buffer),
    mutates_args=("buffer",),
    op_name="store_residual_into",
)


def store_residual(out: Tensor, inp: Tensor, buffer: Tensor | None = None) -> Tensor:
    """`buffer = out - inp`, written into `buffer` when it has out's shape, dtype and device, else into a new tensor.

    Returns the tensor written. out and inp must share shape and dtype. On the Triton path a buffer that is not
    contiguous is refused (DIT_CACHE_KERNELS=triton) or handled by the twin (auto).
    """
    if not _fits(buffer, out):
        buffer = torch.empty_like(out, memory_format=torch.contiguous_format)
    out, inp = out.detach(), inp.detach()  # a cache holds values, not autograd graph (models run with grad on too)
    _op(out, inp, buffer)
    return buffer
