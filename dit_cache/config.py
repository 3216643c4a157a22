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


def parse_policy_spec(spec: str) -> tuple[str, dict]:
    """`"teacache:threshold=0.2,max_skip=3"` -> ("teacache", {"threshold": 0.2, "max_skip": 3}) (values as Python
    literals, else strings): how `dit-cache eval` methods and `auto` candidates are written."""
    import ast

    name, _, rest = spec.partition(":")
    options = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"option {item!r} in {spec!r} must look like key=value")
        try:
            options[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            options[key.strip()] = value.strip()
    return name.strip().lower(), options


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


@register_config("teacache")
@dataclass(frozen=True)
class TeaCache(PolicyConfig):
    """TeaCache (Liu et al. 2024): skip the block stack while the accumulated, polynomial-rescaled change of a cheap
    timestep-modulated indicator stays under `threshold`; reuse the last block-stack residual.

    threshold: accumulated rescaled rel-L1 change before a recompute (None: the profile's default, else 0.1 with the
        identity rescaling). max_skip: cap on consecutive skipped steps (None: no cap).
    forecast: on skipped steps, extrapolate the residual with a Taylor forecast of this order from the last computed
        steps instead of reusing the last one as is (0: plain reuse). The same option exists on every step policy
        and on FORA.
    """

    threshold: float | None = None
    max_skip: int | None = None
    profile: Any = None
    speedup: float | None = None
    forecast: int = 0

    def __post_init__(self):
        _check_order("teacache", "forecast", self.forecast)
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
    forecast: int = 0

    def __post_init__(self):
        _check_order("magcache", "forecast", self.forecast)
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
    forecast: int = 0

    def __post_init__(self):
        _check_order("fbcache", "forecast", self.forecast)
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
    forecast: int = 0

    def __post_init__(self):
        _check_order("fora", "forecast", self.forecast)
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
    forecast: int = 0

    def __post_init__(self):
        _check_order("schedule", "forecast", self.forecast)
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
    forecast: int = 0

    def __post_init__(self):
        _check_order("lemica", "forecast", self.forecast)
        _check_speedup("lemica", self.speedup)
        _check_int("lemica", "budget", self.budget, low=2)
        if self.speedup is not None and self.budget is not None:
            raise ValueError("lemica: give speedup or budget, not both")


# ------------------------------------------------------------------------------------------------ token, CFG, block
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


@register_config("toca")
@dataclass(frozen=True)
class ToCa(PolicyConfig):
    """ToCa-style token caching (Zou et al. 2024): every `interval`-th step computes everything; on the partial steps
    in between, MLP and cross-attention recompute only a share of the tokens and scatter them into their cached
    output, while self-attention is reused (`self_attention="reuse"`) or computed in full (`"compute"`).

    fraction: share of tokens recomputed on partial steps, in (0, 1] (None: 0.3, or the share that gives `speedup`).
        The share of one place is `fraction * (1 + depth_weight * (depth - 1/2)) * (1 + step_weight * (1/2 -
        progress)) * (cross_attention_scale for cross-attention)`, depth and progress in [0, 1], clipped to (0, 1].
    Tokens are picked by score: the change of the token's input since it was last recomputed (relative to the mean
    change), plus `age_weight` x steps since that refresh / interval; the best token of each `spread` x `spread`
    cell of the token grid gets a bonus so the recomputed tokens cover the image (spread=1: no spreading).
    """

    fraction: float | None = None
    interval: int = 3
    self_attention: str = "reuse"
    depth_weight: float = 0.5
    step_weight: float = 0.0
    cross_attention_scale: float = 0.5
    age_weight: float = 0.5
    spread: int = 2
    speedup: float | None = None

    def __post_init__(self):
        if self.fraction is not None:
            _check_open_fraction("toca", "fraction", self.fraction)
        _check_int("toca", "interval", self.interval, low=1, allow_none=False)
        if self.self_attention not in ("reuse", "compute"):
            raise ValueError(f"toca: self_attention must be 'reuse' or 'compute', got {self.self_attention!r}")
        _check_weight("toca", "depth_weight", self.depth_weight)
        _check_weight("toca", "step_weight", self.step_weight)
        if isinstance(self.cross_attention_scale, bool) or not isinstance(self.cross_attention_scale, (int, float)):
            raise ValueError(
                f"toca: cross_attention_scale must be a positive number, got {self.cross_attention_scale!r}"
            )
        _check_number("toca", "cross_attention_scale", self.cross_attention_scale, allow_none=False)
        if self.cross_attention_scale == 0:
            raise ValueError("toca: cross_attention_scale must be > 0 (it scales the share of tokens recomputed)")
        _check_number("toca", "age_weight", self.age_weight, allow_none=False)
        _check_int("toca", "spread", self.spread, low=1, allow_none=False)
        _check_speedup("toca", self.speedup)
        if self.speedup is not None and self.fraction is not None:
            raise ValueError("toca: give fraction or speedup, not both (speedup picks the fraction)")


@register_config("cfg")
@dataclass(frozen=True)
class CFGCache(PolicyConfig):
    """CFG reuse in the style of FasterCache (Lv et al. 2024): every `interval`-th step computes both guidance
    branches and stores their difference (unconditional minus conditional output); the steps in between compute
    only the conditional branch and rebuild the unconditional one from it and the stored difference.

    warmup: share of the first steps that always compute both branches. alpha_low / alpha_high: weights of the low /
        high spatial-frequency part of the stored difference on rebuilt steps whose trajectory position (1 at the
        first step, 0 at the last) lies in low_range / high_range (FasterCache's timestep windows); 1 outside.
    step: an inner policy for everything else (a name, a config such as TeaCache(), or None): it runs on every
        computed branch, so CFG reuse combines with any step, block or token policy.
    speedup: picks the interval (at most 2x: only the unconditional half of the work can be saved).
    """

    interval: int | None = None
    warmup: float = 0.2
    alpha_low: float = 1.1
    alpha_high: float = 1.1
    low_range: tuple[float, float] = (0.1, 0.9)
    high_range: tuple[float, float] = (0.0, 0.3)
    step: Any = None
    speedup: float | None = None

    def __post_init__(self):
        _check_int("cfg", "interval", self.interval, low=1)
        _check_fraction("cfg", "warmup", self.warmup)
        for name in ("alpha_low", "alpha_high"):
            _check_number("cfg", name, getattr(self, name), allow_none=False)
        for name in ("low_range", "high_range"):
            value = tuple(getattr(self, name))
            object.__setattr__(self, name, value)
            if len(value) != 2 or not all(isinstance(v, (int, float)) for v in value) or not value[0] < value[1]:
                raise ValueError(
                    f"cfg: {name} must be (start, end) with start < end, positions of the trajectory from 1 (first "
                    f"step) to 0 (last step), got {value!r}"
                )
        _check_speedup_below("cfg", self.speedup, 2.0, "CFG reuse saves at most the unconditional half of the work")
        if self.speedup is not None and self.interval is not None:
            raise ValueError("cfg: give interval or speedup, not both (speedup picks the interval)")
        object.__setattr__(self, "step", _inner_config("cfg", self.step))


def _inner_config(policy: str, value: Any) -> PolicyConfig | None:
    """An inner policy given as a name, a config dict or a config; composites cannot nest."""
    if value is None:
        return None
    if isinstance(value, str):
        config = make_config(value)
    elif isinstance(value, dict):
        config = PolicyConfig.from_dict(value)
    elif isinstance(value, PolicyConfig):
        config = value
    else:
        raise TypeError(
            f"{policy}: step must be a policy name or config (e.g. dit_cache.TeaCache()), got {type(value).__name__}"
        )
    if config.policy_name in ("cfg", "mix", "recorder"):
        raise ValueError(
            f"{policy}: step={config.policy_name!r} cannot be an inner policy; give a step, block or token policy "
            "(teacache, magcache, fbcache, schedule, lemica, fora, taylorseer, toca, bwcache)"
        )
    return config


@register_config("bwcache")
@dataclass(frozen=True)
class BWCache(PolicyConfig):
    """Per-block similarity reuse (BWCache-style): each block is reused (its input plus the residual it produced
    when it last ran) while its own input has changed by less than `threshold` (rel-L1) since it last ran,
    independently of the other blocks; at most `max_skip` reuses in a row per block.

    The change at step t is known only once the earlier blocks ran at step t, so to keep one host read per call the
    decision uses each block's change measured at the previous call, extrapolated one step (linear drift).
    """

    threshold: float = 0.1
    max_skip: int | None = None
    profile: Any = None
    speedup: float | None = None

    def __post_init__(self):
        _check_number("bwcache", "threshold", self.threshold, allow_none=False)
        _check_int("bwcache", "max_skip", self.max_skip, low=0)
        _check_speedup("bwcache", self.speedup)


@register_config("taylorseer")
@dataclass(frozen=True)
class TaylorSeer(PolicyConfig):
    """TaylorSeer (Liu et al. 2025): the first `warmup` steps and then every `interval`-th step compute and update
    a Taylor history of every attention and MLP output; the steps in between forecast each output from it.

    order: Taylor order (the history keeps order + 1 tensors per output; exact on polynomial trajectories of
        degree <= order). corrector: FoCa-style calibration weight in [0, 1] for long skips: the error the forecast
        made at the last refresh calibrates the next forecasts (0: plain TaylorSeer).
    speedup: picks the interval. exact: with speedup, compute exactly round(steps / speedup) steps (the warm-up, then
        gaps as even as the count allows, the longer ones mid-trajectory) instead of the nearest interval, which may
        land up to 0.05 off the target (interval 2 computes 16 of 30 steps at 2x: fraction 0.533, not 0.5).
    """

    interval: int | None = None
    order: int = 1
    warmup: int = 2
    corrector: float = 0.0
    speedup: float | None = None
    exact: bool = False

    def __post_init__(self):
        _check_int("taylorseer", "interval", self.interval, low=1)
        _check_order("taylorseer", "order", self.order)
        _check_int("taylorseer", "warmup", self.warmup, low=0, allow_none=False)
        if (
            isinstance(self.corrector, bool)
            or not isinstance(self.corrector, (int, float))
            or not 0 <= self.corrector <= 1
        ):
            raise ValueError(f"taylorseer: corrector must be a weight in [0, 1] (0: off), got {self.corrector!r}")
        _check_speedup("taylorseer", self.speedup)
        if self.speedup is not None and self.interval is not None:
            raise ValueError("taylorseer: give interval or speedup, not both (speedup picks the interval)")
        if not isinstance(self.exact, bool):
            raise ValueError(f"taylorseer: exact must be True or False, got {self.exact!r}")
        if self.exact and self.speedup is None:
            raise ValueError("taylorseer: exact=True needs speedup= (it sets how many steps are computed)")


MIX_MODES = {"step": "step", "teacache": "step", "cfg": "cfg", "token": "token", "toca": "token"}


@register_config("mix")
@dataclass(frozen=True)
class MixCache(PolicyConfig):
    """A per-step mixture in the style of MixCache: every call chooses step reuse, token reuse or full compute from
    the step's signal (TeaCache's accumulated, profile-rescaled indicator change since the last full compute), and
    the unconditional CFG branch is rebuilt from the conditional one whenever its step was not fully computed.

    Rule: acc < reuse_threshold -> reuse the whole step; acc < token_threshold -> token reuse (self-attention reused,
    `fraction` of the tokens recomputed through MLP and cross-attention); else full compute (acc = 0). First and
    last steps, and max_skip non-full steps in a row, compute in full.
    modes: the granularities to choose from, among "step" (alias "teacache"), "token" ("toca") and "cfg".
    Thresholds default to the profile's TeaCache threshold (token) and half of it (step), else 0.1 and 0.05;
    speedup= scales both on a profile's traces.
    """

    reuse_threshold: float | None = None
    token_threshold: float | None = None
    fraction: float = 0.3
    modes: tuple[str, ...] = ("step", "token", "cfg")
    max_skip: int | None = None
    profile: Any = None
    speedup: float | None = None

    def __post_init__(self):
        modes = (self.modes,) if isinstance(self.modes, str) else tuple(self.modes)
        for mode in modes:
            if mode not in MIX_MODES:
                raise ValueError(
                    f"mix: unknown policy {mode!r} in modes; the mixture chooses among step (alias teacache), token "
                    "(alias toca) and cfg; for other policies apply them directly or as CFGCache(step=...)"
                )
        canonical = tuple(dict.fromkeys(MIX_MODES[m] for m in modes))
        if not canonical:
            raise ValueError("mix: modes is empty; name at least one of step, token, cfg")
        object.__setattr__(self, "modes", canonical)
        _check_number("mix", "reuse_threshold", self.reuse_threshold)
        _check_number("mix", "token_threshold", self.token_threshold)
        if (
            self.reuse_threshold is not None
            and self.token_threshold is not None
            and self.reuse_threshold > self.token_threshold
        ):
            raise ValueError(
                f"mix: reuse_threshold ({self.reuse_threshold}) must not exceed token_threshold ({self.token_threshold}):"
                " whole-step reuse is for the calmer steps"
            )
        _check_open_fraction("mix", "fraction", self.fraction)
        _check_int("mix", "max_skip", self.max_skip, low=0)
        _check_speedup("mix", self.speedup)


# ------------------------------------------------------------------------------------------------ paper policies
@register_config("easycache")
@dataclass(frozen=True)
class EasyCache(PolicyConfig):
    """EasyCache (Zhou et al. 2025), runtime-adaptive, no calibration: after the warm-up, reuse the block stack's
    last computed transformation (output minus input) while the accumulated estimate of the output's relative change
    stays under `tolerance`. The estimate at step t is k x |x_t - x_(t-1)| / |y_c|: x the stack input, y_c the stack
    output of the last computed step, k = |y_c - y_c'| / |x_c - x_c'| the transformation rate measured between the last
    two computed steps (mean absolute values).

    tolerance: accumulated estimate before a recompute (the paper's tau; 0 never reuses). warmup: share of the first
        steps always computed (the paper's retention steps). max_skip: cap on consecutive reuses (None: no cap).
    forecast: as on the step policies (0: plain reuse of the transformation).
    """

    tolerance: float = 0.05
    warmup: float = 0.1
    max_skip: int | None = None
    forecast: int = 0

    def __post_init__(self):
        _check_number("easycache", "tolerance", self.tolerance, allow_none=False)
        _check_fraction("easycache", "warmup", self.warmup)
        _check_int("easycache", "max_skip", self.max_skip, low=0)
        _check_order("easycache", "forecast", self.forecast)


@register_config("ertacache")
@dataclass(frozen=True)
class ERTACache(PolicyConfig):
    """ERTACache-style (Peng et al. 2025): a schedule fixed offline from a profile's residual-error table, with
    rectified reuse. The profile's `res_pairs` hold, per pair of steps (i, c), the rel-L1 error of using step c's
    block-stack residual at step i, averaged over the calibration prompts and CFG branches; the schedule (one for
    every branch) computes step 0 and reuses every later step i while that error against the last computed step c
    stays under `threshold` (at most `max_skip` in a row). A reused residual is rectified by the closed-form gain prod(ratio_k, c < k <= i) of the profile's
    residual-norm ratios (`rectify=False`: reused as is).

    threshold: error bound (None: 0.1, or the one that gives `speedup`, searched on the profile).
    """

    threshold: float | None = None
    max_skip: int | None = None
    rectify: bool = True
    profile: Any = None
    speedup: float | None = None

    def __post_init__(self):
        _check_number("ertacache", "threshold", self.threshold)
        _check_int("ertacache", "max_skip", self.max_skip, low=0)
        if not isinstance(self.rectify, bool):
            raise ValueError(f"ertacache: rectify must be True or False, got {self.rectify!r}")
        _check_speedup("ertacache", self.speedup)
        if self.speedup is not None and self.threshold is not None:
            raise ValueError("ertacache: give threshold or speedup, not both (speedup picks the threshold)")


HYCA_SOLVERS = (0, 1, 2)  # reuse, first- and second-order Taylor forecast


@register_config("hyca")
@dataclass(frozen=True)
class HyCa(PolicyConfig):
    """HyCa-style hybrid caching (Zheng et al. 2025): TaylorSeer's schedule (the first `warmup` steps and every
    `interval`-th step compute), but each unit (each block's attention and MLP output) gets its own solver on the
    steps in between: reuse (0), first- (1) or second-order (2) Taylor forecast, the one of `solvers` that made
    the least error on the profile's calibration trajectories under this very schedule (recorded with
    `dit-cache calibrate --block-traces`).

    speedup: picks the interval, as TaylorSeer's.
    """

    interval: int | None = None
    warmup: int = 2
    solvers: tuple[int, ...] = HYCA_SOLVERS
    profile: Any = None
    speedup: float | None = None

    corrector: ClassVar[float] = 0.0  # TaylorSeer's schedule without FoCa calibration

    def __post_init__(self):
        _check_int("hyca", "interval", self.interval, low=1)
        _check_int("hyca", "warmup", self.warmup, low=0, allow_none=False)
        solvers = (self.solvers,) if isinstance(self.solvers, int) else tuple(self.solvers)
        object.__setattr__(self, "solvers", solvers)
        if not solvers or any(s not in HYCA_SOLVERS for s in solvers) or len(set(solvers)) != len(solvers):
            raise ValueError(
                f"hyca: solvers must name distinct solvers among {HYCA_SOLVERS} (0: reuse, 1 and 2: Taylor forecast "
                f"of that order), got {self.solvers!r}"
            )
        _check_speedup("hyca", self.speedup)
        if self.speedup is not None and self.interval is not None:
            raise ValueError("hyca: give interval or speedup, not both (speedup picks the interval)")

    @property
    def order(self) -> int:
        return max(self.solvers)
