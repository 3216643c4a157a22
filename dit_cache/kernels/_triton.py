"""Triton kernels of the reuse primitives and their launchers.

Imported lazily (by `dit_cache.kernels.ops` when a call goes to Triton, or by the tests and the benchmark): importing
this module imports Triton. Triton picks interpreted or compiled kernels when `triton.language` is imported (its own
helpers such as `tl.sum` are jitted functions too) and torch imports Triton early, so to run these kernels on CPU
tensors (the interpreter; tests only) `TRITON_INTERPRET=1` must be in the environment when Python starts.

Each launcher has the signature of its PyTorch twin in `twins.py` plus keyword-only tuning knobs, checks its
arguments (shapes, dtypes, devices, contiguity, launch limits) and raises a clear error for anything it can't run.
Read-only inputs that are not contiguous are copied with `.contiguous()` (an input-sized temporary: pass contiguous
tensors to avoid it); tensors written in place must be contiguous or the launcher raises.

Design, for bandwidth: every kernel reads each input element once and writes each output element once, with
contiguous per-program tiles that compile to 128-bit vector loads when the channel count is a multiple of 8
(16-bit) or 4 (float32); arithmetic is in float32; offsets are 64-bit so tensors above 2**31 elements work.
Reductions (rel-L1, magnitude ratio) are two-stage and atomic-free: a persistent grid of a few programs per SM
grid-strides over the tensor and writes one float32 partial per program, and a one-program second stage sums them,
which keeps the result deterministic run to run.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from . import _checks
from ._backend import ENV_VAR, MAX_TAYLOR_TENSORS, TRITON_DTYPES

#: True when the kernels were defined under TRITON_INTERPRET=1 and so can take CPU tensors.
INTERPRETED: bool  # set below, once the kernels exist

MAX_GRID_X = 2**31 - 1
MAX_GRID_YZ = 65535

# Default tile shapes (elements). Tuned for memory bandwidth on Hopper-class GPUs by construction, not by
# measurement yet: see docs/kernels.md and benchmarks/kernel_bench.py, which sweeps them.
FLAT_BLOCK = 4096
FLAT_WARPS = 8
TILE_ELEMS = 4096
TILE_MAX_C = 1024
TILE_WARPS = 8
REDUCE_BLOCK = 2048
REDUCE_WARPS = 8
REDUCE_PROGRAMS_PER_SM = 8
NORM_TILE_ELEMS = 2048
NORM_MAX_C = 512


# ----------------------------------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
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


@triton.jit
def _sum_partials_kernel(part_ptr, out_ptr, n_parts, divisor, WIDTH: tl.constexpr, BLOCK_P: tl.constexpr):
    """out[j] = sum_p part[p, j] / divisor, for j < WIDTH; one program."""
    idx = tl.arange(0, BLOCK_P)
    mask = idx < n_parts
    for j in tl.static_range(WIDTH):
        v = tl.load(part_ptr + idx * WIDTH + j, mask=mask, other=0.0)
        tl.store(out_ptr + j, tl.div_rn(tl.sum(v, axis=0), divisor))


@triton.jit
def _store_residual_kernel(out_ptr, inp_ptr, buf_ptr, numel, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    o = tl.load(out_ptr + offs, mask=mask, eviction_policy="evict_first").to(tl.float32)
    i = tl.load(inp_ptr + offs, mask=mask, eviction_policy="evict_first").to(tl.float32)
    tl.store(buf_ptr + offs, (o - i).to(buf_ptr.dtype.element_ty), mask=mask)


@triton.jit
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


@triton.jit
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


@triton.jit
def _taylor_update_kernel(f_ptr, d0, d1, d2, d3, d4, d5, numel, inv_gap, NEW_FILLED: tl.constexpr, BLOCK: tl.constexpr):
    """D_0 = f; D_i = (D_{i-1}^new - D_{i-1}^old) * inv_gap for i < NEW_FILLED, where D^new is the stored (rounded)
    value. All old values are loaded before the first store, so the update is safe in place."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    dty = d0.dtype.element_ty
    v = tl.load(f_ptr + offs, mask=mask, eviction_policy="evict_first").to(tl.float32)
    if NEW_FILLED > 1:
        o0 = tl.load(d0 + offs, mask=mask).to(tl.float32)
    if NEW_FILLED > 2:
        o1 = tl.load(d1 + offs, mask=mask).to(tl.float32)
    if NEW_FILLED > 3:
        o2 = tl.load(d2 + offs, mask=mask).to(tl.float32)
    if NEW_FILLED > 4:
        o3 = tl.load(d3 + offs, mask=mask).to(tl.float32)
    if NEW_FILLED > 5:
        o4 = tl.load(d4 + offs, mask=mask).to(tl.float32)
    n0 = v.to(dty)
    tl.store(d0 + offs, n0, mask=mask)
    if NEW_FILLED > 1:
        n1 = ((n0.to(tl.float32) - o0) * inv_gap).to(dty)
        tl.store(d1 + offs, n1, mask=mask)
    if NEW_FILLED > 2:
        n2 = ((n1.to(tl.float32) - o1) * inv_gap).to(dty)
        tl.store(d2 + offs, n2, mask=mask)
    if NEW_FILLED > 3:
        n3 = ((n2.to(tl.float32) - o2) * inv_gap).to(dty)
        tl.store(d3 + offs, n3, mask=mask)
    if NEW_FILLED > 4:
        n4 = ((n3.to(tl.float32) - o3) * inv_gap).to(dty)
        tl.store(d4 + offs, n4, mask=mask)
    if NEW_FILLED > 5:
        n5 = ((n4.to(tl.float32) - o4) * inv_gap).to(dty)
        tl.store(d5 + offs, n5, mask=mask)


