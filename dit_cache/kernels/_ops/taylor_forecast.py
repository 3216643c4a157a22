"""`taylor_forecast(derivatives, filled, distance, out)`: TaylorSeer's forecast `sum_i D_i distance**i / i!` in one pass
over the history. Two custom ops: `taylor_forecast` (a new tensor) and `taylor_forecast_out` (into `out`)."""

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

NAME = "taylor_forecast"


def twin(derivatives: list[Tensor], filled: int, distance: float, out: Tensor | None = None) -> Tensor:
    """`sum_{i < filled} D_i * distance**i / i!`: the order-(filled - 1) Taylor forecast `distance` steps ahead."""
    if filled < 1:
        raise ValueError("taylor_forecast needs at least one computed feature in the history (filled >= 1)")
    result = derivatives[0].clone() if out is None else out.copy_(derivatives[0])
    for i in range(1, filled):
        result.add_(derivatives[i], alpha=distance**i / math.factorial(i))
    return result


def check(derivatives: list[Tensor], filled: int, distance: float, out: Tensor | None) -> None:
    if not _checks.symbolic(filled) and (not isinstance(filled, int) or filled < 1):
        raise ValueError("taylor_forecast needs at least one computed feature in the history (filled >= 1)")
    _checks.check_derivatives(NAME, derivatives)
    if not _checks.symbolic(filled) and filled > len(derivatives):
        raise ValueError(
            f"{NAME}: filled={filled} exceeds the {len(derivatives)} derivative tensors given; pass at most "
            f"filled={len(derivatives)}"
        )
    if not _checks.symbolic(distance) and not (isinstance(distance, (int, float)) and math.isfinite(distance)):
        raise ValueError(f"{NAME}: distance must be a finite number of steps, got {distance!r}")
    if out is not None:
        _checks.check_tensor(NAME, "out", out)
        _checks.check_same_shape(NAME, "derivatives[0]", derivatives[0], "out", out)
        _checks.check_same_dtype(NAME, "derivatives[0]", derivatives[0], "out", out)
        _checks.check_same_device(NAME, **{"derivatives[0]": derivatives[0], "out": out})


@triton_kernel
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


def launch(
    derivatives: list[Tensor],
    filled: int,
    distance: float,
    out: Tensor | None = None,
    *,
    block: int | None = None,
    num_warps: int = 0,
) -> Tensor:
    """`sum_{i < filled} D_i distance**i / i!` into `out` (or a new tensor) in one pass over the `filled` tensors."""
    check(derivatives, filled, distance, out)
    if filled > MAX_TAYLOR_TENSORS:
        raise ValueError(
            f"{NAME}: the Triton kernel sums at most {MAX_TAYLOR_TENSORS} derivative tensors, filled={filled}; lower "
            f"the Taylor order or set {ENV_VAR}=auto/torch (auto uses the PyTorch twin for such orders)"
        )
    used = list(derivatives[:filled])
    tensors = {f"derivatives[{i}]": d for i, d in enumerate(used)}
    if out is None:
        out = torch.empty_like(used[0], memory_format=torch.contiguous_format)
    device = _launch.check_launchable(NAME, out=out, **tensors)
    _launch.writable(NAME, "out", out)
    numel = out.numel()
    if numel == 0:
        return out
    used = [_launch.readable(d) for d in used]
    coeffs = [float(distance) ** i / math.factorial(i) for i in range(1, MAX_TAYLOR_TENSORS)]
    block, grid = _launch.flat_grid(NAME, numel, block)
    with _launch.on_device(device):
        _taylor_forecast_kernel[grid](
            out,
            *_launch.derivative_ptrs(used),
            numel,
            *coeffs,
            FILLED=filled,
            BLOCK=block,
            num_warps=num_warps or _launch.FLAT_WARPS,
        )
    return out


# The ops forecast from all the derivatives they are given: the public function passes the first `filled`.


def _fake(derivatives: list[Tensor], distance: float) -> Tensor:
    return derivatives[0].new_empty(derivatives[0].shape)


_op = register_op(
    NAME,
    _fake,
    check=lambda derivatives, distance: check(derivatives, len(derivatives), distance, None),
    call=lambda backend, derivatives, distance: backend.taylor_forecast(list(derivatives), len(derivatives), distance),
    route=lambda derivatives, distance: Route(
        list(derivatives), unsupported=_backend.taylor_unsupported(len(derivatives))
    ),
)


def _check_out_apart(derivatives: list[Tensor], distance: float, out: Tensor) -> None:
    for i, d in enumerate(derivatives):
        _checks.check_no_shared_storage(NAME, f"derivatives[{i}]", d, "out", out)


def _fake_out(derivatives: list[Tensor], distance: float, out: Tensor) -> None:
    pass


_op_out = register_op(
    NAME,
    _fake_out,
    check=lambda derivatives, distance, out: check(derivatives, len(derivatives), distance, out),
    check_values=_check_out_apart,
    call=lambda backend, derivatives, distance, out: backend.taylor_forecast(
        list(derivatives), len(derivatives), distance, out
    ),
    route=lambda derivatives, distance, out: Route(
        list(derivatives) + [out], [out], _backend.taylor_unsupported(len(derivatives))
    ),
    mutates_args=("out",),
    op_name="taylor_forecast_out",
)


def taylor_forecast(derivatives: list[Tensor], filled: int, distance: float, out: Tensor | None = None) -> Tensor:
    """`sum_{i < filled} D_i * distance**i / i!`: the order-(filled - 1) Taylor forecast `distance` steps ahead.

    Written into `out` when given (it must have D_0's shape and dtype and not share memory with the derivatives),
    else into a new tensor; returns it.
    """
    if not torch.compiler.is_compiling():
        check(derivatives, filled, distance, out)
    used = list(derivatives[:filled])
    if out is None:
        return _op(used, distance)
    _op_out(used, distance, out)
    return out
