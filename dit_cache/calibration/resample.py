"""Per-step curves indexed by trajectory progress, resampled to another step count.

A profile stores each per-step array on a grid `p` in [0, 1] (0 = first step, 1 = last). `p` is the normalized sigma
`(s_0 - s) / (s_0 - s_end)` when the sigmas are known, else the step position `i / (n - 1)`; both map a 50-step
calibration onto a 30- or 80-step call.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def position_grid(num_steps: int) -> np.ndarray:
    """`i / (n - 1)` for n steps (a single step sits at 0)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if num_steps == 1:
        return np.zeros(1)
    return np.linspace(0.0, 1.0, num_steps)


def sigma_grid(sigmas: Sequence[float]) -> np.ndarray:
    """Normalized sigma `(s_0 - s) / (s_0 - s_end)` of a trajectory's per-step sigmas (strictly monotone)."""
    s = np.asarray(sigmas, dtype=np.float64)
    if s.ndim != 1 or len(s) < 1:
        raise ValueError("sigmas must be a non-empty 1-D sequence")
    if len(s) == 1:
        return np.zeros(1)
    span = s[0] - s[-1]
    if span == 0:
        return position_grid(len(s))
    grid = (s[0] - s) / span
    if np.any(np.diff(grid) <= 0):
        raise ValueError("sigmas must be strictly monotone along the trajectory")
    return grid


def resample(values: Sequence[float], src: Sequence[float], dst: Sequence[float]) -> np.ndarray:
    """Linear interpolation of a per-step curve from grid `src` onto grid `dst` (both ascending in [0, 1])."""
    v = np.asarray(values, dtype=np.float64)
    src_grid = np.asarray(src, dtype=np.float64)
    if v.shape != src_grid.shape:
        raise ValueError(f"{len(v)} values on a grid of {len(src_grid)} points")
    if len(v) == 1:
        return np.full(len(dst), v[0])
    return np.interp(np.asarray(dst, dtype=np.float64), src_grid, v)


def resample_ratios(ratios: Sequence[float], src: Sequence[float], dst: Sequence[float]) -> np.ndarray:
    """Resample per-step ratios `x_k / x_(k-1)` (entry 0 is the ratio into the first step, conventionally 1).

    Interpolates the cumulative log-ratio and differences it, so the product of ratios between two points of the
    trajectory (what MagCache accumulates over a skipped span) is the same at any step count; at the calibrated
    step count the ratios come back unchanged.
    """
    r = np.asarray(ratios, dtype=np.float64)
    if np.any(r <= 0):
        raise ValueError("magnitude ratios must be positive")
    cumulative = np.cumsum(np.log(r))
    cumulative = cumulative - cumulative[0]
    at_dst = resample(cumulative, src, dst)
    out = np.empty(len(at_dst))
    out[0] = 1.0
    out[1:] = np.exp(np.diff(at_dst))
    return out


def resample_increments(increments: Sequence[float | None], src: Sequence[float], dst: Sequence[float]) -> np.ndarray:
    """Per-step changes (entry k: change from step k-1 to k; entry 0 unused) at another step count: the cumulative
    change is interpolated and differenced, so a coarser grid sees proportionally larger per-step changes."""
    steps = np.array([0.0 if v is None or not np.isfinite(v) else v for v in increments], dtype=np.float64)
    steps[0] = 0.0
    at_dst = resample(np.cumsum(steps), src, dst)
    out = np.zeros(len(at_dst))
    out[1:] = np.diff(at_dst)
    return out


def resample_matrix(matrix: np.ndarray, src: Sequence[float], dst: Sequence[float]) -> np.ndarray:
    """Bilinear resampling of a (steps x steps) matrix indexed by the grid on both axes."""
    m = np.asarray(matrix, dtype=np.float64)
    rows = np.stack([np.interp(dst, src, m[:, j]) for j in range(m.shape[1])], axis=1)
    return np.stack([np.interp(dst, src, rows[i, :]) for i in range(rows.shape[0])], axis=0)
