"""The reuse primitives every policy shares: distance, residual store/apply, magnitude ratio, Taylor forecast,
token scatter. Each op dispatches to a Triton kernel on CUDA when available, else to its PyTorch twin."""

from .twins import (
    apply_residual,
    magnitude_ratio,
    rel_l1_parts,
    store_residual,
    taylor_forecast,
    taylor_update,
    token_scatter_gate,
)

__all__ = [
    "apply_residual",
    "magnitude_ratio",
    "rel_l1_parts",
    "store_residual",
    "taylor_forecast",
    "taylor_update",
    "token_scatter_gate",
]
