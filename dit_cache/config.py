"""One frozen dataclass per policy, validated on construction, with a versioned JSON round trip.

`dit_cache.apply(pipe, "teacache", threshold=0.3)` and `dit_cache.apply(pipe, dit_cache.TeaCache(threshold=0.3))`
are the same thing: names map to these classes through `config_class(name)`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

CONFIG_FORMAT_VERSION = 1

_CONFIGS: dict[str, type[PolicyConfig]] = {}


def register_config(name: str):
    """Class decorator: make `name` select this config class in `apply(pipe, name, ...)`."""

    def wrap(cls: type[PolicyConfig]) -> type[PolicyConfig]:
        cls.policy_name = name
        _CONFIGS[name] = cls
        return cls

    return wrap


def policy_names() -> list[str]:
    return sorted(_CONFIGS)


def config_class(name: str) -> type[PolicyConfig]:
    key = name.lower().strip() if isinstance(name, str) else name
    if key not in _CONFIGS:
        raise ValueError(f"unknown policy {name!r}; valid policies: {', '.join(policy_names())}")
    return _CONFIGS[key]


def make_config(policy: str | PolicyConfig, **options: Any) -> PolicyConfig:
    """A config from a name and options, or a config object (with options overriding its fields)."""
    if isinstance(policy, PolicyConfig):
        return dataclasses.replace(policy, **options) if options else policy
    if not isinstance(policy, str):
        raise TypeError(
            f"policy must be a name ({', '.join(policy_names())}) or a config object such as dit_cache.TeaCache(), "
            f"got {type(policy).__name__}"
        )
    cls = config_class(policy)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for policy {cls.policy_name!r}; "
            f"valid options: {', '.join(sorted(known))}"
        )
    return cls(**options)


# ---------------------------------------------------------------------------------------------- validation helpers
def _check_number(policy: str, name: str, value: Any, *, low: float = 0.0, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < low:
        raise ValueError(f"{policy}: {name} must be a finite number >= {low}, got {value!r}")


def _check_int(policy: str, name: str, value: Any, *, low: int, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{policy}: {name} must be an integer >= {low}, got {value!r}")


def _check_fraction(policy: str, name: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{policy}: {name} must be a fraction in [0, 1), got {value!r}")


def _check_speedup(policy: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 1.0:
        raise ValueError(
            f"{policy}: speedup must be a number >= 1 (the ratio of uncached to cached compute), got {value!r}"
        )


@dataclass(frozen=True)
class PolicyConfig:
    """Base of all policy configs. `profile` is a path, a built-in profile name or a `Profile` object."""

    policy_name: ClassVar[str] = ""

    def to_dict(self) -> dict:
        options = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "profile" and value is not None and not isinstance(value, str):
                source = getattr(value, "source", None)
                if not source:
                    raise ValueError(
                        f"{self.policy_name}: cannot serialize a profile object without a source path; "
                        "save it first (profile.save(path)) and pass the path"
                    )
                value = source
            options[f.name] = list(value) if isinstance(value, tuple) else value
        return {"type": self.policy_name, "version": CONFIG_FORMAT_VERSION, "options": options}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @staticmethod
    def from_dict(data: dict) -> PolicyConfig:
        if not isinstance(data, dict) or "type" not in data:
            raise ValueError(f"not a dit_cache policy config: {data!r}")
        version = data.get("version")
        if version != CONFIG_FORMAT_VERSION:
            raise ValueError(
                f"policy config format version {version!r} is not supported (this dit_cache reads version "
                f"{CONFIG_FORMAT_VERSION})"
            )
        cls = config_class(data["type"])
        options = dict(data.get("options", {}))
        for f in dataclasses.fields(cls):
            if isinstance(options.get(f.name), list):
                options[f.name] = tuple(options[f.name])
        return cls(**options)

    @staticmethod
    def from_json(text: str) -> PolicyConfig:
        return PolicyConfig.from_dict(json.loads(text))


@register_config("teacache")
@dataclass(frozen=True)
class TeaCache(PolicyConfig):
    """TeaCache (Liu et al. 2024): skip the block stack while the accumulated, polynomial-rescaled change of a cheap
    timestep-modulated indicator stays under `threshold`; reuse the last block-stack residual.

    threshold: accumulated rescaled rel-L1 change before a recompute (None: the profile's default, else 0.1 with the
        identity rescaling). max_skip: cap on consecutive skipped steps (None: no cap).
    """

    threshold: float | None = None
    max_skip: int | None = None
    profile: Any = None
    speedup: float | None = None

    def __post_init__(self):
        _check_number("teacache", "threshold", self.threshold)
        _check_int("teacache", "max_skip", self.max_skip, low=0)
        _check_speedup("teacache", self.speedup)


@register_config("magcache")
@dataclass(frozen=True)
class MagCache(PolicyConfig):
    """MagCache (Ma et al. 2025): skip while the error accumulated from the calibrated magnitude ratios of the
    residual stays under `threshold`, at most `max_skip` steps in a row, never in the first `retention` fraction.
    """

    threshold: float | None = None
    max_skip: int | None = None
    retention: float | None = None
    profile: Any = None
    speedup: float | None = None

    def __post_init__(self):
        _check_number("magcache", "threshold", self.threshold)
        _check_int("magcache", "max_skip", self.max_skip, low=0)
        _check_fraction("magcache", "retention", self.retention)
        _check_speedup("magcache", self.speedup)


@register_config("fbcache")
@dataclass(frozen=True)
class FBCache(PolicyConfig):
    """First-block probe (FBCache / DBCache): always run the first `front_blocks` blocks; when their residual changed
    by less than `threshold` (rel-L1) since the last computed step, reuse the cached residual of the middle blocks;
    always run the last `back_blocks` blocks as a corrector. max_skip caps consecutive reuses (None: no cap)."""

    threshold: float = 0.05
    front_blocks: int = 1
    back_blocks: int = 0
    max_skip: int | None = None
    profile: Any = None
    speedup: float | None = None

    def __post_init__(self):
        _check_number("fbcache", "threshold", self.threshold, allow_none=False)
        _check_int("fbcache", "front_blocks", self.front_blocks, low=1, allow_none=False)
        _check_int("fbcache", "back_blocks", self.back_blocks, low=0, allow_none=False)
        _check_int("fbcache", "max_skip", self.max_skip, low=0)
        _check_speedup("fbcache", self.speedup)


@register_config("fora")
@dataclass(frozen=True)
class FORA(PolicyConfig):
    """FORA (Selvaraju et al. 2024): compute every `interval`-th step; in between, every block reuses its attention
    and MLP outputs (taken before the gate multiplication, so the current step's gates scale them)."""

    interval: int = 2

    def __post_init__(self):
        _check_int("fora", "interval", self.interval, low=1, allow_none=False)


@register_config("schedule")
@dataclass(frozen=True)
class Schedule(PolicyConfig):
    """Compute exactly the steps in `steps` (0-based, sorted, must include 0); reuse the last residual in between.

    num_steps: the step count `steps` was written for; a call with another step count maps each listed step to the
    nearest step at the same position of the trajectory. None: `steps` index the call as they are.
    """

    steps: tuple[int, ...] = field(default=())
    num_steps: int | None = None

    def __post_init__(self):
        steps = tuple(self.steps)
        object.__setattr__(self, "steps", steps)
        if not steps:
            raise ValueError("schedule: steps must list the step indices to compute, e.g. steps=(0, 1, 2, 4, 8, 16)")
        for s in steps:
            if isinstance(s, bool) or not isinstance(s, int) or s < 0:
                raise ValueError(f"schedule: steps must be non-negative integers, got {s!r} in {steps}")
        if list(steps) != sorted(set(steps)):
            raise ValueError(f"schedule: steps must be strictly increasing without repeats, got {steps}")
        if steps[0] != 0:
            raise ValueError(f"schedule: step 0 must be computed (there is nothing to reuse before it), got {steps}")
        _check_int("schedule", "num_steps", self.num_steps, low=1)
        if self.num_steps is not None and steps[-1] >= self.num_steps:
            raise ValueError(
                f"schedule: step {steps[-1]} is out of range for num_steps={self.num_steps} (valid: 0..{self.num_steps - 1})"
            )


@register_config("lemica")
@dataclass(frozen=True)
class LeMiCa(PolicyConfig):
    """LeMiCa (Gao et al. 2025): a fixed schedule that computes exactly `budget` steps (or the budget that gives
    `speedup`), chosen on a profile's edge weights by the lexicographic-minimax path; reuse in between."""

    speedup: float | None = None
    budget: int | None = None
    profile: Any = None

    def __post_init__(self):
        _check_speedup("lemica", self.speedup)
        _check_int("lemica", "budget", self.budget, low=2)
        if self.speedup is not None and self.budget is not None:
            raise ValueError("lemica: give speedup or budget, not both")
