"""What `dit-cache eval` compares: dit_cache policies, the uniform every-k-th-step baseline, and the peers
(diffusers' built-in caches, cache-dit), each at a speedup target or an explicit setting.

A method spec is `NAME`, `NAME:key=value,key=value` (explicit options) or, with targets, NAME at each target:
dit_cache policies with a profile use `speedup=`; peers and interval policies are tuned to the target compute
fraction on the first sample (their own knobs, measured work).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import api
from ..config import config_class, policy_names
from ..config import parse_policy_spec as parse_spec
from ..policies import policy_info
from ..policies.schedule import Schedule
from .counting import WorkCounter

BASELINES = ("uniform",)


def user_policies() -> list[str]:
    """The policy names a user can apply or evaluate (internal ones, the calibration recorder, are never offered)."""
    return policy_names()


def needs_profile(name: str) -> bool:
    """Whether evaluating policy `name` (at a target, or at all) needs a profile: its `needs_profile` or its
    `speedup_by` capability."""
    info = policy_info(name)
    return info.needs_profile in ("required", "recorded", "candidates") or info.speedup_by == "profile"


@dataclass
class Method:
    """One row family of the evaluation: how to switch a method on and off and read its compute fraction."""

    key: str  # unique in a results file, e.g. "teacache@2" or "peer:diffusers-fbcache@2"
    name: str
    family: str  # "dit_cache", "baseline" or "peer"
    target: float | None = None
    options: dict = field(default_factory=dict)
    available: bool = True
    reason: str = ""
    on: Callable[[Any, dict], None] | None = None
    off: Callable[[Any], None] | None = None
    counted: bool = False  # compute fraction from WorkCounter (peers) rather than dit_cache.stats

    def label(self) -> str:
        return self.key


def uniform_steps(num_steps: int, target: float) -> tuple[int, ...]:
    """Evenly spaced computed steps (first and last included) for a compute share of 1 / target."""
    budget = min(num_steps, max(2, round(num_steps / target)))
    return tuple(sorted({int(round(x)) for x in np.linspace(0, num_steps - 1, budget)}))


def ours(spec: str, target: float | None, num_steps: int, profile: Any) -> Method:
    name, options = parse_spec(spec)
    if name in BASELINES:
        if target is None and "steps" not in options:
            raise ValueError("the uniform baseline needs a target (--targets) or steps=(...)")
        steps = options.get("steps") or uniform_steps(num_steps, target)
        key = f"uniform@{target:g}" if target else spec
        return Method(key, name, "baseline", target, {"steps": tuple(steps)}, on=_apply_schedule, off=api.remove)
    if name not in user_policies():
        raise ValueError(
            f"unknown policy {name!r}{f' (in {spec!r})' if spec != name else ''}; dit_cache policies: "
            f"{', '.join(user_policies())}; baselines: uniform"
        )
    _check_options(spec, name, options)
    key = spec if target is None else f"{name}@{target:g}"
    method = Method(key, name, "dit_cache", target, dict(options), on=_apply_policy, off=api.remove)
    if target is not None:
        fields = {f for f in config_class(name).__dataclass_fields__}
        if policy_info(name).speedup_by == "interval":
            interval = round(target)
            if not math.isclose(interval, target, abs_tol=0.01):
                method.available, method.reason = (
                    False,
                    f"{name} has integer intervals only; no setting gives {target:g}x",
                )
            method.options["interval"] = interval
        elif "speedup" in fields:
            method.options["speedup"] = target
            if "profile" in fields and profile is not None and "profile" not in options:
                method.options["profile"] = profile
        else:
            method.available, method.reason = False, f"{name} has no speedup target"
    if method.available:
        try:  # a target out of a policy's reach (CFG reuse at 3x) is a skipped row with the reason, not a crash
            config_class(name)(**method.options)
        except ValueError as e:
            if target is None:  # explicit options the user wrote: a mistake to fix now
                raise ValueError(f"{spec!r}: {e}") from None
            method.available, method.reason = False, str(e)
    return method


def _check_options(spec: str, name: str, options: dict) -> None:
    """Unknown option names are a typo to fix, not a row to skip."""
    import dataclasses
    import difflib

    fields = [f.name for f in dataclasses.fields(config_class(name))]
    for key in options:
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ValueError(f"{name} has no option {key!r} (in {spec!r}); {hint}its options: {', '.join(fields)}")


def _apply_policy(pipe, options: dict) -> None:
    name = options.pop("__name__")
    api.apply(pipe, name, **options)


def _apply_schedule(pipe, options: dict) -> None:
    api.apply(pipe, Schedule(steps=options["steps"]))


def switch_on(method: Method, pipe) -> None:
    options = dict(method.options)
    if method.family == "dit_cache":
        options["__name__"] = method.name
    method.on(pipe, options)


def compute_fraction(method: Method, pipe, counter: WorkCounter | None, full_calls: int | None) -> float:
    if method.counted:
        return counter.calls / full_calls if full_calls else float("nan")
    return api.stats(pipe).compute_fraction
