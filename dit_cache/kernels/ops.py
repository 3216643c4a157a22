"""The public reuse ops: torch custom ops (`torch.ops.dit_cache.*`) that dispatch to a Triton kernel or the PyTorch twin.

Dispatch happens inside each op's real implementation, on every call (see `_backend.use_triton`):
`DIT_CACHE_KERNELS=auto` (default) picks Triton for CUDA tensors when Triton imports, the twin otherwise;
`triton` and `torch` force either. Because the ops are registered with `torch.library.custom_op` (with fake
implementations and the right `mutates_args`), `torch.compile`d code calls them as opaque nodes without graph breaks.

The Python functions at the bottom keep the twins' signatures (float-or-tensor unions, optional buffers, Python
return values) and translate them to the ops' schema-friendly arguments.

Every op validates its arguments (shapes, dtypes, devices, empties) the same way on both backends, so code that runs
on a CPU machine with the twins raises on a GPU machine only for a GPU-only limit. Outputs are always contiguous.
"""

# No `from __future__ import annotations`: torch.library.custom_op reads the annotations at decoration time.
import math

import torch
from torch import Tensor

from . import _backend, _checks, twins

_NS = "dit_cache"


def _kernels():
    return _backend.triton_module()


def _contiguous(t: Tensor) -> Tensor:
    return t if t.is_contiguous() else t.contiguous()


def _eager(*tensors: Tensor | None) -> bool:
    """Call an op's implementation directly, without the custom-op dispatcher (about 40 us a call on CPU, as much as
    the arithmetic of a small model's residual), when nothing could take the Triton path: not inside
    torch.compile, no CUDA tensor, Triton not forced. Same checks, same twin, same result."""
    if torch.compiler.is_compiling() or _backend.requested_backend() == "triton":
        return False
    # anything but tensors goes through the op, whose schema check gives the error
    return all(t is None or (isinstance(t, Tensor) and not t.is_cuda) for t in tensors)


def _check_no_shared_storage(op: str, n1: str, t1: Tensor, n2: str, t2: Tensor) -> None:
    """Real tensors only (fake tensors have no storage address)."""
    if t1.numel() and t2.numel() and t1.untyped_storage().data_ptr() == t2.untyped_storage().data_ptr():
        raise ValueError(f"{op}: {n1} and {n2} share memory; pass separate tensors ({n2}.clone())")


# ------------------------------------------------------------------------------------------------- rel_l1_parts


def _rel_l1_parts_impl(a: Tensor, b: Tensor) -> Tensor:
    _checks.check_rel_l1_parts(a, b)
    if _backend.use_triton("rel_l1_parts", [a, b]):
        return _kernels().rel_l1_parts(a, b)
    return twins.rel_l1_parts(a, b)


_rel_l1_parts_op = torch.library.custom_op(f"{_NS}::rel_l1_parts", mutates_args=())(_rel_l1_parts_impl)


@_rel_l1_parts_op.register_fake
def _(a: Tensor, b: Tensor) -> Tensor:
    _checks.check_rel_l1_parts(a, b)
    return a.new_empty((2,), dtype=torch.float32)


# ----------------------------------------------------------------------------------------------- store_residual


def _store_residual_impl(out: Tensor, inp: Tensor, buffer: Tensor) -> None:
    _checks.check_store_residual(out, inp, buffer)
    if _backend.use_triton("store_residual", [out, inp, buffer], mutated=[buffer]):
        _kernels().store_residual(out, inp, buffer)
    else:
        torch.sub(out, inp, out=buffer)  # the twin with a matching buffer


_store_residual_op = torch.library.custom_op(f"{_NS}::store_residual_into", mutates_args=("buffer",))(
    _store_residual_impl
)


@_store_residual_op.register_fake
def _(out: Tensor, inp: Tensor, buffer: Tensor) -> None:
    _checks.check_store_residual(out, inp, buffer)


# ----------------------------------------------------------------------------------------------- apply_residual


