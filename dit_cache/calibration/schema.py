"""The checks a profile's entries are held to, one line each: a damaged or hand-edited profile fails on load with
one message that names the entry, the value and the fix, instead of deep inside a policy (numpy's UFuncTypeError on
`coefficients: "abc"`) or not at all (per-step arrays cut short). The sections that use them: sections.py."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

FIX = "recalibrate (dit-cache calibrate) or restore the file"


class SchemaError(ValueError):
    pass


def number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def finite(value: Any) -> bool:
    return number(value) and math.isfinite(value)


def integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def fail(where: str, what: str, value: Any) -> None:
    raise SchemaError(f"{where} must be {what}, got {_describe(value)}")


def check(where: str, value: Any, ok: Callable[[Any], bool], what: str) -> None:
    if not ok(value):
        fail(where, what, value)


def per_step(where: str, values: Any, *, positive: bool = False, optional_entries: bool = True) -> int:
    """A per-step list of numbers (None / NaN for steps without a value where allowed); returns its length."""
    if not isinstance(values, list) or not values:
        fail(where, "a non-empty list with one number per calibrated step", values)
    for i, v in enumerate(values):
        if v is None or (number(v) and math.isnan(v)):
            if optional_entries:
                continue
        elif finite(v) and (v > 0 or not positive):
            continue
        fail(f"{where}[{i}]", "a positive finite number" if positive else "a finite number", v)
    return len(values)


def grid_length(where: str, grid: Any) -> int:
    """A step grid: strictly increasing from 0 (first step) to 1 (last step); returns its length."""
    n = per_step(where, grid, optional_entries=False)
    if n > 1 and not (grid[0] == 0 and grid[-1] == 1 and all(a < b for a, b in zip(grid, grid[1:]))):
        fail(where, "strictly increasing from 0 (first step) to 1 (last step)", grid)
    return n


def coefficients(value: Any) -> bool:
    return isinstance(value, list) and 1 <= len(value) <= 10 and all(finite(v) for v in value)


def schedules(value: Any, num_steps: int | None) -> bool:
    """budget -> sorted computed steps starting at 0, below `num_steps`."""
    if not isinstance(value, dict):
        return False
    for budget, steps in value.items():
        if not (str(budget).isdigit() and isinstance(steps, list) and steps and steps[0] == 0):
            return False
        if not all(integer(s) for s in steps) or steps != sorted(set(steps)):
            return False
        if num_steps is not None and steps[-1] >= num_steps:
            return False
    return True


def run_result(value: Any) -> bool:
    """A candidate run: [compute fraction in 0..1, error >= 0 or None]."""
    return (
        isinstance(value, list)
        and len(value) == 2
        and finite(value[0])
        and 0 <= value[0] <= 1
        and (value[1] is None or (finite(value[1]) and value[1] >= 0))
    )
