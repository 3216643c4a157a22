"""The shared base of the policy configs: `PolicyConfig` (a frozen dataclass validated in `__post_init__`, with a
versioned JSON round trip), the name registry and the validation helpers. Each policy's config class lives in its
policy's file (policies/<name>.py) and is registered there with its policy (`policies.base.register_policy`).

`dit_cache.apply(pipe, "teacache", threshold=0.3)` and `dit_cache.apply(pipe, dit_cache.TeaCache(threshold=0.3))`
are the same thing: names map to config classes through `config_class(name)`. `from dit_cache.config import
TeaCache` still works (the config classes are found by name among the registered ones).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
from dataclasses import dataclass
from typing import Any, ClassVar

CONFIG_FORMAT_VERSION = 1

_CONFIGS: dict[str, type[PolicyConfig]] = {}


def register_config(name: str):
    """Class decorator: make `name` select this config class in `apply(pipe, name, ...)` (policies register theirs
    with `policies.base.register_policy`, which calls this)."""

    def wrap(cls: type[PolicyConfig]) -> type[PolicyConfig]:
        cls.policy_name = name
        _CONFIGS[name] = cls
        return cls

    return wrap


def _load_policies() -> None:
    """Import every policy module (they register themselves), whatever was imported first."""
    importlib.import_module("dit_cache.policies")


def policy_names(internal: bool = False) -> list[str]:
    """The policy names a user can apply (sorted); `internal=True` adds the internal ones (the calibration recorder)."""
    _load_policies()
    from .policies.base import _POLICIES

    hidden = {cfg.policy_name for cfg, cls in _POLICIES.items() if cls.internal}
    return sorted(name for name in _CONFIGS if internal or name not in hidden)


def config_class(name: str) -> type[PolicyConfig]:
    key = name.lower().strip() if isinstance(name, str) else name
    if key not in _CONFIGS:
        _load_policies()
    if key not in _CONFIGS:
        raise ValueError(f"unknown policy {name!r}; valid policies: {', '.join(policy_names())}")
    return _CONFIGS[key]


def __getattr__(name: str) -> Any:
    """`from dit_cache.config import TeaCache`: a registered config class by its class name."""
    if name.startswith("__"):
        raise AttributeError(name)
    _load_policies()
    for cls in _CONFIGS.values():
        if cls.__name__ == name:
            return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


def parse_policy_spec(spec: str) -> tuple[str, dict]:
    """`"teacache:threshold=0.2,max_skip=3"` -> ("teacache", {"threshold": 0.2, "max_skip": 3}) (values as Python
    literals, else strings): how `dit-cache eval` methods and `auto` candidates are written."""
    import ast

    name, _, rest = spec.partition(":")
    options = {}
    for item in filter(None, _split_top_level(rest)):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"option {item!r} in {spec!r} must look like key=value")
        try:
            options[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            options[key.strip()] = value.strip()
    return name.strip().lower(), options


def _split_top_level(text: str) -> list[str]:
    """Split at the commas outside brackets, so `steps=(0,2,5),order=1` keeps its tuple."""
    items, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += char in "([{"
        depth -= char in ")]}"
        if char == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    return [*items, text[start:]]


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


MAX_FORECAST_ORDER = 4  # each order keeps one more feature-sized tensor per cached place


def _check_order(policy: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_FORECAST_ORDER:
        raise ValueError(
            f"{policy}: {name} must be an integer Taylor order in 0..{MAX_FORECAST_ORDER} (0: plain reuse; each order "
            f"keeps one more feature-sized tensor per cached place), got {value!r}"
        )


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
            if isinstance(value, PolicyConfig):  # a composite's inner policy (CFGCache(step=...))
                value = value.to_dict()
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
            value = options.get(f.name)
            if isinstance(value, list):
                options[f.name] = tuple(value)
            elif isinstance(value, dict) and "type" in value:
                options[f.name] = PolicyConfig.from_dict(value)
        return cls(**options)

    @staticmethod
    def from_json(text: str) -> PolicyConfig:
        return PolicyConfig.from_dict(json.loads(text))


def _check_open_fraction(policy: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
        raise ValueError(
            f"{policy}: {name} must be a share of tokens in (0, 1] (1: recompute every token, i.e. never reuse), "
            f"got {value!r}"
        )


def _check_weight(policy: str, name: str, value: Any, bound: float = 2.0) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not -bound <= value <= bound:
        raise ValueError(f"{policy}: {name} must be a number in [-{bound:g}, {bound:g}], got {value!r}")


def _check_speedup_below(policy: str, value: Any, limit: float, why: str) -> None:
    _check_speedup(policy, value)
    if value is not None and value >= limit:
        raise ValueError(f"{policy}: speedup={value} is out of reach: {why} (at most {limit:g}x, never reached)")