@triton.jit
def _taylor_forecast_kernel(
    y_ptr, d0, d1, d2, d3, d4, d5, numel, c1, c2, c3, c4, c5, FILLED: tl.constexpr, BLOCK: tl.constexpr
):
    """y = D_0 + sum_{0 < i < FILLED} c_i D_i, c_i = distance**i / i!."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    acc = tl.load(d0 + offs, mask=mask).to(tl.float32)
    if FILLED > 1:
        acc += c1 * tl.load(d1 + offs, mask=mask).to(tl.float32)
    if FILLED > 2:
        acc += c2 * tl.load(d2 + offs, mask=mask).to(tl.float32)
    if FILLED > 3:
        acc += c3 * tl.load(d3 + offs, mask=mask).to(tl.float32)
    if FILLED > 4:
        acc += c4 * tl.load(d4 + offs, mask=mask).to(tl.float32)
    if FILLED > 5:
        acc += c5 * tl.load(d5 + offs, mask=mask).to(tl.float32)
    tl.store(y_ptr + offs, acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _token_scatter_gate_kernel(
    x_ptr,
    cache_ptr,
    rows_ptr,
    inv_ptr,
    gate_ptr,
    y_ptr,
    n_tok,
    n_idx,
    n_cols,
    n_rows,
    g_sb,
    g_sn,
    g_sc,
    gate_value,
    GATE_MODE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """One pass over the (B*N, C) rows: token n of batch b takes cache[b, n] or, when inv[n] = m >= 0, the
    recomputed rows[b, m] (written back into cache); y = x + g * that.

    GATE_MODE 0: g = 1; 1: g = gate_value; 2: g = gate[b * g_sb + n * g_sn + c * g_sc] (broadcast by 0 strides).
    """
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    rmask = r < n_rows
    cmask = cols < n_cols
    b = r // n_tok
    n = r - b * n_tok
    src = tl.load(inv_ptr + n, mask=rmask, other=-1)
    hit = src >= 0
    mask = rmask[:, None] & cmask[None, :]
    hit_mask = mask & hit[:, None]
    miss_mask = mask & (src < 0)[:, None]
    offs = r[:, None] * n_cols + cols[None, :]
    roffs = (b * n_idx + src.to(tl.int64))[:, None] * n_cols + cols[None, :]
    # every load is issued before the store into cache (disjoint masks: each cache element is read or written)
    x = tl.load(x_ptr + offs, mask=mask, eviction_policy="evict_first").to(tl.float32)
    kept = tl.load(cache_ptr + offs, mask=miss_mask, other=0.0, eviction_policy="evict_first")
    fresh = tl.load(rows_ptr + roffs, mask=hit_mask, other=0.0, eviction_policy="evict_first")
    fresh = fresh.to(cache_ptr.dtype.element_ty)
    c = tl.where(hit[:, None], fresh.to(tl.float32), kept.to(tl.float32))
    if GATE_MODE == 0:
        y = x + c
    elif GATE_MODE == 1:
        y = x + gate_value * c
    else:
        goffs = (b * g_sb + n * g_sn)[:, None] + cols[None, :].to(tl.int64) * g_sc
        g = tl.load(gate_ptr + goffs, mask=mask, other=0.0).to(tl.float32)
        y = x + g * c
    tl.store(cache_ptr + offs, fresh, mask=hit_mask)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


INTERPRETED = not isinstance(_store_residual_kernel, triton.runtime.jit.JITFunction)


# ----------------------------------------------------------------------------------------------------------------
# launch helpers
# ----------------------------------------------------------------------------------------------------------------


def _next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def _pow2_arg(op: str, name: str, value: int | None, default: int) -> int:
    if value is None:
        return default
    if not isinstance(value, int) or value < 1 or value & (value - 1):
        raise ValueError(f"{op}: {name}={value!r} must be a positive power of two (Triton block shapes are)")
    return value


def _check_launchable(op: str, **tensors: torch.Tensor) -> torch.device:
    """One device for all; CUDA, or CPU only when the kernels are interpreted; Triton dtypes only."""
    _checks.check_same_device(op, **tensors)
    device = next(iter(tensors.values())).device
    if device.type == "cpu" and not INTERPRETED:
        names = ", ".join(tensors)
        raise RuntimeError(
            f"{op}: the Triton kernels need CUDA tensors, got CPU tensors ({names}); move them to a GPU, or use the "
            f"PyTorch twins ({ENV_VAR}=auto or torch). To run the kernels on CPU for testing, start Python with "
            "TRITON_INTERPRET=1 in the environment (Triton reads it when triton.language is imported)"
        )
    if device.type not in ("cuda", "cpu"):
        raise RuntimeError(f"{op}: the Triton kernels run on CUDA devices, got {device}; set {ENV_VAR}=torch")
    for name, t in tensors.items():
        if t.dtype not in TRITON_DTYPES:
            raise TypeError(
                f"{op}: {name} has dtype {t.dtype}; the Triton kernels take float16, bfloat16 and float32; cast it "
                f"or set {ENV_VAR}=auto/torch to use the PyTorch twin"
            )
    return device


def _readable(t: torch.Tensor) -> torch.Tensor:
    """Read-only inputs: made contiguous (a copy) when they are not; documented in docs/kernels.md."""
    return t if t.is_contiguous() else t.contiguous()


def _writable(op: str, name: str, t: torch.Tensor) -> torch.Tensor:
    if not t.is_contiguous():
        raise ValueError(
            f"{op}: {name} (shape {tuple(t.shape)}, strides {t.stride()}) is written in place and must be contiguous; "
            f"allocate it contiguous (torch.empty_like(x, memory_format=torch.contiguous_format)) or set "
            f"{ENV_VAR}=auto/torch to use the PyTorch twin, which accepts any strides"
        )
    return t


def _check_grid(op: str, grid: tuple[int, ...]) -> tuple[int, ...]:
    if grid[0] > MAX_GRID_X or any(g > MAX_GRID_YZ for g in grid[1:]):
        raise ValueError(
            f"{op}: the launch grid {grid} exceeds CUDA's limits ({MAX_GRID_X} programs on axis 0, {MAX_GRID_YZ} on "
            "axes 1-2); the tensor is too large for this kernel: split it along the token dim, or pass larger blocks"
        )
    return grid


@functools.lru_cache(maxsize=16)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _reduce_programs(device: torch.device, n_blocks: int, programs: int | None) -> int:
    if programs is None:
        per = 4 if device.type != "cuda" else _sm_count(device.index or 0) * REDUCE_PROGRAMS_PER_SM
        programs = per
    if not isinstance(programs, int) or programs < 1:
        raise ValueError(f"programs={programs!r} must be a positive int")
    return max(1, min(programs, n_blocks))


class _on_device:
    """Launch on the tensors' CUDA device even when another one is current."""

    def __init__(self, device: torch.device):
        self.ctx = torch.cuda.device(device) if device.type == "cuda" else None

    def __enter__(self):
        if self.ctx is not None:
            self.ctx.__enter__()

    def __exit__(self, *exc):
        if self.ctx is not None:
            self.ctx.__exit__(*exc)


