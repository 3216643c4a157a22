"""The reuse primitives every policy shares: distance, residual store/apply, magnitude ratio, Taylor forecast,
token scatter.

Each op is a torch custom op (`torch.ops.dit_cache.*`, usable inside `torch.compile`) that dispatches to a fused
Triton kernel on CUDA when Triton imports, else to its PyTorch twin (`dit_cache.kernels.twins`). The environment
variable `DIT_CACHE_KERNELS` (auto | triton | torch) forces either; see docs/kernels.md.

Importing this package needs neither Triton nor a GPU: Triton is imported on the first call that uses it.
"""

from . import twins
from ._backend import ENV_VAR, VALID_BACKENDS, requested_backend, triton_available
from .ops import (
    apply_residual,
    magnitude_ratio,
    rel_l1_parts,
    store_residual,
    taylor_forecast,
    taylor_update,
    token_scatter_gate,
)

__all__ = [
    "ENV_VAR",
    "VALID_BACKENDS",
    "apply_residual",
    "magnitude_ratio",
    "rel_l1_parts",
    "requested_backend",
    "store_residual",
    "taylor_forecast",
    "taylor_update",
    "token_scatter_gate",
    "triton_available",
    "twins",
]
