"""PyTorch twins of the reuse kernels: the fallback on machines without Triton/CUDA and the oracle of the tests.

Every function here has the same signature and semantics as its Triton counterpart in this package. Shapes use
`(..., C)`: any number of leading dims (batch, tokens) and channels last.
"""

from __future__ import annotations

import math

import torch


def _acc(t: torch.Tensor) -> torch.Tensor:
    """Upcast for arithmetic: float32, or float64 for float64 inputs (so a float64 call is a float64 reference)."""
    return t if t.dtype == torch.float64 else t.float()


def rel_l1_parts(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`[sum|a - b|, sum|b|]` as a float32 tensor of shape (2,), on the inputs' device.

    The two sums (not their ratio) are returned so that a process group can all-reduce them before dividing.
    """
    a32, b32 = _acc(a), _acc(b)
    return torch.stack(((a32 - b32).abs().sum(), b32.abs().sum())).float()


def store_residual(out: torch.Tensor, inp: torch.Tensor, buffer: torch.Tensor | None = None) -> torch.Tensor:
    """`buffer = out - inp`, written into `buffer` when it has the right shape and dtype, else into a new tensor."""
    if buffer is None or buffer.shape != out.shape or buffer.dtype != out.dtype or buffer.device != out.device:
        return out - inp
    return torch.sub(out, inp, out=buffer)


def apply_residual(
    inp: torch.Tensor, residual: torch.Tensor, scale: float | torch.Tensor | None = None
) -> torch.Tensor:
    """`inp + scale * residual`; `scale` is None (1), a float, a 0-d tensor or a per-channel tensor of shape (C,)."""
    if scale is None:
        return inp + residual
    if isinstance(scale, torch.Tensor):
        scale = scale.to(torch.float64 if inp.dtype == torch.float64 else torch.float32)
    return (_acc(inp) + scale * _acc(residual)).to(inp.dtype)


def magnitude_ratio(r_t: torch.Tensor, r_prev: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of `||r_t|| / ||r_prev||`, norms over the last (channel) dim; 0-d float32 tensor."""
    num = _acc(r_t).norm(dim=-1)
    den = _acc(r_prev).norm(dim=-1)
    return (num / den).mean().float()


def taylor_update(derivatives: list[torch.Tensor], feature: torch.Tensor, gap: float, filled: int) -> int:
    """Refresh the finite-difference history with a newly computed `feature`, in place.

    `derivatives` holds k + 1 tensors (order k) of the feature's shape; the first `filled` of them are valid.
    After the call `D_0 = feature` and `D_i = (D_{i-1}^new - D_{i-1}^old) / gap` for the orders the history can
    support. `gap` is the distance (in steps) between this computation and the previous one. Returns the new
    number of valid orders, `min(filled + 1, k + 1)`.
    """
    if gap <= 0:
        raise ValueError(f"taylor_update needs a positive gap between computations, got {gap}")
    order_count = len(derivatives)
    new_filled = min(filled + 1, order_count)
    new_value = feature.to(derivatives[0].dtype)
    for i in range(new_filled):
        old_value = derivatives[i].clone() if i + 1 < new_filled else None
        derivatives[i].copy_(new_value)
        if old_value is not None:
            new_value = (derivatives[i] - old_value) / gap
    return new_filled


def taylor_forecast(
    derivatives: list[torch.Tensor], filled: int, distance: float, out: torch.Tensor | None = None
) -> torch.Tensor:
    """`sum_{i < filled} D_i * distance**i / i!`: the order-(filled - 1) Taylor forecast `distance` steps ahead."""
    if filled < 1:
        raise ValueError("taylor_forecast needs at least one computed feature in the history (filled >= 1)")
    result = derivatives[0].clone() if out is None else out.copy_(derivatives[0])
    for i in range(1, filled):
        result.add_(derivatives[i], alpha=distance**i / math.factorial(i))
    return result


def token_scatter_gate(
    x: torch.Tensor,
    cache: torch.Tensor,
    index: torch.Tensor,
    rows: torch.Tensor,
    gate: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Write the recomputed `rows` into `cache` at token positions `index` (in place), return `x + gate * cache`.

    x, cache: (B, N, C); index: (M,) token positions, shared by the batch; rows: (B, M, C);
    gate: None (1), a float, or a tensor broadcastable to (B, N, C) such as (B, 1, C).
    """
    cache.index_copy_(1, index, rows.to(cache.dtype))
    if gate is None:
        return x + cache
    return x + gate * cache
