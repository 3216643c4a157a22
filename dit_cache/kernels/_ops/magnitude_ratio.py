"""`magnitude_ratio(r_t, r_prev)`: mean over tokens of `||r_t|| / ||r_prev||`, MagCache's residual magnitude ratio.

Two-stage, atomic-free reduction like rel_l1_parts: each program sums the per-row ratios of its row blocks, and
`_launch.sum_partials` adds the partials and divides by the row count.
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

NAME = "magnitude_ratio"


def twin(r_t: Tensor, r_prev: Tensor) -> Tensor:
    """Mean over tokens of `||r_t|| / ||r_prev||`, norms over the last (channel) dim; 0-d float32 tensor."""
    num = upcast(r_t).norm(dim=-1)
    den = upcast(r_prev).norm(dim=-1)
    return (num / den).mean().float()


def check(r_t: Tensor, r_prev: Tensor) -> None:
    _checks.check_pair(NAME, "r_t", r_t, "r_prev", r_prev, same_dtype=False)
    _checks.check_same_device(NAME, r_t=r_t, r_prev=r_prev)
    if r_t.dim() < 1:
        raise ValueError(f"{NAME}: r_t must have a channel dim (at least 1-d), got a 0-d tensor; pass r.reshape(1, -1)")
    if r_t.numel() == 0:
        raise ValueError(
            f"{NAME}: r_t of shape {tuple(r_t.shape)} is empty: the mean over zero tokens or the norm over zero "
            "channels is undefined; skip the call when there are no tokens"
        )


@triton_kernel
def _magnitude_partials_kernel(
    rt_ptr, rp_ptr, part_ptr, n_rows, n_cols, iters, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr
):
    """Program p sums ||r_t[row]|| / ||r_prev[row]|| over its row blocks p, p + P, ... and writes part[p]."""
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    lane_r = tl.arange(0, BLOCK_R)
    lane_c = tl.arange(0, BLOCK_C)
    total = tl.zeros([BLOCK_R], dtype=tl.float32)
    for i in range(iters):
        rows = (pid + i * nprog).to(tl.int64) * BLOCK_R + lane_r
        rmask = rows < n_rows
        base = rows[:, None] * n_cols
        acc_t = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)
        acc_p = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)
        for c0 in range(0, n_cols, BLOCK_C):
            cols = c0 + lane_c
            mask = rmask[:, None] & (cols < n_cols)[None, :]
            t = tl.load(rt_ptr + base + cols[None, :], mask=mask, other=0.0, eviction_policy="evict_first")
            p = tl.load(rp_ptr + base + cols[None, :], mask=mask, other=0.0, eviction_policy="evict_first")
            t = t.to(tl.float32)
            p = p.to(tl.float32)
            acc_t += t * t
            acc_p += p * p
        ratio = tl.div_rn(tl.sqrt_rn(tl.sum(acc_t, axis=1)), tl.sqrt_rn(tl.sum(acc_p, axis=1)))
        total += tl.where(rmask, ratio, 0.0)
    tl.store(part_ptr + pid, tl.sum(total, axis=0))


def launch(
    r_t: Tensor,
    r_prev: Tensor,
    *,
    block_r: int | None = None,
    block_c: int | None = None,
    programs: int | None = None,
    num_warps: int = 0,
) -> Tensor:
    """Mean over tokens of `||r_t|| / ||r_prev||` (norms over the last dim), 0-d float32, one read of each input."""
    check(r_t, r_prev)
    device = _launch.check_launchable(NAME, r_t=r_t, r_prev=r_prev)
    r_t, r_prev = _launch.readable(r_t), _launch.readable(r_prev)
    n_cols = r_t.shape[-1]
    n_rows = r_t.numel() // n_cols
    br, bc = _launch.tile(n_rows, n_cols, block_r, block_c, _launch.NORM_TILE_ELEMS, _launch.NORM_MAX_C, NAME)
    n_blocks = _launch.cdiv(n_rows, br)
    p = _launch.reduce_programs(device, n_blocks, programs)
    _launch.check_grid(NAME, (p,))
    iters = _launch.cdiv(n_blocks, p)
    partials = torch.empty(p, dtype=torch.float32, device=device)
    with _launch.on_device(device):
        _magnitude_partials_kernel[(p,)](
            r_t,
            r_prev,
            partials,
            n_rows,
            n_cols,
            iters,
            BLOCK_R=br,
            BLOCK_C=bc,
            num_warps=num_warps or _launch.REDUCE_WARPS,
        )
        return _launch.sum_partials(partials, p, 1, float(n_rows), device)


def _fake(r_t: Tensor, r_prev: Tensor) -> Tensor:
    return r_t.new_empty((), dtype=torch.float32)


_op = register_op(NAME, _fake, check=check)


def magnitude_ratio(r_t: Tensor, r_prev: Tensor) -> Tensor:
    """Mean over tokens of `||r_t|| / ||r_prev||`, norms over the last (channel) dim; 0-d float32 tensor.

    Every leading dim counts as tokens. Empty inputs raise ValueError; a zero row of r_prev gives inf/nan, as in
    the twin.
    """
    return _op(r_t, r_prev)
