"""Shared helpers of the benchmark scripts: timing, mid-size random models, tables."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


def timed(fn: Callable[[], object], runs: int = 3, warmup: int = 1) -> tuple[float, list[float]]:
    """Median wall time of `runs` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def stopwatch(fn: Callable[[], object]) -> float:
    """Seconds one call of `fn` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bracketed(time_uncached: Callable[[], float], time_cached: Callable[[], float], runs: int) -> dict:
    """Times `runs` cached runs, each between two uncached runs (u c u c ... u; each callable returns the seconds of
    one run). On a shared machine the load drifts over seconds to minutes: comparing each cached run with the mean
    of the two uncached runs around it cancels a drift that is linear over the three, where medians of separate runs
    do not. Returns the run times, `speedup` (the median of the per-run ratios), the median times and `noise`, the
    spread (max - min) / median of those ratios: speedups differ meaningfully only beyond it."""
    uncached, cached = [time_uncached()], []
    for _ in range(runs):
        cached.append(time_cached())
        uncached.append(time_uncached())
    ratios = [(uncached[i] + uncached[i + 1]) / 2 / cached[i] for i in range(runs)]
    speedup = statistics.median(ratios)
    return {
        "uncached_s": statistics.median(uncached),
        "seconds": statistics.median(cached),
        "speedup": speedup,
        "noise": (max(ratios) - min(ratios)) / speedup,
        "uncached_times": uncached,
        "cached_times": cached,
    }


def table(rows: list[dict], columns: list[str]) -> str:
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |" for row in cells]
    return "\n".join(lines)


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def write_json(path: str | Path, data) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str))


def machine() -> str:
    import platform

    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def calibration_references(model: str, count: int, seed: int):
    """A zoo model's pipeline on its first `count` calibration prompts at `seed`, for scripts that score schedules
    on calibration prompts only: (pipe, settings, jobs, generate, references), `generate(prompt, seed)` giving the
    decoded output as a numpy array and `references` the uncached outputs of `jobs`."""
    import numpy as np

    from dit_cache.eval import zoo

    torch.set_num_threads(1)
    pipe = zoo.load(model)
    pipe.set_progress_bar_config(disable=True)
    settings = zoo.settings(model)
    jobs = [(p, seed) for p in zoo.calibration_prompts(model)[:count]]

    def generate(prompt: str, seed: int) -> np.ndarray:
        out = pipe(prompt=prompt, generator=torch.Generator().manual_seed(seed), output_type="np", **settings)
        return np.asarray(out.frames[0] if hasattr(out, "frames") else out.images[0])

    return pipe, settings, jobs, generate, [generate(*job) for job in jobs]