def _apply_residual_impl(inp: Tensor, residual: Tensor, scale: Tensor | None, scale_value: float) -> Tensor:
    _checks.check_apply_residual(inp, residual, scale)
    arg = scale if scale is not None else (None if scale_value == 1.0 else scale_value)
    tensors = [inp, residual] + ([scale] if scale is not None else [])
    if _backend.use_triton("apply_residual", tensors):
        return _kernels().apply_residual(inp, residual, arg)
    return _contiguous(twins.apply_residual(inp, residual, arg))


_apply_residual_op = torch.library.custom_op(f"{_NS}::apply_residual", mutates_args=())(_apply_residual_impl)


@_apply_residual_op.register_fake
def _(inp: Tensor, residual: Tensor, scale: Tensor | None, scale_value: float) -> Tensor:
    _checks.check_apply_residual(inp, residual, scale)
    return inp.new_empty(inp.shape)


# ---------------------------------------------------------------------------------------------- magnitude_ratio


def _magnitude_ratio_impl(r_t: Tensor, r_prev: Tensor) -> Tensor:
    _checks.check_magnitude_ratio(r_t, r_prev)
    if _backend.use_triton("magnitude_ratio", [r_t, r_prev]):
        return _kernels().magnitude_ratio(r_t, r_prev)
    return twins.magnitude_ratio(r_t, r_prev)


_magnitude_ratio_op = torch.library.custom_op(f"{_NS}::magnitude_ratio", mutates_args=())(_magnitude_ratio_impl)


@_magnitude_ratio_op.register_fake
def _(r_t: Tensor, r_prev: Tensor) -> Tensor:
    _checks.check_magnitude_ratio(r_t, r_prev)
    return r_t.new_empty((), dtype=torch.float32)


# ------------------------------------------------------------------------------------------------------- Taylor


def _taylor_support(count: int) -> str | None:
    if count > _backend.MAX_TAYLOR_TENSORS:
        return f"{count} derivative tensors (the kernels take at most {_backend.MAX_TAYLOR_TENSORS})"
    return None


def _taylor_update_impl(derivatives: list[Tensor], feature: Tensor, gap: float, filled: int) -> None:
    _checks.check_taylor_update(derivatives, feature, gap, filled)
    new_filled = min(filled + 1, len(derivatives))
    used = list(derivatives[:new_filled])
    if _backend.use_triton("taylor_update", used + [feature], mutated=used, supported=_taylor_support(new_filled)):
        _kernels().taylor_update(list(derivatives), feature, gap, filled)
    else:
        twins.taylor_update(list(derivatives), feature, gap, filled)


_taylor_update_op = torch.library.custom_op(f"{_NS}::taylor_update", mutates_args=("derivatives",))(_taylor_update_impl)


@_taylor_update_op.register_fake
def _(derivatives: list[Tensor], feature: Tensor, gap: float, filled: int) -> None:
    _checks.check_taylor_update(derivatives, feature, gap, filled)


def _taylor_forecast_impl(derivatives: list[Tensor], distance: float) -> Tensor:
    """Forecast from all the given derivatives (the wrapper passes the first `filled`)."""
    filled = len(derivatives)
    _checks.check_taylor_forecast(derivatives, filled, distance, None)
    if _backend.use_triton("taylor_forecast", list(derivatives), supported=_taylor_support(filled)):
        return _kernels().taylor_forecast(list(derivatives), filled, distance)
    return _contiguous(twins.taylor_forecast(list(derivatives), filled, distance))


_taylor_forecast_op = torch.library.custom_op(f"{_NS}::taylor_forecast", mutates_args=())(_taylor_forecast_impl)


@_taylor_forecast_op.register_fake
def _(derivatives: list[Tensor], distance: float) -> Tensor:
    _checks.check_taylor_forecast(derivatives, len(derivatives), distance, None)
    return derivatives[0].new_empty(derivatives[0].shape)


