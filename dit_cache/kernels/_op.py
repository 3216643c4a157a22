"""`register_op`: an op module's parts made into one torch custom op (`torch.ops.dit_cache.<name>`) that checks its
arguments and then runs the Triton launcher or the PyTorch twin, chosen on every call (see `_backend.use_triton`).

Because the ops are registered with `torch.library.custom_op` (with fake implementations and the right
`mutates_args`), `torch.compile`d code calls them as opaque nodes without graph breaks. The backend functions are
looked up by the op's name in `dit_cache.kernels._triton` or `dit_cache.kernels.twins` at call time: a launcher has its
twin's signature, so one `call` adapter serves both, and the Triton namespace is imported (with Triton) only when a
call takes that path.

Every op validates its arguments the same way on both backends, so code that runs on a CPU machine with the twins
raises on a GPU machine only for a GPU-only limit. Outputs are always contiguous.
"""

from __future__ import annotations

import importlib
import inspect
import math
import sys
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, NamedTuple

import torch
from torch import Tensor

from . import _backend

_NS = "dit_cache"


class Route(NamedTuple):
    """What decides one call's backend: the tensors it reads and writes, those written in place, and an op-specific
    reason the kernel can't run (None when it can)."""

    tensors: Sequence[Tensor]
    mutated: Sequence[Tensor] = ()
    unsupported: str | None = None


_TWINS = "dit_cache.kernels.twins"


def _twins() -> ModuleType:
    return sys.modules.get(_TWINS) or importlib.import_module(_TWINS)


def _contiguous(t: Tensor) -> Tensor:
    return t if t.is_contiguous() else t.contiguous()


def _holds_tensors(annotation: object) -> bool:
    """Tensor, Tensor | None and list[Tensor] parameters."""
    if annotation is Tensor:
        return True
    return any(_holds_tensors(arg) for arg in typing.get_args(annotation))


@dataclass(frozen=True)
class RegisteredOp:
    """A registered op. Calling it runs the op: through the custom-op dispatcher (`op`), or, when nothing could take
    the Triton path, directly on the twin (`run_twin`, what the op would do, without the dispatcher's cost)."""

    name: str
    op: Any  # torch._library.custom_ops.CustomOpDef: torch.ops.dit_cache.<name>
    run_twin: Callable[..., Any]
    tensor_args: tuple[int, ...]  # positions of the Tensor and Tensor | None parameters
    list_args: tuple[int, ...]  # positions of the list[Tensor] parameters

    def __call__(self, *args: Any) -> Any:
        return (self.run_twin if self._eager(args) else self.op)(*args)

    def _eager(self, args: Sequence[Any]) -> bool:
        """Skip the custom-op dispatcher (about 40 us a call on CPU, as much as the arithmetic of a small model's
        residual) when nothing could take the Triton path: not inside torch.compile, no CUDA tensor, Triton not
        forced. Same checks, same twin, same result."""
        if torch.compiler.is_compiling() or _backend.requested_backend() == "triton":
            return False
        # anything but tensors goes through the op, whose schema check gives the error
        cpu = [args[i] for i in self.tensor_args] + [t for i in self.list_args for t in args[i]]
        return all(t is None or (isinstance(t, Tensor) and not t.is_cuda) for t in cpu)


def register_op(
    name: str,
    fake: Callable[..., Any],
    *,
    check: Callable[..., None],
    call: Callable[..., Any] | None = None,
    route: Callable[..., Route] | None = None,
    check_values: Callable[..., None] | None = None,
    mutates_args: tuple[str, ...] = (),
    op_name: str | None = None,
) -> RegisteredOp:
    """Register `torch.ops.dit_cache.<op_name or name>` with the schema of `fake`'s annotated signature.

    name: the op's name in `dit_cache.kernels`, `twins` and `_triton` (and in warnings).
    fake: the output's metadata from the inputs' (returns None for an op that only writes in place).
    check: metadata checks (shape, dtype, device), run before both backends and in the fake implementation.
    call: `call(backend, *args)` runs the op with `backend` the module `twins` or `_triton`; by default
        `getattr(backend, name)(*args)`.
    route: the `Route` of a call; by default every tensor argument, written in place when named in mutates_args.
    check_values: checks that read real values or storage (not run on fake tensors).
    """
    signature = inspect.signature(fake, eval_str=True)
    params = list(signature.parameters.values())
    list_args = tuple(i for i, p in enumerate(params) if typing.get_origin(p.annotation) is list)
    tensor_args = tuple(i for i, p in enumerate(params) if _holds_tensors(p.annotation) and i not in list_args)
    mutated_args = {i for i, p in enumerate(params) if p.name in mutates_args}
    returns_none = signature.return_annotation is None
    call = call or (lambda backend, *args: getattr(backend, name)(*args))

    def default_route(*args: Any) -> Route:
        tensors, mutated = [], []
        for i in tensor_args:
            if args[i] is not None:
                tensors.append(args[i])
                if i in mutated_args:
                    mutated.append(args[i])
        for i in list_args:
            tensors += args[i]
            if i in mutated_args:
                mutated += args[i]
        return Route(tensors, mutated)

    route = route or default_route

    def impl(*args: Any) -> Any:
        check(*args)
        if check_values is not None:
            check_values(*args)
        tensors, mutated, unsupported = route(*args)
        if _backend.use_triton(name, tensors, mutated=mutated, supported=unsupported):
            result = call(_backend.triton_module(), *args)
        else:
            result = call(_twins(), *args)
        return None if returns_none else _contiguous(result)

    def run_twin(*args: Any) -> Any:
        """impl where use_triton is known to say no (and to warn nothing): CPU tensors, backend not forced."""
        check(*args)
        if check_values is not None:
            check_values(*args)
        result = call(_twins(), *args)
        return None if returns_none else _contiguous(result)

    def fake_impl(*args: Any) -> Any:
        check(*args)
        return fake(*args)

    impl.__signature__ = signature  # custom_op reads the schema from it
    impl.__name__ = f"{name}_impl"
    op = torch.library.custom_op(f"{_NS}::{op_name or name}", mutates_args=mutates_args)(impl)
    op.register_fake(fake_impl)
    return RegisteredOp(name, op, run_twin, tensor_args, list_args)


# ------------------------------------------------------------------------------------- helpers of several ops


def split_scalar(op: str, name: str, value: object) -> tuple[Tensor | None, float]:
    """A float-or-tensor argument (None meaning 1) as the schema's pair: (the tensor or None, the float)."""
    if value is None:
        return None, 1.0
    if isinstance(value, Tensor):
        return value, 1.0
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError(f"{op}: {name}={value!r} must be finite")
        return None, float(value)
    raise TypeError(f"{op}: {name} must be None, a float or a tensor, got {type(value).__name__}")


def join_scalar(tensor: Tensor | None, value: float) -> Tensor | float | None:
    """The inverse of split_scalar, as the twin and the launcher take it (None for a plain 1)."""
    return tensor if tensor is not None else (None if value == 1.0 else value)


def upcast(t: Tensor) -> Tensor:
    """The twins' arithmetic dtype: float32, or float64 for float64 inputs (so a float64 call is a float64 reference)."""
    return t if t.dtype == torch.float64 else t.float()
