"""The reuse primitives every policy shares: distance, residual store/apply, magnitude ratio, Taylor forecast,
token scatter.

Each op is a torch custom op (`torch.ops.dit_cache.*`, usable inside `torch.compile`) that dispatches to a fused
Triton kernel on CUDA when Triton imports, else to its PyTorch twin (`dit_cache.kernels.twins`). The environment
variable `DIT_CACHE_KERNELS` (auto | triton | torch) forces either; see docs/kernels.md. Each op lives in one module,
`dit_cache/kernels/_ops/<name>.py`, found by `ops.OPS`; the public functions here are built from that list.

Importing this package needs neither Triton nor a GPU: Triton is imported on the first call that uses it.
"""

from . import twins
from ._backend import ENV_VAR, VALID_BACKENDS, requested_backend, triton_available
from .ops import OPS

for _module in OPS:
    globals()[_module.NAME] = getattr(_module, _module.NAME)

__all__ = ["ENV_VAR", "VALID_BACKENDS", "requested_backend", "triton_available", "twins"]
__all__ += [module.NAME for module in OPS]
__all__.sort()