def _taylor_forecast_out_impl(derivatives: list[Tensor], distance: float, out: Tensor) -> None:
    filled = len(derivatives)
    _checks.check_taylor_forecast(derivatives, filled, distance, out)
    for i, d in enumerate(derivatives):
        _check_no_shared_storage("taylor_forecast", f"derivatives[{i}]", d, "out", out)
    tensors = list(derivatives) + [out]
    if _backend.use_triton("taylor_forecast", tensors, mutated=[out], supported=_taylor_support(filled)):
        _kernels().taylor_forecast(list(derivatives), filled, distance, out)
    else:
        twins.taylor_forecast(list(derivatives), filled, distance, out)


_taylor_forecast_out_op = torch.library.custom_op(f"{_NS}::taylor_forecast_out", mutates_args=("out",))(
    _taylor_forecast_out_impl
)


@_taylor_forecast_out_op.register_fake
def _(derivatives: list[Tensor], distance: float, out: Tensor) -> None:
    _checks.check_taylor_forecast(derivatives, len(derivatives), distance, out)


# ------------------------------------------------------------------------------------------- token_scatter_gate


def _token_scatter_gate_impl(
    x: Tensor, cache: Tensor, index: Tensor, rows: Tensor, gate: Tensor | None, gate_value: float
) -> Tensor:
    _checks.check_token_scatter_gate(x, cache, index, rows, gate)
    _checks.check_index_values(index, x.shape[1])
    _check_no_shared_storage("token_scatter_gate", "x", x, "cache", cache)
    _check_no_shared_storage("token_scatter_gate", "rows", rows, "cache", cache)
    arg = gate if gate is not None else (None if gate_value == 1.0 else gate_value)
    tensors = [x, cache, rows] + ([gate] if gate is not None else [])
    if _backend.use_triton("token_scatter_gate", tensors, mutated=[cache]):
        return _kernels().token_scatter_gate(x, cache, index, rows, arg)
    return _contiguous(twins.token_scatter_gate(x, cache, index.long(), rows, arg))


_token_scatter_gate_op = torch.library.custom_op(f"{_NS}::token_scatter_gate", mutates_args=("cache",))(
    _token_scatter_gate_impl
)


@_token_scatter_gate_op.register_fake
def _(x: Tensor, cache: Tensor, index: Tensor, rows: Tensor, gate: Tensor | None, gate_value: float) -> Tensor:
    _checks.check_token_scatter_gate(x, cache, index, rows, gate)
    return x.new_empty(x.shape, dtype=_checks.gate_output_dtype(x, cache, gate))


# ------------------------------------------------------------------------------------------------ public functions


def _scalar_or_tensor(op: str, name: str, value: object) -> tuple[Tensor | None, float]:
    if value is None:
        return None, 1.0
    if isinstance(value, Tensor):
        return value, 1.0
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError(f"{op}: {name}={value!r} must be finite")
        return None, float(value)
    raise TypeError(f"{op}: {name} must be None, a float or a tensor, got {type(value).__name__}")


def rel_l1_parts(a: Tensor, b: Tensor) -> Tensor:
    """`[sum|a - b|, sum|b|]` as a float32 tensor of shape (2,), on the inputs' device, in one pass.

    The two sums (not their ratio) are returned so that a process group can all-reduce them before dividing.
    a and b must have one shape (dtypes may differ: both are read as float32). Empty inputs give `[0, 0]`.
    """
    return (_rel_l1_parts_impl if _eager(a, b) else _rel_l1_parts_op)(a, b)


def store_residual(out: Tensor, inp: Tensor, buffer: Tensor | None = None) -> Tensor:
    """`buffer = out - inp`, written into `buffer` when it has out's shape, dtype and device, else into a new tensor.

    Returns the tensor written. out and inp must share shape and dtype. On the Triton path a buffer that is not
    contiguous is refused (DIT_CACHE_KERNELS=triton) or handled by the twin (auto).
    """
    if buffer is None or buffer.shape != out.shape or buffer.dtype != out.dtype or buffer.device != out.device:
        buffer = torch.empty_like(out, memory_format=torch.contiguous_format)
    out, inp = out.detach(), inp.detach()  # a cache holds values, not autograd graph (models run with grad on too)
    (_store_residual_impl if _eager(out, inp) else _store_residual_op)(out, inp, buffer)
    return buffer


