"""`rel_l1_parts(a, b)`: `[sum|a - b|, sum|b|]` in one pass, the distance every step policy compares with its threshold.

Two-stage, atomic-free reduction: a persistent grid of a few programs per SM grid-strides over the tensor and writes
one float32 partial pair per program; `_launch.sum_partials` adds them up (deterministic run to run).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .. import _checks, _launch
from .._launch import triton_kernel
from .._op import register_op, upcast

if TYPE_CHECKING:  # bound for real by triton_kernel on first launch
    import triton.language as tl

NAME = "rel_l1_parts"


def twin(a: Tensor, b: Tensor) -> Tensor:
    """`[sum|a - b|, sum|b|]` as a float32 tensor of shape (2,), on the inputs' device.

    The two sums (not their ratio) are returned so that a process group can all-reduce them before dividing.
    """
    a32, b32 = upcast(a), upcast(b)
    return torch.stack(((a32 - b32).abs().sum(), b32.abs().sum())).float()


def check(a: Tensor, b: Tensor) -> None:
    _checks.check_pair(NAME, "a", a, "b", b, same_dtype=False)
    _checks.check_same_device(NAME, a=a, b=b)


@triton_kernel
def _rel_l1_partials_kernel(a_ptr, b_ptr, part_ptr, numel, iters, BLOCK: tl.constexpr):
    """Program p accumulates sum|a-b| and sum|b| over blocks p, p + P, p + 2P, ... and writes part[p, 0:2]."""
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    lane = tl.arange(0, BLOCK)
    acc_d = tl.zeros([BLOCK], dtype=tl.float32)
    acc_b = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(iters):
        blk = pid + i * nprog
        offs = blk.to(tl.int64) * BLOCK + lane
        mask = offs < numel
        a = tl.load(a_ptr + offs, mask=mask, other=0.0, eviction_policy="evict_first").to(tl.float32)
        b = tl.load(b_ptr + offs, mask=mask, other=0.0, eviction_policy="evict_first").to(tl.float32)
        acc_d += tl.abs(a - b)
        acc_b += tl.abs(b)
    tl.store(part_ptr + pid * 2, tl.sum(acc_d, axis=0))
    tl.store(part_ptr + pid * 2 + 1, tl.sum(acc_b, axis=0))


def launch(
    a: Tensor, b: Tensor, *, block: int | None = None, programs: int | None = None, num_warps: int = 0
) -> Tensor:
    """`[sum|a - b|, sum|b|]` as float32 (2,), one read of a and b, float32 accumulation."""
    check(a, b)
    device = _launch.check_launchable(NAME, a=a, b=b)
    numel = a.numel()
    if numel == 0:
        return torch.zeros(2, dtype=torch.float32, device=device)
    a, b = _launch.readable(a), _launch.readable(b)
    block = _launch.pow2_arg(NAME, "block", block, min(_launch.REDUCE_BLOCK, _launch.next_pow2(numel)))
    n_blocks = _launch.cdiv(numel, block)
    p = _launch.reduce_programs(device, n_blocks, programs)
    _launch.check_grid(NAME, (p,))
    iters = _launch.cdiv(n_blocks, p)
    partials = torch.empty(p * 2, dtype=torch.float32, device=device)
    with _launch.on_device(device):
        warps = num_warps or _launch.REDUCE_WARPS
        _rel_l1_partials_kernel[(p,)](a, b, partials, numel, iters, BLOCK=block, num_warps=warps)
        return _launch.sum_partials(partials, p, 2, 1.0, device)


def _fake(a: Tensor, b: Tensor) -> Tensor:
    return a.new_empty((2,), dtype=torch.float32)


_op = register_op(NAME, _fake, check=check)


def rel_l1_parts(a: Tensor, b: Tensor) -> Tensor:
    """`[sum|a - b|, sum|b|]` as a float32 tensor of shape (2,), on the inputs' device, in one pass.

    The two sums (not their ratio) are returned so that a process group can all-reduce them before dividing.
    a and b must have one shape (dtypes may differ: both are read as float32). Empty inputs give `[0, 0]`.
    """
    return _op(a, b)
