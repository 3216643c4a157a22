"""LeMiCa's schedule solver: the path from the first to the last step with exactly B computed steps whose edge weights,
sorted in descending order, are lexicographically smallest (it bounds the worst cached segment first, then the
next worst, ...).

Edge (i, j) means "compute steps i and j, reuse the cache in between"; its weight is the error that segment alone
causes. The dynamic program over (node, nodes used) keeps, per state, the lexicographically smallest sorted vector;
this is exact because adding the same edges to two sorted vectors preserves their lexicographic order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class ScheduleError(ValueError):
    pass


def _merge(sorted_desc: tuple[float, ...], weight: float) -> tuple[float, ...]:
    out = list(sorted_desc)
    k = 0
    while k < len(out) and out[k] >= weight:
        k += 1
    out.insert(k, weight)
    return tuple(out)


def solve_lexminimax(weights: Sequence[Sequence[float]] | np.ndarray, budget: int) -> list[int]:
    """Steps to compute (always 0 and the last) for a trajectory of len(weights) steps with `budget` computed steps.

    weights[i][j] (i < j) is the cost of computing i and j and reusing in between; inf or NaN forbids the edge.
    Raises ScheduleError when no path with exactly `budget` steps exists.
    """
    w = np.asarray(weights, dtype=np.float64)
    n = w.shape[0]
    if w.ndim != 2 or w.shape[1] != n:
        raise ScheduleError(f"edge weights must be a square matrix, got shape {w.shape}")
    if n == 1:
        if budget != 1:
            raise ScheduleError(f"a 1-step trajectory computes exactly 1 step, asked for {budget}")
        return [0]
    if not 2 <= budget <= n:
        raise ScheduleError(f"budget must be between 2 (first and last step) and {n} computed steps, got {budget}")
    allowed = np.isfinite(w)
    # best[k][v]: (sorted weights, predecessor) of the best path 0 -> v through k + 1 computed steps
    best: list[dict[int, tuple[tuple[float, ...], int]]] = [{0: ((), -1)}]
    for k in range(1, budget):
        layer: dict[int, tuple[tuple[float, ...], int]] = {}
        for u, (vector, _) in best[k - 1].items():
            # the remaining budget - 1 - k steps must fit after v, before the last step
            for v in range(u + 1, n):
                if not allowed[u, v]:
                    continue
                if (v == n - 1) != (k == budget - 1):
                    continue
                candidate = _merge(vector, float(w[u, v]))
                if v not in layer or candidate < layer[v][0]:
                    layer[v] = (candidate, u)
        best.append(layer)
    if n - 1 not in best[budget - 1]:
        raise ScheduleError(
            f"no schedule computes exactly {budget} of {n} steps within the allowed segment lengths; "
            "ask for a smaller speedup or calibrate LeMiCa edges with a longer --lemica-max-span"
        )
    path, v = [], n - 1
    for k in range(budget - 1, -1, -1):
        path.append(v)
        v = best[k][v][1]
    return path[::-1]


def budget_for_speedup(num_steps: int, speedup: float) -> int:
    """Computed steps for a target speedup: round(num_steps / speedup), at least the first and last step."""
    if speedup < 1:
        raise ScheduleError(f"speedup must be >= 1, got {speedup}")
    return min(num_steps, max(2, round(num_steps / speedup)))
