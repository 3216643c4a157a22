"""`taylor_update(derivatives, feature, gap, filled)`: TaylorSeer's finite-difference history, refreshed in place in one
pass with a newly computed feature."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .. import _backend, _checks, _launch
from .._backend import ENV_VAR, MAX_TAYLOR_TENSORS
from .._launch import triton_kernel
from .._op import Route, register_op

if TYPE_CHECKING:  # bound for real by triton_kernel on first launch
    import triton.language as tl

NAME = "taylor_update"


def twin(derivatives: list[Tensor], feature: Tensor, gap: float, filled: int) -> int:
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


def check(derivatives: list[Tensor], feature: Tensor, gap: float, filled: int) -> None:
    _checks.check_derivatives(NAME, derivatives)
    _checks.check_tensor(NAME, "feature", feature)
    _checks.check_floating(NAME, "feature", feature)
    _checks.check_same_shape(NAME, "derivatives[0]", derivatives[0], "feature", feature)
    _checks.check_same_device(NAME, **{"derivatives[0]": derivatives[0], "feature": feature})
    if not _checks.symbolic(gap) and not (isinstance(gap, (int, float)) and math.isfinite(gap) and gap > 0):
        raise ValueError(f"taylor_update needs a positive gap between computations, got {gap}")
    if not _checks.symbolic(filled) and (not isinstance(filled, int) or not 0 <= filled <= len(derivatives)):
        raise ValueError(
            f"{NAME}: filled={filled!r} must be an int in [0, {len(derivatives)}] (the number of valid entries of "
            "derivatives); pass the value the previous taylor_update returned, 0 at the start"
        )


@triton_kernel
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


def launch(
    derivatives: list[Tensor],
    feature: Tensor,
    gap: float,
    filled: int,
    *,
    block: int | None = None,
    num_warps: int = 0,
) -> int:
    """Refresh the finite-difference history in place in one pass; returns `min(filled + 1, len(derivatives))`.

    Reads feature and the `new_filled - 1` old derivatives it needs, writes the `new_filled` new ones.
    """
    check(derivatives, feature, gap, filled)
    new_filled = min(filled + 1, len(derivatives))
    if new_filled > MAX_TAYLOR_TENSORS:
        raise ValueError(
            f"{NAME}: the Triton kernel updates at most {MAX_TAYLOR_TENSORS} derivative tensors (order "
            f"{MAX_TAYLOR_TENSORS - 1}), this call needs {new_filled}; lower the Taylor order or set "
            f"{ENV_VAR}=auto/torch (auto uses the PyTorch twin for such orders)"
        )
    used = list(derivatives[:new_filled])
    tensors = {f"derivatives[{i}]": d for i, d in enumerate(used)}
    device = _launch.check_launchable(NAME, feature=feature, **tensors)
    for name, d in tensors.items():
        _launch.writable(NAME, name, d)
    numel = feature.numel()
    if numel == 0:
        return new_filled
    feature = _launch.readable(feature)
    block, grid = _launch.flat_grid(NAME, numel, block)
    with _launch.on_device(device):
        _taylor_update_kernel[grid](
            feature,
            *_launch.derivative_ptrs(used),
            numel,
            1.0 / float(gap),
            NEW_FILLED=new_filled,
            BLOCK=block,
            num_warps=num_warps or _launch.FLAT_WARPS,
        )
    return new_filled


def _route(derivatives: list[Tensor], feature: Tensor, gap: float, filled: int) -> Route:
    """Only the derivatives this call writes decide (the rest of the history is not touched)."""
    new_filled = min(filled + 1, len(derivatives))
    used = list(derivatives[:new_filled])
    return Route(used + [feature], used, _backend.taylor_unsupported(new_filled))


def _fake(derivatives: list[Tensor], feature: Tensor, gap: float, filled: int) -> None:
    pass


_op = register_op(
    NAME,
    _fake,
    check=check,
    call=lambda backend, derivatives, feature, gap, filled: backend.taylor_update(
        list(derivatives), feature, gap, filled
    ),
    route=_route,
    mutates_args=("derivatives",),
)


def taylor_update(derivatives: list[Tensor], feature: Tensor, gap: float, filled: int) -> int:
    """Refresh the finite-difference history with a newly computed `feature`, in place, in one pass.

    `derivatives` holds k + 1 tensors (order k) of the feature's shape; the first `filled` of them are valid.
    After the call `D_0 = feature` and `D_i = (D_{i-1}^new - D_{i-1}^old) / gap` for the orders the history can
    support. `gap` is the distance (in steps) between this computation and the previous one. Returns the new
    number of valid orders, `min(filled + 1, k + 1)`. feature is cast to the derivatives' dtype.
    """
    if not torch.compiler.is_compiling():  # compiled code: the op's fake and real implementations check
        check(derivatives, feature, gap, filled)
    feature = feature.detach()  # the history holds values, not autograd graph
    _op(list(derivatives), feature, gap, filled)
    return min(filled + 1, len(derivatives))
