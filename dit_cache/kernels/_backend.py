"""Backend selection for the reuse kernels: the `DIT_CACHE_KERNELS` environment variable and lazy Triton import.

Nothing here imports Triton at import time: `dit_cache.kernels` must import on a bare CPU machine.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import warnings
from types import ModuleType

import torch

ENV_VAR = "DIT_CACHE_KERNELS"
VALID_BACKENDS = ("auto", "triton", "torch")

#: dtypes the Triton kernels load and store (they compute in float32).
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

#: The Triton Taylor kernels take at most this many derivative tensors (order 5); auto uses the twin above that.
MAX_TAYLOR_TENSORS = 6


def taylor_unsupported(count: int) -> str | None:
    """Why the Triton Taylor kernels can't take `count` derivative tensors (for `use_triton`), or None."""
    if count > MAX_TAYLOR_TENSORS:
        return f"{count} derivative tensors (the kernels take at most {MAX_TAYLOR_TENSORS})"
    return None


_warned: set[str] = set()


def requested_backend() -> str:
    """The backend asked for by `DIT_CACHE_KERNELS` (read on every call, so tests and users can flip it).

    Unset or empty means `auto`. Case and surrounding spaces are ignored. Any other value raises ValueError.
    """
    raw = os.environ.get(ENV_VAR, "")
    value = raw.strip().lower()
    if not value:
        return "auto"
    if value not in VALID_BACKENDS:
        raise ValueError(
            f"{ENV_VAR}={raw!r} is not a valid kernel backend; valid values: {', '.join(VALID_BACKENDS)} "
            f"(auto: Triton on CUDA tensors when Triton imports, PyTorch otherwise; triton: always Triton; "
            f"torch: always the PyTorch twins). Unset it or set one of these."
        )
    return value


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """True when `import triton` succeeds. Cached; imports Triton the first time it is asked."""
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        importlib.import_module("triton")
        importlib.import_module("triton.language")
    except Exception:  # a broken install (ABI mismatch, missing libs) counts as absent
        return False
    return True


def _require_triton() -> None:
    if not triton_available():
        raise ImportError(
            f"{ENV_VAR}=triton (or a direct launcher call) needs the `triton` package, which is not importable here; "
            "install it (`pip install triton`, or the `dit-cache[triton]` extra) or set "
            f"{ENV_VAR}=auto/torch to use the PyTorch twins"
        )


def import_triton() -> ModuleType:
    """`triton`, imported on first use. Raises ImportError naming the fix when Triton is not installed."""
    _require_triton()
    return importlib.import_module("triton")


def triton_module() -> ModuleType:
    """`dit_cache.kernels._triton`, every op's launcher under the op's name; imports Triton on first use.

    Raises ImportError naming the fix when Triton is not installed.
    """
    _require_triton()
    return importlib.import_module("dit_cache.kernels._triton")


def warn_once(key: str, message: str) -> None:
    if key in _warned:
        return
    _warned.add(key)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def use_triton(
    op: str, tensors: list[torch.Tensor], mutated: list[torch.Tensor] = (), supported: str | None = None
) -> bool:
    """Decide the backend of one call.

    torch: always False. triton: always True (the launcher then raises a clear error for anything it can't run).
    auto: True only when every tensor is a CUDA tensor, Triton imports, every tensor has a Triton dtype, every
    tensor written in place (`mutated`) is contiguous and `supported` (an op-specific reason the kernel can't run,
    or None) is None; otherwise the PyTorch twin runs, with a one-time RuntimeWarning since the tensors were on
    CUDA. Read-only inputs that are not contiguous still go to Triton, which copies them once (cheaper than the
    several passes of the eager twin).
    """
    mode = requested_backend()
    if mode == "torch":
        return False
    if mode == "triton":
        return True
    if not tensors or not all(t.device.type == "cuda" for t in tensors):
        return False
    reason = supported
    if reason is None:
        bad_dtype = next((t.dtype for t in tensors if t.dtype not in TRITON_DTYPES), None)
        if bad_dtype is not None:
            reason = f"dtype {bad_dtype} (the kernels take float16, bfloat16, float32)"
    if reason is None and not all(t.is_contiguous() for t in mutated):
        reason = "a non-contiguous tensor written in place (allocate it contiguous)"
    if reason is None and not triton_available():
        reason = "Triton is not installed (`pip install triton`)"
    if reason is not None:
        warn_once(
            f"{op}:{reason}",
            f"dit_cache.kernels.{op}: using the PyTorch twin on CUDA because of {reason}; "
            f"set {ENV_VAR}=torch to silence this or fix the cause to get the fused kernel",
        )
        return False
    return True
