"""Argument checks that several ops share; each op module builds its own `check` from them. An op's check runs in the
dispatching op (both backends), in its fake implementation and in its Triton launcher.

They look only at metadata (shape, dtype, device), so they also run on fake tensors under `torch.compile`.
User input is checked with explicit exceptions, never `assert`: every message names the value, the limit and the fix.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def symbolic(value: object) -> bool:
    """A SymInt/SymFloat under torch.compile(dynamic=True): checked at run time, when the real op gets the number."""
    return isinstance(value, (torch.SymInt, torch.SymFloat))


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


def check_pair(op: str, n1: str, t1: object, n2: str, t2: object, same_dtype: bool) -> None:
    """Two floating tensors of one shape (and, with same_dtype, one dtype); devices are checked by the caller."""
    check_tensor(op, n1, t1)
    check_tensor(op, n2, t2)
    check_floating(op, n1, t1)
    if same_dtype:
        check_same_shape(op, n1, t1, n2, t2)
        check_same_dtype(op, n1, t1, n2, t2)
    else:
        check_floating(op, n2, t2)
        check_same_shape(op, n1, t1, n2, t2)


def channels(t: torch.Tensor) -> int:
    """Size of the last (channel) dim; a 0-d tensor counts as one channel."""
    return t.shape[-1] if t.dim() >= 1 else 1


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


def check_no_shared_storage(op: str, n1: str, t1: torch.Tensor, n2: str, t2: torch.Tensor) -> None:
    """Real tensors only (fake tensors have no storage address)."""
    if t1.numel() and t2.numel() and t1.untyped_storage().data_ptr() == t2.untyped_storage().data_ptr():
        raise ValueError(f"{op}: {n1} and {n2} share memory; pass separate tensors ({n2}.clone())")
