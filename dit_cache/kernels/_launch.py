"""What the Triton launchers of all ops share: the lazy `triton_kernel` decorator, default tile shapes, launch checks
and the second stage of the two-stage reductions.

Importing this module does not import Triton (the op modules import it at import time); the first kernel launch does.
Triton picks interpreted or compiled kernels when `triton.language` is imported (its own helpers such as `tl.sum` are
jitted functions too) and torch imports Triton early, so to run the kernels on CPU tensors (the interpreter; tests
only) `TRITON_INTERPRET=1` must be in the environment when Python starts.

Design, for bandwidth: every kernel reads each input element once and writes each output element once, with
contiguous per-program tiles that compile to 128-bit vector loads when the channel count is a multiple of 8
(16-bit) or 4 (float32); arithmetic is in float32; offsets are 64-bit so tensors above 2**31 elements work.
Reductions (rel-L1, magnitude ratio) are two-stage and atomic-free: a persistent grid of a few programs per SM
grid-strides over the tensor and writes one float32 partial per program, and a one-program second stage sums them,
which keeps the result deterministic run to run.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from . import _backend, _checks
from ._backend import ENV_VAR, MAX_TAYLOR_TENSORS, TRITON_DTYPES

if TYPE_CHECKING:  # bound for real in each kernel's module by TritonKernel, on first launch
    import triton.language as tl

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


class TritonKernel:
    """A `@triton.jit` kernel written in a module that must import without Triton: jitted on first use.

    The kernel's body reads `tl` (triton.language) as a global of its module, where both Triton's compiler and its
    interpreter look names up; that module cannot import Triton itself, so the name is bound there just before
    `triton.jit` runs. Kernel modules use `from __future__ import annotations`: `BLOCK: tl.constexpr` stays a string,
    which Triton reads as a constexpr.
    """

    def __init__(self, fn: Callable[..., None]):
        self.fn = fn
        self.__name__ = fn.__name__
        self._jitted: Any = None

    @property
    def jitted(self) -> Any:
        """The `triton.jit` function (a JITFunction, or an InterpretedFunction under TRITON_INTERPRET=1)."""
        if self._jitted is None:
            triton = _backend.import_triton()
            self.fn.__globals__.setdefault("tl", triton.language)
            self._jitted = triton.jit(self.fn)
        return self._jitted

    def __getitem__(self, grid: tuple[int, ...]) -> Callable[..., Any]:
        return self.jitted[grid]


def triton_kernel(fn: Callable[..., None]) -> TritonKernel:
    """`@triton.jit`, deferred to the first launch (see TritonKernel)."""
    return TritonKernel(fn)


@triton_kernel
def _sum_partials_kernel(part_ptr, out_ptr, n_parts, divisor, WIDTH: tl.constexpr, BLOCK_P: tl.constexpr):
    """out[j] = sum_p part[p, j] / divisor, for j < WIDTH; one program."""
    idx = tl.arange(0, BLOCK_P)
    mask = idx < n_parts
    for j in tl.static_range(WIDTH):
        v = tl.load(part_ptr + idx * WIDTH + j, mask=mask, other=0.0)
        tl.store(out_ptr + j, tl.div_rn(tl.sum(v, axis=0), divisor))


@functools.lru_cache(maxsize=1)
def interpreted() -> bool:
    """True when the kernels are run by Triton's interpreter (TRITON_INTERPRET=1) and so can take CPU tensors.

    Fixed for the process: Triton reads the variable when triton.language is imported."""
    triton = _backend.import_triton()
    return not isinstance(_sum_partials_kernel.jitted, triton.runtime.jit.JITFunction)


def cdiv(n: int, d: int) -> int:
    return (n + d - 1) // d


def next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def pow2_arg(op: str, name: str, value: int | None, default: int) -> int:
    if value is None:
        return default
    if not isinstance(value, int) or value < 1 or value & (value - 1):
        raise ValueError(f"{op}: {name}={value!r} must be a positive power of two (Triton block shapes are)")
    return value


def check_launchable(op: str, **tensors: torch.Tensor) -> torch.device:
    """One device for all; CUDA, or CPU only when the kernels are interpreted; Triton dtypes only."""
    _checks.check_same_device(op, **tensors)
    device = next(iter(tensors.values())).device
    if device.type == "cpu" and not interpreted():
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


def readable(t: torch.Tensor) -> torch.Tensor:
    """Read-only inputs: made contiguous (a copy) when they are not; documented in docs/kernels.md."""
    return t if t.is_contiguous() else t.contiguous()


def writable(op: str, name: str, t: torch.Tensor) -> torch.Tensor:
    if not t.is_contiguous():
        raise ValueError(
            f"{op}: {name} (shape {tuple(t.shape)}, strides {t.stride()}) is written in place and must be contiguous; "
            f"allocate it contiguous (torch.empty_like(x, memory_format=torch.contiguous_format)) or set "
            f"{ENV_VAR}=auto/torch to use the PyTorch twin, which accepts any strides"
        )
    return t


def check_grid(op: str, grid: tuple[int, ...]) -> tuple[int, ...]:
    if grid[0] > MAX_GRID_X or any(g > MAX_GRID_YZ for g in grid[1:]):
        raise ValueError(
            f"{op}: the launch grid {grid} exceeds CUDA's limits ({MAX_GRID_X} programs on axis 0, {MAX_GRID_YZ} on "
            "axes 1-2); the tensor is too large for this kernel: split it along the token dim, or pass larger blocks"
        )
    return grid


@functools.lru_cache(maxsize=16)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def reduce_programs(device: torch.device, n_blocks: int, programs: int | None) -> int:
    if programs is None:
        per = 4 if device.type != "cuda" else _sm_count(device.index or 0) * REDUCE_PROGRAMS_PER_SM
        programs = per
    if not isinstance(programs, int) or programs < 1:
        raise ValueError(f"programs={programs!r} must be a positive int")
    return max(1, min(programs, n_blocks))


class on_device:
    """Launch on the tensors' CUDA device even when another one is current."""

    def __init__(self, device: torch.device):
        self.ctx = torch.cuda.device(device) if device.type == "cuda" else None

    def __enter__(self):
        if self.ctx is not None:
            self.ctx.__enter__()

    def __exit__(self, *exc):
        if self.ctx is not None:
            self.ctx.__exit__(*exc)