def _tile(n_rows: int, n_cols: int, block_r: int | None, block_c: int | None, elems: int, max_c: int, op: str):
    bc = _pow2_arg(op, "block_c", block_c, min(_next_pow2(n_cols), max_c))
    br = _pow2_arg(op, "block_r", block_r, min(_next_pow2(n_rows), max(1, elems // bc)))
    return br, bc


def _sum_partials(partials: torch.Tensor, n_parts: int, width: int, divisor: float, device: torch.device):
    out = torch.empty((width,) if width > 1 else (), dtype=torch.float32, device=device)
    _sum_partials_kernel[(1,)](partials, out, n_parts, float(divisor), WIDTH=width, BLOCK_P=_next_pow2(n_parts))
    return out


# ----------------------------------------------------------------------------------------------------------------
# launchers (same signatures as the twins, plus keyword-only tuning knobs)
# ----------------------------------------------------------------------------------------------------------------


def rel_l1_parts(
    a: torch.Tensor, b: torch.Tensor, *, block: int | None = None, programs: int | None = None, num_warps: int = 0
) -> torch.Tensor:
    """`[sum|a - b|, sum|b|]` as float32 (2,), one read of a and b, float32 accumulation."""
    op = "rel_l1_parts"
    _checks.check_rel_l1_parts(a, b)
    device = _check_launchable(op, a=a, b=b)
    numel = a.numel()
    if numel == 0:
        return torch.zeros(2, dtype=torch.float32, device=device)
    a, b = _readable(a), _readable(b)
    block = _pow2_arg(op, "block", block, min(REDUCE_BLOCK, _next_pow2(numel)))
    n_blocks = triton.cdiv(numel, block)
    p = _reduce_programs(device, n_blocks, programs)
    _check_grid(op, (p,))
    iters = triton.cdiv(n_blocks, p)
    partials = torch.empty(p * 2, dtype=torch.float32, device=device)
    with _on_device(device):
        _rel_l1_partials_kernel[(p,)](a, b, partials, numel, iters, BLOCK=block, num_warps=num_warps or REDUCE_WARPS)
        return _sum_partials(partials, p, 2, 1.0, device)


def store_residual(
    out: torch.Tensor,
    inp: torch.Tensor,
    buffer: torch.Tensor | None = None,
    *,
    block: int | None = None,
    num_warps: int = 0,
) -> torch.Tensor:
    """`buffer = out - inp` in place (a new contiguous tensor when buffer is None or has another shape, dtype or
    device, like the twin)."""
    op = "store_residual"
    if (
        buffer is None
        or not isinstance(buffer, torch.Tensor)
        or buffer.shape != out.shape
        or buffer.dtype != out.dtype
        or buffer.device != out.device
    ):
        buffer = torch.empty_like(out, memory_format=torch.contiguous_format)
    _checks.check_store_residual(out, inp, buffer)
    device = _check_launchable(op, out=out, inp=inp, buffer=buffer)
    _writable(op, "buffer", buffer)
    numel = out.numel()
    if numel == 0:
        return buffer
    out, inp = _readable(out), _readable(inp)
    block = _pow2_arg(op, "block", block, FLAT_BLOCK)
    grid = _check_grid(op, (triton.cdiv(numel, block),))
    with _on_device(device):
        _store_residual_kernel[grid](out, inp, buffer, numel, BLOCK=block, num_warps=num_warps or FLAT_WARPS)
    return buffer


def apply_residual(
    inp: torch.Tensor,
    residual: torch.Tensor,
    scale: float | torch.Tensor | None = None,
    *,
    block_r: int | None = None,
    block_c: int | None = None,
    num_warps: int = 0,
) -> torch.Tensor:
    """`inp + scale * residual` into a new tensor of inp's dtype; scale None, a float, a 0-d/(1,) tensor (read on
    the device: no host sync) or a per-channel (C,) tensor."""
    op = "apply_residual"
    scale_t = scale if isinstance(scale, torch.Tensor) else None
    _checks.check_apply_residual(inp, residual, scale_t)
    tensors = {"inp": inp, "residual": residual}
    if scale_t is not None:
        tensors["scale"] = scale_t
    device = _check_launchable(op, **tensors)
    y = torch.empty_like(inp, memory_format=torch.contiguous_format)
    if inp.numel() == 0:
        return y
    inp, residual = _readable(inp), _readable(residual)
    n_cols = _checks.channels(inp)
    n_rows = inp.numel() // n_cols
    scale_value = 1.0
    if scale is None:
        mode, scale_ptr = 0, inp
    elif scale_t is None:
        if not isinstance(scale, (int, float)):
            raise TypeError(f"{op}: scale must be None, a float or a tensor, got {type(scale).__name__}")
        mode, scale_ptr, scale_value = 1, inp, float(scale)
    elif scale_t.numel() == 1:
        mode, scale_ptr = 2, _readable(scale_t)
    else:
        mode, scale_ptr = 3, _readable(scale_t)
    br, bc = _tile(n_rows, n_cols, block_r, block_c, TILE_ELEMS, TILE_MAX_C, op)
    grid = _check_grid(op, (triton.cdiv(n_rows, br), triton.cdiv(n_cols, bc)))
    with _on_device(device):
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
            num_warps=num_warps or TILE_WARPS,
        )
    return y


def magnitude_ratio(
    r_t: torch.Tensor,
    r_prev: torch.Tensor,
    *,
    block_r: int | None = None,
    block_c: int | None = None,
    programs: int | None = None,
    num_warps: int = 0,
) -> torch.Tensor:
    """Mean over tokens of `||r_t|| / ||r_prev||` (norms over the last dim), 0-d float32, one read of each input."""
    op = "magnitude_ratio"
    _checks.check_magnitude_ratio(r_t, r_prev)
    device = _check_launchable(op, r_t=r_t, r_prev=r_prev)
    r_t, r_prev = _readable(r_t), _readable(r_prev)
    n_cols = r_t.shape[-1]
    n_rows = r_t.numel() // n_cols
    br, bc = _tile(n_rows, n_cols, block_r, block_c, NORM_TILE_ELEMS, NORM_MAX_C, op)
    n_blocks = triton.cdiv(n_rows, br)
    p = _reduce_programs(device, n_blocks, programs)
    _check_grid(op, (p,))
    iters = triton.cdiv(n_blocks, p)
    partials = torch.empty(p, dtype=torch.float32, device=device)
    with _on_device(device):
        _magnitude_partials_kernel[(p,)](
            r_t, r_prev, partials, n_rows, n_cols, iters, BLOCK_R=br, BLOCK_C=bc, num_warps=num_warps or REDUCE_WARPS
        )
        return _sum_partials(partials, p, 1, float(n_rows), device)


def _derivative_ptrs(ds: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return list(ds) + [ds[0]] * (MAX_TAYLOR_TENSORS - len(ds))


def taylor_update(
    derivatives: list[torch.Tensor],
    feature: torch.Tensor,
    gap: float,
    filled: int,
    *,
    block: int | None = None,
    num_warps: int = 0,
) -> int:
    """Refresh the finite-difference history in place in one pass; returns `min(filled + 1, len(derivatives))`.

    Reads feature and the `new_filled - 1` old derivatives it needs, writes the `new_filled` new ones.
    """
    op = "taylor_update"
    _checks.check_taylor_update(derivatives, feature, gap, filled)
    new_filled = min(filled + 1, len(derivatives))
    if new_filled > MAX_TAYLOR_TENSORS:
        raise ValueError(
            f"{op}: the Triton kernel updates at most {MAX_TAYLOR_TENSORS} derivative tensors (order "
            f"{MAX_TAYLOR_TENSORS - 1}), this call needs {new_filled}; lower the Taylor order or set "
            f"{ENV_VAR}=auto/torch (auto uses the PyTorch twin for such orders)"
        )
    used = list(derivatives[:new_filled])
    tensors = {f"derivatives[{i}]": d for i, d in enumerate(used)}
    device = _check_launchable(op, feature=feature, **tensors)
    for name, d in tensors.items():
        _writable(op, name, d)
    numel = feature.numel()
    if numel == 0:
        return new_filled
    feature = _readable(feature)
    block = _pow2_arg(op, "block", block, FLAT_BLOCK)
    grid = _check_grid(op, (triton.cdiv(numel, block),))
    with _on_device(device):
        _taylor_update_kernel[grid](
            feature,
            *_derivative_ptrs(used),
            numel,
            1.0 / float(gap),
            NEW_FILLED=new_filled,
            BLOCK=block,
            num_warps=num_warps or FLAT_WARPS,
        )
    return new_filled


def taylor_forecast(
    derivatives: list[torch.Tensor],
    filled: int,
    distance: float,
    out: torch.Tensor | None = None,
    *,
    block: int | None = None,
    num_warps: int = 0,
) -> torch.Tensor:
    """`sum_{i < filled} D_i distance**i / i!` into `out` (or a new tensor) in one pass over the `filled` tensors."""
    op = "taylor_forecast"
    _checks.check_taylor_forecast(derivatives, filled, distance, out)
    if filled > MAX_TAYLOR_TENSORS:
        raise ValueError(
            f"{op}: the Triton kernel sums at most {MAX_TAYLOR_TENSORS} derivative tensors, filled={filled}; lower "
            f"the Taylor order or set {ENV_VAR}=auto/torch (auto uses the PyTorch twin for such orders)"
        )
    used = list(derivatives[:filled])
    tensors = {f"derivatives[{i}]": d for i, d in enumerate(used)}
    if out is None:
        out = torch.empty_like(used[0], memory_format=torch.contiguous_format)
    device = _check_launchable(op, out=out, **tensors)
    _writable(op, "out", out)
    numel = out.numel()
    if numel == 0:
        return out
    used = [_readable(d) for d in used]
    coeffs = [float(distance) ** i / math.factorial(i) for i in range(1, MAX_TAYLOR_TENSORS)]
    block = _pow2_arg(op, "block", block, FLAT_BLOCK)
    grid = _check_grid(op, (triton.cdiv(numel, block),))
    with _on_device(device):
        _taylor_forecast_kernel[grid](
            out,
            *_derivative_ptrs(used),
            numel,
            *coeffs,
            FILLED=filled,
            BLOCK=block,
            num_warps=num_warps or FLAT_WARPS,
        )
    return out


def token_scatter_gate(
    x: torch.Tensor,
    cache: torch.Tensor,
    index: torch.Tensor,
    rows: torch.Tensor,
    gate: torch.Tensor | float | None = None,
    *,
    block_r: int | None = None,
    block_c: int | None = None,
    num_warps: int = 0,
) -> torch.Tensor:
    """Write `rows` into `cache` at token positions `index` (in place) and return `x + gate * cache`, one pass.

    Builds an int32 inverse map of N entries (token -> row of `rows`, or -1) with PyTorch's bounds-checked scatter_;
    that is the only temporary and it is N * 4 bytes, not of the input's size. Indices must be unique (as for the
    twin's index_copy_, duplicates leave which row lands unspecified).
    """
    op = "token_scatter_gate"
    gate_t = gate if isinstance(gate, torch.Tensor) else None
    if gate is not None and gate_t is None and not isinstance(gate, (int, float)):
        raise TypeError(f"{op}: gate must be None, a float or a tensor, got {type(gate).__name__}")
    _checks.check_token_scatter_gate(x, cache, index, rows, gate_t)
    tensors = {"x": x, "cache": cache, "rows": rows}
    if gate_t is not None:
        tensors["gate"] = gate_t
    device = _check_launchable(op, **tensors)
    _checks.check_same_device(op, x=x, index=index)
    _writable(op, "cache", cache)
    B, N, C = x.shape
    M = index.shape[0]
    _checks.check_index_values(index, N)
    y = torch.empty(x.shape, dtype=_checks.gate_output_dtype(x, cache, gate_t), device=device)
    if y.numel() == 0:
        if M:
            cache.index_copy_(1, index.long(), rows.to(cache.dtype))
        return y
    if y.dtype not in TRITON_DTYPES:
        raise TypeError(f"{op}: the result dtype {y.dtype} (x + gate * cache) is not one the kernels write; cast gate")
    x = _readable(x)
    rows = _readable(rows) if M else cache
    inv = torch.full((N,), -1, dtype=torch.int32, device=device)
    if M:
        inv.scatter_(0, index.long(), torch.arange(M, dtype=torch.int32, device=device))
    g_sb = g_sn = g_sc = 0
    gate_value = 1.0
    if gate is None:
        mode, gate_ptr = 0, x
    elif gate_t is None:
        mode, gate_ptr, gate_value = 1, x, float(gate)
    else:
        mode = 2
        gate_ptr = torch.broadcast_to(gate_t, x.shape)
        g_sb, g_sn, g_sc = gate_ptr.stride()
    n_rows = B * N
    br, bc = _tile(n_rows, C, block_r, block_c, TILE_ELEMS, TILE_MAX_C, op)
    grid = _check_grid(op, (triton.cdiv(n_rows, br), triton.cdiv(C, bc)))
    with _on_device(device):
        _token_scatter_gate_kernel[grid](
            x,
            cache,
            rows,
            inv,
            gate_ptr,
            y,
            N,
            M,
            C,
            n_rows,
            g_sb,
            g_sn,
            g_sc,
            gate_value,
            GATE_MODE=mode,
            BLOCK_R=br,
            BLOCK_C=bc,
            num_warps=num_warps or TILE_WARPS,
        )
    return y
