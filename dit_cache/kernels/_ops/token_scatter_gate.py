"""`token_scatter_gate(x, cache, index, rows, gate)`: a token cache's update and output in one pass: the recomputed
rows go into the cache at their token positions, and the result is `x + gate * cache`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .. import _checks, _launch
from .._backend import TRITON_DTYPES
from .._launch import triton_kernel
from .._op import Route, join_scalar, register_op, split_scalar

if TYPE_CHECKING:  # bound for real by triton_kernel on first launch
    import triton.language as tl

NAME = "token_scatter_gate"


def twin(x: Tensor, cache: Tensor, index: Tensor, rows: Tensor, gate: Tensor | float | None = None) -> Tensor:
    """Write the recomputed `rows` into `cache` at token positions `index` (in place), return `x + gate * cache`.

    x, cache: (B, N, C); index: (M,) token positions, shared by the batch; rows: (B, M, C);
    gate: None (1), a float, or a tensor broadcastable to (B, N, C) such as (B, 1, C).
    """
    cache.index_copy_(1, index, rows.to(cache.dtype))
    if gate is None:
        return x + cache
    return x + gate * cache


def check(x: Tensor, cache: Tensor, index: Tensor, rows: Tensor, gate: Tensor | None) -> None:
    for name, t in (("x", x), ("cache", cache), ("index", index), ("rows", rows)):
        _checks.check_tensor(NAME, name, t)
    if x.dim() != 3:
        raise ValueError(f"{NAME}: x must be 3-d (B, N, C), got shape {tuple(x.shape)}; reshape it to (B, N, C)")
    _checks.check_floating(NAME, "x", x)
    _checks.check_same_shape(NAME, "x", x, "cache", cache)
    _checks.check_same_dtype(NAME, "x", x, "cache", cache)
    if index.dim() != 1 or index.dtype not in (torch.int32, torch.int64):
        raise TypeError(
            f"{NAME}: index must be a 1-d int64 or int32 tensor of token positions, got shape {tuple(index.shape)} "
            f"and dtype {index.dtype}; use index.flatten().long()"
        )
    B, _, C = x.shape
    M = index.shape[0]
    _checks.check_floating(NAME, "rows", rows)
    if tuple(rows.shape) != (B, M, C):
        raise ValueError(
            f"{NAME}: rows must have shape (B, M, C) = ({B}, {M}, {C}) for x of shape {tuple(x.shape)} and "
            f"{M} indices, got {tuple(rows.shape)}"
        )
    tensors = {"x": x, "cache": cache, "index": index, "rows": rows}
    if gate is not None:
        _checks.check_tensor(NAME, "gate", gate)
        _checks.check_floating(NAME, "gate", gate)
        try:
            broadcast = torch.broadcast_shapes(gate.shape, x.shape)
        except RuntimeError:
            broadcast = None
        if broadcast != x.shape:
            raise ValueError(
                f"{NAME}: gate of shape {tuple(gate.shape)} must broadcast to x's shape {tuple(x.shape)} without "
                "growing it, e.g. (B, 1, C), (C,) or 0-d"
            )
        tensors["gate"] = gate
    _checks.check_same_device(NAME, **tensors)


def output_dtype(x: Tensor, cache: Tensor, gate: Tensor | None) -> torch.dtype:
    """The dtype of the twin's `x + gate * cache` under PyTorch's promotion rules (a 0-d gate does not promote)."""
    if gate is None:
        return torch.promote_types(x.dtype, cache.dtype)
    if gate.dim() == 0:
        gc = cache.dtype
    else:
        gc = torch.promote_types(gate.dtype, cache.dtype)
    return torch.promote_types(x.dtype, gc)


@triton_kernel
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


def launch(
    x: Tensor,
    cache: Tensor,
    index: Tensor,
    rows: Tensor,
    gate: Tensor | float | None = None,
    *,
    block_r: int | None = None,
    block_c: int | None = None,
    num_warps: int = 0,
) -> Tensor:
    """Write `rows` into `cache` at token positions `index` (in place) and return `x + gate * cache`, one pass.

    Builds an int32 inverse map of N entries (token -> row of `rows`, or -1) with PyTorch's bounds-checked scatter_;
    that is the only temporary and it is N * 4 bytes, not of the input's size. Indices must be unique (as for the
    twin's index_copy_, duplicates leave which row lands unspecified).
    """
    gate_t = gate if isinstance(gate, Tensor) else None
    if gate is not None and gate_t is None and not isinstance(gate, (int, float)):
        raise TypeError(f"{NAME}: gate must be None, a float or a tensor, got {type(gate).__name__}")
    check(x, cache, index, rows, gate_t)
    tensors = {"x": x, "cache": cache, "rows": rows}
    if gate_t is not None:
        tensors["gate"] = gate_t
    device = _launch.check_launchable(NAME, **tensors)
    _checks.check_same_device(NAME, x=x, index=index)
    _launch.writable(NAME, "cache", cache)
    B, N, C = x.shape
    M = index.shape[0]
    _checks.check_index_values(index, N)
    y = torch.empty(x.shape, dtype=output_dtype(x, cache, gate_t), device=device)
    if y.numel() == 0:
        if M:
            cache.index_copy_(1, index.long(), rows.to(cache.dtype))
        return y
    if y.dtype not in TRITON_DTYPES:
        raise TypeError(
            f"{NAME}: the result dtype {y.dtype} (x + gate * cache) is not one the kernels write; cast gate"
        )
    x = _launch.readable(x)
    rows = _launch.readable(rows) if M else cache
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
    br, bc, grid = _launch.tile_grid(NAME, n_rows, C, block_r, block_c)
    with _launch.on_device(device):
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
            num_warps=num_warps or _launch.TILE_WARPS,
        )
    return y


def _check_values(x: Tensor, cache: Tensor, index: Tensor, rows: Tensor, gate: Tensor | None, gate_value: float):
    _checks.check_index_values(index, x.shape[1])  # looked up in _checks on each call: tests replace it there
    _checks.check_no_shared_storage(NAME, "x", x, "cache", cache)
    _checks.check_no_shared_storage(NAME, "rows", rows, "cache", cache)


def _call(backend, x: Tensor, cache: Tensor, index: Tensor, rows: Tensor, gate: Tensor | None, gate_value: float):
    # int64 for index_copy_ (the twin); the launcher converts int32 positions with the same .long() itself
    return backend.token_scatter_gate(x, cache, index.long(), rows, join_scalar(gate, gate_value))


def _fake(x: Tensor, cache: Tensor, index: Tensor, rows: Tensor, gate: Tensor | None, gate_value: float) -> Tensor:
    return x.new_empty(x.shape, dtype=output_dtype(x, cache, gate))


_op = register_op(
    NAME,
    _fake,
    check=lambda x, cache, index, rows, gate, gate_value: check(x, cache, index, rows, gate),
    check_values=_check_values,
    call=_call,
    # the positions are not read by the kernel's tiles (only an N-entry inverse map is built from them)
    route=lambda x, cache, index, rows, gate, gate_value: Route(
        [x, cache, rows] + ([gate] if gate is not None else []), [cache]
    ),
    mutates_args=("cache",),
)


def token_scatter_gate(
    x: Tensor, cache: Tensor, index: Tensor, rows: Tensor, gate: Tensor | float | None = None
) -> Tensor:
    """Write the recomputed `rows` into `cache` at token positions `index` (in place), return `x + gate * cache`.

    x, cache: (B, N, C) of one dtype; index: (M,) unique int64/int32 token positions in [0, N), shared by the batch;
    rows: (B, M, C), cast to cache's dtype; gate: None (1), a float, or a tensor broadcastable to (B, N, C) such as
    (B, 1, C). The result has the dtype PyTorch gives `x + gate * cache`.
    """
    gate_t, gate_value = split_scalar(NAME, "gate", gate)
    return _op(x, cache, index, rows, gate_t, gate_value)
