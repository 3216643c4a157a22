"""What each section of a profile must hold: checked on load, so a damaged or hand-edited profile fails there with
one line that names the entry, the value and the fix, instead of deep inside a policy (numpy's UFuncTypeError on
`coefficients: "abc"`) or not at all (per-step arrays cut short)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

FIX = "recalibrate (dit-cache calibrate) or restore the file"


class SchemaError(ValueError):
    pass


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    return _number(value) and math.isfinite(value)


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fail(where: str, what: str, value: Any) -> None:
    raise SchemaError(f"{where} must be {what}, got {_describe(value)}")


def _check(where: str, value: Any, ok: Callable[[Any], bool], what: str) -> None:
    if not ok(value):
        _fail(where, what, value)


def _per_step(where: str, values: Any, *, positive: bool = False, optional_entries: bool = True) -> int:
    """A per-step list of numbers (None / NaN for steps without a value where allowed); returns its length."""
    if not isinstance(values, list) or not values:
        _fail(where, "a non-empty list with one number per calibrated step", values)
    for i, v in enumerate(values):
        if v is None or (_number(v) and math.isnan(v)):
            if optional_entries:
                continue
        elif _finite(v) and (v > 0 or not positive):
            continue
        _fail(f"{where}[{i}]", "a positive finite number" if positive else "a finite number", v)
    return len(values)


def _grid(where: str, grid: Any) -> int:
    n = _per_step(where, grid, optional_entries=False)
    if n > 1 and not (grid[0] == 0 and grid[-1] == 1 and all(a < b for a, b in zip(grid, grid[1:]))):
        _fail(where, "strictly increasing from 0 (first step) to 1 (last step)", grid)
    return n


POSITIVE_PER_STEP = {"mag_ratio"}  # ratios of norms: log-resampled, so zero or negative values are damage


def check_branches(branches: Any, steps: int | None) -> None:
    _check("branches", branches, lambda b: isinstance(b, dict), "a dict of CFG branch -> per-step lists")
    for name, data in branches.items():
        where = f"branches.{name}"
        _check(where, data, lambda d: isinstance(d, dict), "a dict of per-step lists")
        length = _grid(f"{where}.grid", data["grid"]) if "grid" in data else steps
        for key, values in data.items():
            if key == "grid":
                continue
            n = _per_step(f"{where}.{key}", values, positive=key in POSITIVE_PER_STEP)
            if length is not None and n != length:
                raise SchemaError(
                    f"{where}.{key} has {n} entries where the calibration has {length} steps (one per step)"
                )
            length = n


def _coefficients(value: Any) -> bool:
    return isinstance(value, list) and 1 <= len(value) <= 10 and all(_finite(v) for v in value)


def _schedules(value: Any, num_steps: int | None) -> bool:
    if not isinstance(value, dict):
        return False
    for budget, steps in value.items():
        if not (str(budget).isdigit() and isinstance(steps, list) and steps and steps[0] == 0):
            return False
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in steps) or steps != sorted(set(steps)):
            return False
        if num_steps is not None and steps[-1] >= num_steps:
            return False
    return True


def _run(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and _finite(value[0])
        and 0 <= value[0] <= 1
        and (value[1] is None or (_finite(value[1]) and value[1] >= 0))
    )


POLICY_FIELDS: dict[str, dict[str, tuple[Callable[[Any], bool], str]]] = {
    "teacache": {
        "coefficients": (_coefficients, "a list of 1-10 finite numbers (the rescaling polynomial, highest power first)"),
        "threshold": (lambda v: v is None or (_finite(v) and v >= 0), "a finite number >= 0"),
        "warmup": (lambda v: v is None or (_finite(v) and 0 <= v < 1), "a fraction of the steps in [0, 1)"),
        "threshold_speedups": (
            lambda v: v is None or (isinstance(v, dict) and all(_finite(s) and s >= 1 for s in v.values())),
            "a dict of threshold -> speedup (numbers >= 1)",
        ),
    },
    "magcache": {
        "threshold": (lambda v: v is None or (_finite(v) and v >= 0), "a finite number >= 0"),
        "max_skip": (lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 0),
                     "an integer >= 0"),
        "retention": (lambda v: v is None or (_finite(v) and 0 <= v < 1), "a fraction of the steps in [0, 1)"),
    },
    "lemica": {
        "num_steps": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "an integer >= 1"),
    },
    "auto": {
        "candidates": (lambda v: isinstance(v, list) and v and all(isinstance(c, str) for c in v),
                       "a non-empty list of candidate specs"),
        "targets": (lambda v: isinstance(v, list) and v and all(_finite(t) and t > 1 for t in v),
                    "a non-empty list of speedups above 1"),
        "runs": (lambda v: isinstance(v, dict) and all(str(k).isdigit() and isinstance(r, dict) and all(
                     isinstance(x, str) or _run(x) for x in r.values()) for k, r in v.items()),
                 "a dict of job index -> {candidate@target: [compute fraction, error or null] or a reason}"),
    },
}  # fmt: skip


def check_policies(policies: Any) -> None:
    _check("policies", policies, lambda p: isinstance(p, dict), "a dict of policy -> fitted numbers")
    for name, data in policies.items():
        _check(f"policies.{name}", data, lambda d: isinstance(d, dict), "a dict")
        for key, (ok, what) in POLICY_FIELDS.get(name, {}).items():
            if key in data:
                _check(f"policies.{name}.{key}", data[key], ok, what)
    if "teacache" in policies and "coefficients" not in policies["teacache"]:
        raise SchemaError("policies.teacache has no coefficients (the rescaling polynomial)")
    lemica = policies.get("lemica")
    if lemica and "schedules" in lemica:
        num_steps = lemica.get("num_steps")
        _check("policies.lemica.schedules", lemica["schedules"], lambda v: _schedules(v, num_steps),
               f"a dict of budget -> sorted computed steps starting at 0, below num_steps={num_steps}")  # fmt: skip


def check_records(records: Any, branches: dict) -> None:
    _check("records", records, lambda r: isinstance(r, list), "a list of per-prompt records")
    for i, record in enumerate(records):
        where = f"records[{i}]"
        _check(where, record, lambda r: isinstance(r, dict) and isinstance(r.get("branches"), dict),
               "a dict with the record's per-branch lists under 'branches'")  # fmt: skip
        _check(f"{where}.index", record.get("index"), lambda v: isinstance(v, int) and not isinstance(v, bool),
               "an integer")  # fmt: skip
        for name, data in record["branches"].items():
            grid = branches.get(name, {}).get("grid")
            length = len(grid) if isinstance(grid, list) else None
            _check(f"{where}.branches.{name}", data, lambda d: isinstance(d, dict), "a dict of per-step lists")
            for key, values in data.items():
                if not isinstance(values, list):
                    continue  # scalars a recorder may add
                n = _per_step(f"{where}.branches.{name}.{key}", values)
                if length is not None and n != length:
                    raise SchemaError(
                        f"{where}.branches.{name}.{key} has {n} entries where the branch's grid has {length} steps"
                    )


def check_arrays(arrays: dict, branches: dict, policies: dict) -> None:
    """Shapes of the large arrays: LeMiCa edges are (steps x steps), per-branch pair tables too."""
    num_steps = (policies.get("lemica") or {}).get("num_steps")
    for key in ("lemica/edges", "lemica/proxy_edges", "lemica/edges_forecast1", "lemica/edges_forecast2"):
        if key in arrays:
            shape = tuple(arrays[key].shape)
            if len(shape) != 2 or shape[0] != shape[1] or (num_steps is not None and shape[0] != num_steps):
                raise SchemaError(
                    f"arrays[{key!r}] must be a ({num_steps} x {num_steps}) matrix (one row and column per "
                    f"calibrated step), got shape {shape}"
                )
    for name, data in branches.items():
        grid = data.get("grid")
        for kind in ("fb_pairs", "res_pairs"):
            key = f"{name}/{kind}"
            if key in arrays and isinstance(grid, list):
                shape = tuple(arrays[key].shape)
                if shape != (len(grid), len(grid)):
                    raise SchemaError(
                        f"arrays[{key!r}] must be ({len(grid)} x {len(grid)}) like the branch's grid, got shape {shape}"
                    )


def check_profile(data: dict, arrays: dict | None = None) -> None:
    """Raise SchemaError for the first entry of a profile's sections that has the wrong type or length."""
    _check("fingerprint", data.get("fingerprint"), lambda f: isinstance(f, dict) and isinstance(f.get("class"), str),
           "a dict with the model's 'class'")  # fmt: skip
    sampler = data.get("sampler", {})
    _check("sampler", sampler, lambda s: isinstance(s, dict), "a dict")
    steps = sampler.get("steps")
    _check("sampler.steps", steps, lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1),
           "an integer >= 1")  # fmt: skip
    _check("grid_kind", data.get("grid_kind", "position"), lambda v: v in ("sigma", "position"),
           "'sigma' or 'position'")  # fmt: skip
    _check("prompts", data.get("prompts", 0), lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
           "an integer >= 0")  # fmt: skip
    branches = data.get("branches", {})
    check_branches(branches, steps)
    check_policies(data.get("policies", {}))
    check_records(data.get("records", []), branches)
    if arrays:
        check_arrays(arrays, branches, data.get("policies", {}))