def apply_residual(inp: Tensor, residual: Tensor, scale: float | Tensor | None = None) -> Tensor:
    """`inp + scale * residual` in inp's dtype; `scale` is None (1), a float, a 0-d tensor or a per-channel tensor of
    shape (C,). A tensor scale stays on the device (no host sync). inp and residual must share shape and dtype."""
    scale_t, scale_value = _scalar_or_tensor("apply_residual", "scale", scale)
    op = _apply_residual_impl if _eager(inp, residual, scale_t) else _apply_residual_op
    return op(inp, residual, scale_t, scale_value)


def magnitude_ratio(r_t: Tensor, r_prev: Tensor) -> Tensor:
    """Mean over tokens of `||r_t|| / ||r_prev||`, norms over the last (channel) dim; 0-d float32 tensor.

    Every leading dim counts as tokens. Empty inputs raise ValueError; a zero row of r_prev gives inf/nan, as in
    the twin.
    """
    return (_magnitude_ratio_impl if _eager(r_t, r_prev) else _magnitude_ratio_op)(r_t, r_prev)


def taylor_update(derivatives: list[Tensor], feature: Tensor, gap: float, filled: int) -> int:
    """Refresh the finite-difference history with a newly computed `feature`, in place, in one pass.

    `derivatives` holds k + 1 tensors (order k) of the feature's shape; the first `filled` of them are valid.
    After the call `D_0 = feature` and `D_i = (D_{i-1}^new - D_{i-1}^old) / gap` for the orders the history can
    support. `gap` is the distance (in steps) between this computation and the previous one. Returns the new
    number of valid orders, `min(filled + 1, k + 1)`. feature is cast to the derivatives' dtype.
    """
    if not torch.compiler.is_compiling():  # compiled code: the op's fake and real implementations check
        _checks.check_taylor_update(derivatives, feature, gap, filled)
    feature = feature.detach()  # the history holds values, not autograd graph
    op = _taylor_update_impl if _eager(feature, *derivatives) else _taylor_update_op
    op(list(derivatives), feature, gap, filled)
    return min(filled + 1, len(derivatives))


def taylor_forecast(derivatives: list[Tensor], filled: int, distance: float, out: Tensor | None = None) -> Tensor:
    """`sum_{i < filled} D_i * distance**i / i!`: the order-(filled - 1) Taylor forecast `distance` steps ahead.

    Written into `out` when given (it must have D_0's shape and dtype and not share memory with the derivatives),
    else into a new tensor; returns it.
    """
    if not torch.compiler.is_compiling():
        _checks.check_taylor_forecast(derivatives, filled, distance, out)
    used = list(derivatives[:filled])
    eager = _eager(out, *used)
    if out is None:
        return (_taylor_forecast_impl if eager else _taylor_forecast_op)(used, distance)
    (_taylor_forecast_out_impl if eager else _taylor_forecast_out_op)(used, distance, out)
    return out


def token_scatter_gate(
    x: Tensor, cache: Tensor, index: Tensor, rows: Tensor, gate: Tensor | float | None = None
) -> Tensor:
    """Write the recomputed `rows` into `cache` at token positions `index` (in place), return `x + gate * cache`.

    x, cache: (B, N, C) of one dtype; index: (M,) unique int64/int32 token positions in [0, N), shared by the batch;
    rows: (B, M, C), cast to cache's dtype; gate: None (1), a float, or a tensor broadcastable to (B, N, C) such as
    (B, 1, C). The result has the dtype PyTorch gives `x + gate * cache`.
    """
    gate_t, gate_value = _scalar_or_tensor("token_scatter_gate", "gate", gate)
    op = _token_scatter_gate_impl if _eager(x, cache, rows, gate_t) else _token_scatter_gate_op
    return op(x, cache, index, rows, gate_t, gate_value)


__all__ = [
    "apply_residual",
    "magnitude_ratio",
    "rel_l1_parts",
    "store_residual",
    "taylor_forecast",
    "taylor_update",
    "token_scatter_gate",
]
