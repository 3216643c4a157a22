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


def sigma_grid(sigmas: Sequence[float], reference: tuple[float, float] | None = None) -> np.ndarray:
    """Normalized sigma `(s_0 - s) / (s_0 - s_end)` of a trajectory's per-step sigmas (strictly monotone).

    reference: (s_0, s_end) of another trajectory (a profile's calibration run) to place these sigmas on its grid:
    the same sigma then gets the same coordinate at any step count. A call with fewer steps ends at a larger sigma
    than a calibration with more (its last coordinate is below 1), and one with more steps goes past it (above 1).
    Without it, each trajectory is stretched onto [0, 1] by its own ends.
    """
    s = np.asarray(sigmas, dtype=np.float64)
    if s.ndim != 1 or len(s) < 1:
        raise ValueError("sigmas must be a non-empty 1-D sequence")
    first, last = reference if reference is not None else (s[0], s[-1])
    if len(s) == 1 and reference is None:
        return np.zeros(1)
    span = first - last
    if span == 0:
        return position_grid(len(s))
    grid = (first - s) / span
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


def _cumulative(values: np.ndarray, src: Sequence[float], dst: Sequence[float]) -> np.ndarray:
    """A cumulative curve at `dst`: interpolated inside the calibrated range, continued at the rate of its last
    (first) stretch beyond it (a call that goes past the calibration's last sigma keeps changing at that rate)."""
    src_grid = np.asarray(src, dtype=np.float64)
    at = resample(values, src_grid, dst)
    if len(values) < 2:
        return at
    d = np.asarray(dst, dtype=np.float64)
    slope_end = (values[-1] - values[-2]) / (src_grid[-1] - src_grid[-2])
    slope_start = (values[1] - values[0]) / (src_grid[1] - src_grid[0])
    after, before = d > src_grid[-1], d < src_grid[0]
    at[after] = values[-1] + slope_end * (d[after] - src_grid[-1])
    at[before] = values[0] + slope_start * (d[before] - src_grid[0])
    return at


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
    at_dst = _cumulative(cumulative, src, dst)
    out = np.empty(len(at_dst))
    out[0] = 1.0
    out[1:] = np.exp(np.diff(at_dst))
    return out


def resample_increments(increments: Sequence[float | None], src: Sequence[float], dst: Sequence[float]) -> np.ndarray:
    """Per-step changes (entry k: change from step k-1 to k; entry 0 unused) at another step count: the cumulative
    change is interpolated and differenced, so a coarser grid sees proportionally larger per-step changes."""
    steps = np.array([0.0 if v is None or not np.isfinite(v) else v for v in increments], dtype=np.float64)
    steps[0] = 0.0
    at_dst = _cumulative(np.cumsum(steps), src, dst)
    out = np.zeros(len(at_dst))
    out[1:] = np.diff(at_dst)
    return out


def resample_matrix(matrix: np.ndarray, src: Sequence[float], dst: Sequence[float]) -> np.ndarray:
    """Bilinear resampling of a (steps x steps) matrix indexed by the grid on both axes."""
    m = np.asarray(matrix, dtype=np.float64)
    rows = np.stack([np.interp(dst, src, m[:, j]) for j in range(m.shape[1])], axis=1)
    return np.stack([np.interp(dst, src, rows[i, :]) for i in range(rows.shape[0])], axis=0)


def resample_edges(weights: np.ndarray, src: Sequence[float], dst: Sequence[float]) -> np.ndarray:
    """LeMiCa edge weights (steps x steps; (i, j): compute i and j, reuse in between) at another step count.

    An edge is placed by where its segment starts on the grid, p = grid[i], and how far its reuse reaches, r =
    grid[j - 1] - grid[i] (0 for adjacent steps: nothing reused, no error, on any grid). Each calibrated start gives
    the weight as a function of r; a call's edge is interpolated linearly in r, then between the two neighbouring
    starts. Reaches beyond what was calibrated (`--lemica-max-span`, or a call with fewer, longer steps) extend the
    last calibrated stretch linearly (an estimate: calibrate a longer span to measure it). At the calibrated grid
    the calibrated weights come back unchanged. Returns a (len(dst) x len(dst)) matrix, inf below the diagonal.
    """
    w = np.asarray(weights, dtype=np.float64)
    g = np.asarray(src, dtype=np.float64)
    d = np.asarray(dst, dtype=np.float64)
    n_src, n = len(g), len(d)
    if w.shape != (n_src, n_src):
        raise ValueError(f"edge weights of shape {w.shape} on a grid of {n_src} points")
    curves, slopes = [], []  # per calibrated start: (reaches, weights); the slope beyond the last reach
    for i in range(max(1, n_src - 1)):
        reaches, values = [0.0], [0.0]
        for j in range(i + 2, n_src):
            if np.isfinite(w[i, j]):
                reaches.append(g[j - 1] - g[i])
                values.append(max(0.0, w[i, j]))
        curves.append((np.array(reaches), np.array(values)))
        measured = len(reaches) >= 2 and reaches[-1] > reaches[-2]
        slopes.append(max(0.0, (values[-1] - values[-2]) / (reaches[-1] - reaches[-2])) if measured else None)
    # a start with no stretch to measure (near the end) takes the slope of the last start before it that has one
    known = [s for s in slopes if s is not None]
    previous = known[0] if known else 0.0
    for i, s in enumerate(slopes):
        slopes[i] = previous = s if s is not None else previous

    def at(i: int, reach: float) -> float:
        i = min(i, len(curves) - 1)
        reaches, values = curves[i]
        if reach <= reaches[-1]:
            return float(np.interp(reach, reaches, values))
        return float(values[-1] + slopes[i] * (reach - reaches[-1]))

    starts = g[: len(curves)]
    out = np.full((n, n), np.inf)
    for a in range(n - 1):
        out[a, a + 1] = 0.0
        k = int(np.clip(np.searchsorted(starts, d[a], side="right") - 1, 0, len(starts) - 1))
        t = 0.0 if k + 1 >= len(starts) else float(np.clip((d[a] - starts[k]) / (starts[k + 1] - starts[k]), 0, 1))
        for b in range(a + 2, n):
            reach = d[b - 1] - d[a]
            out[a, b] = (1 - t) * at(k, reach) + (t * at(k + 1, reach) if t > 0 else 0.0)
    return out