def tile(n_rows: int, n_cols: int, block_r: int | None, block_c: int | None, elems: int, max_c: int, op: str):
    bc = pow2_arg(op, "block_c", block_c, min(next_pow2(n_cols), max_c))
    br = pow2_arg(op, "block_r", block_r, min(next_pow2(n_rows), max(1, elems // bc)))
    return br, bc


def flat_grid(op: str, numel: int, block: int | None) -> tuple[int, tuple[int]]:
    """Block and grid of a flat 1-D launch over `numel` elements (`block` None: FLAT_BLOCK)."""
    block = pow2_arg(op, "block", block, FLAT_BLOCK)
    return block, check_grid(op, (cdiv(numel, block),))


def tile_grid(op: str, n_rows: int, n_cols: int, block_r: int | None, block_c: int | None):
    """Tile shape and grid of a 2-D (rows, channels) launch: `(block_r, block_c, grid)`."""
    br, bc = tile(n_rows, n_cols, block_r, block_c, TILE_ELEMS, TILE_MAX_C, op)
    return br, bc, check_grid(op, (cdiv(n_rows, br), cdiv(n_cols, bc)))


def sum_partials(partials: torch.Tensor, n_parts: int, width: int, divisor: float, device: torch.device):
    out = torch.empty((width,) if width > 1 else (), dtype=torch.float32, device=device)
    _sum_partials_kernel[(1,)](partials, out, n_parts, float(divisor), WIDTH=width, BLOCK_P=next_pow2(n_parts))
    return out


def derivative_ptrs(ds: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The Taylor kernels take MAX_TAYLOR_TENSORS pointers: the unused ones repeat D_0 (never read)."""
    return list(ds) + [ds[0]] * (MAX_TAYLOR_TENSORS - len(ds))
