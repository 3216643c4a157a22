"""Property tests of the LeMiCa solver and profile resampling."""

import itertools
import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dit_cache.calibration.resample import (
    position_grid,
    resample,
    resample_increments,
    resample_ratios,
    sigma_grid,
)
from dit_cache.schedulers import budget_for_speedup, fixed_interval, solve_lexminimax
from dit_cache.schedulers.lemica import ScheduleError


def brute_force(w: np.ndarray, budget: int):
    n = w.shape[0]
    best = None
    for middle in itertools.combinations(range(1, n - 1), budget - 2):
        path = (0, *middle, n - 1)
        weights = [w[a, b] for a, b in zip(path, path[1:])]
        if not all(math.isfinite(x) for x in weights):
            continue
        key = tuple(sorted(weights, reverse=True))
        if best is None or key < best[0]:
            best = (key, path)
    return best


@st.composite
def graphs(draw):
    n = draw(st.integers(3, 8))
    span = draw(st.integers(2, n))
    values = draw(st.lists(st.integers(0, 6), min_size=n * n, max_size=n * n))  # small ints: many ties
    w = np.full((n, n), np.inf)
    for i in range(n):
        for j in range(i + 1, min(n, i + span + 1)):
            w[i, j] = float(values[i * n + j])
    budget = draw(st.integers(2, n))
    return w, budget


@settings(max_examples=300, deadline=None)
@given(graphs())
def test_lexminimax_equals_brute_force_and_respects_budget(case):
    w, budget = case
    expected = brute_force(w, budget)
    if expected is None:
        try:
            solve_lexminimax(w, budget)
        except ScheduleError:
            return
        raise AssertionError("solver found a path where none exists")
    path = solve_lexminimax(w, budget)
    assert len(path) == budget and path[0] == 0 and path[-1] == w.shape[0] - 1
    assert path == sorted(set(path))
    got = tuple(sorted((w[a, b] for a, b in zip(path, path[1:])), reverse=True))
    assert got == expected[0]


def test_budget_for_speedup_and_intervals():
    assert budget_for_speedup(50, 2.5) == 20
    assert budget_for_speedup(10, 100) == 2
    assert fixed_interval(10, 3) == [0, 3, 6, 9]
    assert fixed_interval(10, 4, last=True) == [0, 4, 8, 9]


@st.composite
def curves(draw):
    n = draw(st.integers(2, 60))
    m = draw(st.integers(2, 80))
    values = draw(st.lists(st.floats(0.5, 2.0), min_size=n, max_size=n))
    return np.array(values), n, m


@settings(max_examples=200, deadline=None)
@given(curves())
def test_resampling_keeps_the_curve(case):
    values, n, m = case
    src, dst = position_grid(n), position_grid(m)
    assert np.all(np.diff(dst) > 0)
    out = resample(values, src, dst)
    assert out[0] == values[0] and math.isclose(out[-1], values[-1])  # endpoints preserved
    assert out.min() >= values.min() - 1e-12 and out.max() <= values.max() + 1e-12
    constant = resample(np.full(n, 1.3), src, dst)
    assert np.allclose(constant, 1.3)  # a constant stays constant
    assert np.allclose(resample(values, src, src), values)  # same grid: unchanged
    ratios = np.concatenate([[1.0], values[1:]])
    assert np.allclose(resample_ratios(ratios, src, src), ratios)
    # the product of ratios over the whole trajectory (MagCache's accumulated ratio) is preserved
    assert math.isclose(np.prod(resample_ratios(ratios, src, dst)), np.prod(ratios), rel_tol=1e-9)
    increments = np.concatenate([[0.0], values[1:]])
    assert math.isclose(resample_increments(increments, src, dst).sum(), increments.sum(), rel_tol=1e-9)


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 60), st.floats(1.0, 8.0))
def test_sigma_grid_is_monotone_from_0_to_1(n, shift):
    u = np.linspace(1.0, 1.0 / n, n)
    sigmas = shift * u / (1 + (shift - 1) * u)
    grid = sigma_grid(sigmas)
    assert grid[0] == 0.0 and math.isclose(grid[-1], 1.0) and np.all(np.diff(grid) > 0)
