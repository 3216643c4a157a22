"""Argument checks shared by the dispatching ops (both backends), their fake implementations and the Triton launchers.

They look only at metadata (shape, dtype, device), so they also run on fake tensors under `torch.compile`.
User input is checked with explicit exceptions, never `assert`: every message names the value, the limit and the fix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def _symbolic(value: object) -> bool:
    """A SymInt/SymFloat under torch.compile(dynamic=True): checked at run time, when the real op gets the number."""
    return isinstance(value, (torch.SymInt, torch.SymFloat))


def _desc(name: str, t: torch.Tensor) -> str:
    return f"{name} (shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device})"


def check_tensor(op: str, name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def check_floating(op: str, name: str, t: torch.Tensor) -> None:
    if not t.dtype.is_floating_point:
        raise TypeError(
            f"{op}: {name} has dtype {t.dtype}; it must be a floating-point tensor "
            f"(float16, bfloat16, float32, or float64 on the PyTorch path); cast it, e.g. {name}.float()"
        )


def check_same_device(op: str, **tensors: torch.Tensor) -> None:
    devices = {t.device for t in tensors.values()}
    if len(devices) > 1:
        listing = ", ".join(f"{n} on {t.device}" for n, t in tensors.items())
        raise RuntimeError(f"{op}: all tensors must be on one device, got {listing}; move them with .to(device)")


def check_same_shape(op: str, n1: str, t1: torch.Tensor, n2: str, t2: torch.Tensor) -> None:
    if t1.shape != t2.shape:
        raise ValueError(
            f"{op}: {n2} must have the shape of {n1}: {n1} is {tuple(t1.shape)}, {n2} is {tuple(t2.shape)}; "
            "no broadcasting is done here"
        )


def check_same_dtype(op: str, n1: str, t1: torch.Tensor, n2: str, t2: torch.Tensor) -> None:
    if t1.dtype != t2.dtype:
        raise TypeError(
            f"{op}: {n2} must have the dtype of {n1}: {n1} is {t1.dtype}, {n2} is {t2.dtype}; "
            f"cast one, e.g. {n2}.to({n1}.dtype)"
        )


def channels(t: torch.Tensor) -> int:
    """Size of the last (channel) dim; a 0-d tensor counts as one channel."""
    return t.shape[-1] if t.dim() >= 1 else 1


def check_rel_l1_parts(a: torch.Tensor, b: torch.Tensor) -> None:
    op = "rel_l1_parts"
    check_tensor(op, "a", a)
    check_tensor(op, "b", b)
    check_floating(op, "a", a)
    check_floating(op, "b", b)
    check_same_shape(op, "a", a, "b", b)
    check_same_device(op, a=a, b=b)


def check_store_residual(out: torch.Tensor, inp: torch.Tensor, buffer: torch.Tensor | None) -> None:
    op = "store_residual"
    check_tensor(op, "out", out)
    check_tensor(op, "inp", inp)
    check_floating(op, "out", out)
    check_same_shape(op, "out", out, "inp", inp)
    check_same_dtype(op, "out", out, "inp", inp)
    tensors = {"out": out, "inp": inp}
    if buffer is not None:
        check_tensor(op, "buffer", buffer)
        check_same_shape(op, "out", out, "buffer", buffer)
        check_same_dtype(op, "out", out, "buffer", buffer)
        tensors["buffer"] = buffer
    check_same_device(op, **tensors)


def check_scale(op: str, scale: torch.Tensor, n_channels: int) -> None:
    check_floating(op, "scale", scale)
    if scale.dim() > 1 or scale.numel() not in (1, n_channels):
        raise ValueError(
            f"{op}: a tensor scale must be 0-d, of shape (1,) or per-channel of shape ({n_channels},) "
            f"(the last dim of inp); got shape {tuple(scale.shape)}; reshape it, or use apply_residual's "
            "float scale"
        )


def check_apply_residual(inp: torch.Tensor, residual: torch.Tensor, scale: torch.Tensor | None) -> None:
    op = "apply_residual"
    check_tensor(op, "inp", inp)
    check_tensor(op, "residual", residual)
    check_floating(op, "inp", inp)
    check_same_shape(op, "inp", inp, "residual", residual)
    check_same_dtype(op, "inp", inp, "residual", residual)
    tensors = {"inp": inp, "residual": residual}
    if scale is not None:
        check_scale(op, scale, channels(inp))
        tensors["scale"] = scale
    check_same_device(op, **tensors)


def check_magnitude_ratio(r_t: torch.Tensor, r_prev: torch.Tensor) -> None:
    op = "magnitude_ratio"
    check_tensor(op, "r_t", r_t)
    check_tensor(op, "r_prev", r_prev)
    check_floating(op, "r_t", r_t)
    check_floating(op, "r_prev", r_prev)
    check_same_shape(op, "r_t", r_t, "r_prev", r_prev)
    check_same_device(op, r_t=r_t, r_prev=r_prev)
    if r_t.dim() < 1:
        raise ValueError(f"{op}: r_t must have a channel dim (at least 1-d), got a 0-d tensor; pass r.reshape(1, -1)")
    if r_t.numel() == 0:
        raise ValueError(
            f"{op}: r_t of shape {tuple(r_t.shape)} is empty: the mean over zero tokens or the norm over zero "
            "channels is undefined; skip the call when there are no tokens"
        )


def check_derivatives(op: str, derivatives: Sequence[torch.Tensor]) -> None:
    if not isinstance(derivatives, (list, tuple)):
        raise TypeError(f"{op}: derivatives must be a list of tensors, got {type(derivatives).__name__}")
    if len(derivatives) == 0:
        raise ValueError(f"{op}: derivatives is empty; it needs k + 1 >= 1 tensors for order k")
    first = check_tensor(op, "derivatives[0]", derivatives[0])
    check_floating(op, "derivatives[0]", first)
    for i, d in enumerate(derivatives[1:], start=1):
        check_tensor(op, f"derivatives[{i}]", d)
        check_same_shape(op, "derivatives[0]", first, f"derivatives[{i}]", d)
        check_same_dtype(op, "derivatives[0]", first, f"derivatives[{i}]", d)
        check_same_device(op, **{"derivatives[0]": first, f"derivatives[{i}]": d})


def check_taylor_update(derivatives: Sequence[torch.Tensor], feature: torch.Tensor, gap: float, filled: int) -> None:
    op = "taylor_update"
    check_derivatives(op, derivatives)
    check_tensor(op, "feature", feature)
    check_floating(op, "feature", feature)
    check_same_shape(op, "derivatives[0]", derivatives[0], "feature", feature)
    check_same_device(op, **{"derivatives[0]": derivatives[0], "feature": feature})
    if not _symbolic(gap) and not (isinstance(gap, (int, float)) and math.isfinite(gap) and gap > 0):
        raise ValueError(f"taylor_update needs a positive gap between computations, got {gap}")
    if not _symbolic(filled) and (not isinstance(filled, int) or not 0 <= filled <= len(derivatives)):
        raise ValueError(
            f"{op}: filled={filled!r} must be an int in [0, {len(derivatives)}] (the number of valid entries of "
            "derivatives); pass the value the previous taylor_update returned, 0 at the start"
        )


def check_taylor_forecast(
    derivatives: Sequence[torch.Tensor], filled: int, distance: float, out: torch.Tensor | None
) -> None:
    op = "taylor_forecast"
    if not _symbolic(filled) and (not isinstance(filled, int) or filled < 1):
        raise ValueError("taylor_forecast needs at least one computed feature in the history (filled >= 1)")
    check_derivatives(op, derivatives)
    if not _symbolic(filled) and filled > len(derivatives):
        raise ValueError(
            f"{op}: filled={filled} exceeds the {len(derivatives)} derivative tensors given; pass at most "
            f"filled={len(derivatives)}"
        )
    if not _symbolic(distance) and not (isinstance(distance, (int, float)) and math.isfinite(distance)):
        raise ValueError(f"{op}: distance must be a finite number of steps, got {distance!r}")
    if out is not None:
        check_tensor(op, "out", out)
        check_same_shape(op, "derivatives[0]", derivatives[0], "out", out)
        check_same_dtype(op, "derivatives[0]", derivatives[0], "out", out)
        check_same_device(op, **{"derivatives[0]": derivatives[0], "out": out})


def check_token_scatter_gate(
    x: torch.Tensor, cache: torch.Tensor, index: torch.Tensor, rows: torch.Tensor, gate: torch.Tensor | None
) -> None:
    op = "token_scatter_gate"
    for name, t in (("x", x), ("cache", cache), ("index", index), ("rows", rows)):
        check_tensor(op, name, t)
    if x.dim() != 3:
        raise ValueError(f"{op}: x must be 3-d (B, N, C), got shape {tuple(x.shape)}; reshape it to (B, N, C)")
    check_floating(op, "x", x)
    check_same_shape(op, "x", x, "cache", cache)
    check_same_dtype(op, "x", x, "cache", cache)
    if index.dim() != 1 or index.dtype not in (torch.int32, torch.int64):
        raise TypeError(
            f"{op}: index must be a 1-d int64 or int32 tensor of token positions, got shape {tuple(index.shape)} "
            f"and dtype {index.dtype}; use index.flatten().long()"
        )
    B, _, C = x.shape
    M = index.shape[0]
    check_floating(op, "rows", rows)
    if tuple(rows.shape) != (B, M, C):
        raise ValueError(
            f"{op}: rows must have shape (B, M, C) = ({B}, {M}, {C}) for x of shape {tuple(x.shape)} and "
            f"{M} indices, got {tuple(rows.shape)}"
        )
    tensors = {"x": x, "cache": cache, "index": index, "rows": rows}
    if gate is not None:
        check_tensor(op, "gate", gate)
        check_floating(op, "gate", gate)
        try:
            broadcast = torch.broadcast_shapes(gate.shape, x.shape)
        except RuntimeError:
            broadcast = None
        if broadcast != x.shape:
            raise ValueError(
                f"{op}: gate of shape {tuple(gate.shape)} must broadcast to x's shape {tuple(x.shape)} without "
                "growing it, e.g. (B, 1, C), (C,) or 0-d"
            )
        tensors["gate"] = gate
    check_same_device(op, **tensors)


def check_index_values(index: torch.Tensor, n_tokens: int) -> None:
    """Bounds of the scatter positions. Only for CPU indices (free there); on CUDA PyTorch's scatter_/index_copy_
    raise a device-side assertion instead (checking here would force a host synchronisation)."""
    if index.device.type != "cpu" or index.numel() == 0:
        return
    lo, hi = int(index.min()), int(index.max())
    if lo < 0 or hi >= n_tokens:
        raise IndexError(
            f"token_scatter_gate: index values must lie in [0, {n_tokens}) (the token dim of x), got min {lo} and "
            f"max {hi}; negative positions are not wrapped"
        )


def gate_output_dtype(x: torch.Tensor, cache: torch.Tensor, gate: torch.Tensor | None) -> torch.dtype:
    """The dtype of the twin's `x + gate * cache` under PyTorch's promotion rules (a 0-d gate does not promote)."""
    if gate is None:
        return torch.promote_types(x.dtype, cache.dtype)
    if gate.dim() == 0:
        gc = cache.dtype
    else:
        gc = torch.promote_types(gate.dtype, cache.dtype)
    return torch.promote_types(x.dtype, gc)


def describe(name: str, t: torch.Tensor) -> str:
    return _desc(name, t)
