"""The Triton namespace: every op's launcher under the op's name, the ops' kernels and the shared launch helpers.

Imported lazily (by `_backend.triton_module()` when a call goes to Triton, or by the tests and the benchmark):
importing this module imports Triton and jits every kernel. To run the kernels on CPU tensors (the interpreter;
tests only) `TRITON_INTERPRET=1` must be in the environment when Python starts (see `_launch`).

Each launcher has the signature of its PyTorch twin plus keyword-only tuning knobs, checks its arguments (shapes,
dtypes, devices, contiguity, launch limits) and raises a clear error for anything it can't run. Read-only inputs that
are not contiguous are copied with `.contiguous()` (an input-sized temporary: pass contiguous tensors to avoid it);
tensors written in place must be contiguous or the launcher raises.
"""

import triton  # noqa: F401  (this module is the one that needs Triton)

from . import _launch
from ._launch import (  # noqa: F401  (tile defaults and limits, read by the tests and the benchmark)
    FLAT_BLOCK,
    FLAT_WARPS,
    MAX_GRID_X,
    MAX_GRID_YZ,
    NORM_MAX_C,
    NORM_TILE_ELEMS,
    REDUCE_BLOCK,
    REDUCE_PROGRAMS_PER_SM,
    REDUCE_WARPS,
    TILE_ELEMS,
    TILE_MAX_C,
    TILE_WARPS,
)
from .ops import OPS

# launch helpers under the names the tests use
_next_pow2 = _launch.next_pow2
_reduce_programs = _launch.reduce_programs
_tile = _launch.tile
_check_grid = _launch.check_grid

_sum_partials_kernel = _launch._sum_partials_kernel.jitted
for _module in OPS:
    globals()[_module.NAME] = _module.launch
    for _name, _value in list(vars(_module).items()):  # jitting binds `tl` in the module
        if isinstance(_value, _launch.TritonKernel):
            globals()[_name] = _value.jitted

#: True when the kernels were defined under TRITON_INTERPRET=1 and so can take CPU tensors.
INTERPRETED = _launch.interpreted()
