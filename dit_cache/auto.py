"""`apply(pipe, "auto", speedup=X)`: the policy and setting that made the least final-output error on the
calibration prompts at the requested compute, picked from the profile's candidate runs.

Calibration with `--candidates` (`measure_candidates`) runs every candidate (a policy name with options, written as
in `dit-cache eval`: `magcache`, `magcache:forecast=1`) at each candidate target speedup through the real pipeline,
and records the compute fraction it reached (as `stats()` counts it) and the relative squared error of its final
latents against the uncached run. `choose` compares candidates at the requested fraction 1 / X: a candidate with a
speedup knob by its run at target X (or, between two calibrated targets, its fraction and error interpolated
linearly in 1 / X; never extrapolated), provided that run's fraction does not exceed 1 / X; an interval policy (FORA) by its
calibrated interval of largest fraction not above 1 / X. The least error wins.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .calibration.sections import AutoSection
from .config import PolicyConfig, _check_speedup, config_class, make_config, parse_policy_spec, policy_names
from .policies.base import Policy, policy_info, register_policy

logger = logging.getLogger(__name__)

#: what `--candidates default` measures: the step policies with and without forecasting, LeMiCa, TaylorSeer (also at
#: exactly the target's share of steps: no interval computes 15 or 10 of 30), FORA
DEFAULT_CANDIDATES = (
    "magcache",
    "magcache:forecast=1",
    "teacache",
    "teacache:forecast=1",
    "lemica",
    "lemica:forecast=1",
    "fbcache",
    "taylorseer",
    "taylorseer:order=2",
    "fora:forecast=1",
    "taylorseer:exact=True",
    "taylorseer:exact=True,order=2",
    "taylorseer:searched=True",  # where the profile has searched schedules (--search-schedules), else not run
    "taylorseer:searched=True,coordinate=sigma",
    "taylorseer:searched=True,coordinate=sigma,corrector=0.25",  # FoCa's correction, light: best of 0-1 on video
)
DEFAULT_TARGETS = (1.5, 2.0, 2.5, 3.0, 4.0)
FRACTION_SLACK = 0.02  # an interval policy's calibrated fraction may exceed 1 / X by this much (rounding of steps)


@dataclass(frozen=True)
class Auto(PolicyConfig):
    """The least-error candidate of the profile's `auto` section for `speedup` (see `dit-cache calibrate
    --candidates`). `candidates` limits the choice to some of them (names as recorded, e.g. ("magcache",))."""

    speedup: float | None = None
    profile: Any = None
    candidates: tuple[str, ...] | None = None

    def __post_init__(self):
        _check_speedup("auto", self.speedup)
        if self.speedup is None:
            raise ValueError("auto needs speedup= (e.g. apply(pipe, 'auto', speedup=2.0)): it picks per target")
        if self.candidates is not None and (
            isinstance(self.candidates, str) or not all(isinstance(c, str) for c in self.candidates)
        ):
            raise ValueError(f"auto: candidates must be a tuple of candidate names, got {self.candidates!r}")


@register_policy("auto", Auto, level="auto", needs_profile="candidates", speedup_by="profile", cfg_inner=False)
class AutoPolicy(Policy):
    """`auto` runs no rule of its own: `apply` resolves an `Auto` config to the candidate it picks
    (`resolve`) and runs that candidate's policy. This class carries its capabilities."""

    def __init__(self, config: Auto, model) -> None:
        raise TypeError("auto is resolved to the policy it picks by dit_cache.apply; it does not run itself")


def candidate_list(value: str | Sequence[str]) -> tuple[str, ...]:
    """`default`, `all` or comma-separated candidate specs -> the specs, each checked against its policy."""
    if isinstance(value, str):
        if value.strip() == "default":
            specs = list(DEFAULT_CANDIDATES)
        elif value.strip() == "all":
            extra = [p for p in policy_names() if _can_be_candidate(p)]
            specs = list(DEFAULT_CANDIDATES) + [p for p in extra if p not in DEFAULT_CANDIDATES]
        else:
            specs = [s.strip() for s in value.split(",") if s.strip()]
    else:
        specs = list(value)
    if not specs:
        raise ValueError("--candidates: no candidate given; use default, all or NAME[:key=value],...")
    for spec in specs:
        name, options = parse_policy_spec(spec)
        if not _can_be_candidate(name):  # an unknown name: the error names the valid ones
            raise ValueError(
                f"--candidates: {name!r} cannot be a candidate (it has no speedup of its own: neither a speedup target "
                "nor an interval)"
            )
        if has_speedup_knob(spec):  # its options as they run, with a target (taylorseer's exact=True needs one)
            candidate_config(spec, DEFAULT_TARGETS[0], None)
        else:
            make_config(name, **options)  # an unknown option: the error names the valid ones
    return tuple(dict.fromkeys(specs))


def _can_be_candidate(name: str) -> bool:
    """Whether a policy can be an `auto` candidate: a user policy that runs a rule of its own (not `auto`) and can be
    run at a target (`speedup_by`: a speedup or an interval; a schedule's explicit steps are neither)."""
    info = policy_info(name)
    return not info.internal and info.level != "auto" and info.speedup_by is not None


def candidate_config(spec: str, target: float, profile: Any) -> PolicyConfig:
    """The config of candidate `spec` at `target`; ValueError when no setting of it reaches that target."""
    name, options = parse_policy_spec(spec)
    fields = {f.name for f in dataclasses.fields(config_class(name))}
    if "speedup" in fields:
        options["speedup"] = target
        if "profile" in fields:
            options["profile"] = profile
    else:
        interval = round(target)
        if not math.isclose(interval, target, abs_tol=0.01):
            raise ValueError(f"{name} has integer intervals only; no setting gives {target:g}x")
        options["interval"] = interval
    return make_config(name, **options)


def has_speedup_knob(spec: str) -> bool:
    name, _ = parse_policy_spec(spec)
    return "speedup" in {f.name for f in dataclasses.fields(config_class(name))}


# ---------------------------------------------------------------------------------------------------- measuring
def relative_error(cached: Any, reference: Any) -> float:
    """Mean squared error of the final latents relative to the reference's mean square (PSNR-like, scale-free); a
    list of latents (one per sample, Z-Image) counts as their concatenation."""
    cached, reference = _flat(cached), _flat(reference)
    power = float(reference.pow(2).mean()) or 1.0
    return float((cached - reference).pow(2).mean()) / power


def _flat(latents: Any) -> torch.Tensor:
    if isinstance(latents, (list, tuple)):
        return torch.cat([torch.as_tensor(x).double().flatten() for x in latents])
    return torch.as_tensor(latents).double()


def summarize(section: dict) -> dict[str, list[tuple[float, float, float]]]:
    """spec -> [(target, mean fraction, mean error)] over the jobs that ran it, sorted by fraction."""
    per: dict[tuple[str, float], list[tuple[float, float]]] = {}
    for job in section.get("runs", {}).values():
        for key, value in job.items():
            if not isinstance(value, list) or value[1] is None:
                continue  # a reason (no setting reaches the target) or a diverged run
            spec, _, target = key.rpartition("@")
            per.setdefault((spec, float(target)), []).append((value[0], value[1]))
    jobs = len(section.get("runs", {}))
    out: dict[str, list[tuple[float, float, float]]] = {}
    for (spec, target), values in per.items():
        if len(values) < jobs:  # diverged on some prompt: not a candidate at this target
            continue
        fractions, errors = zip(*values)
        out.setdefault(spec, []).append((target, float(np.mean(fractions)), float(np.mean(errors))))
    return {spec: sorted(points, key=lambda p: p[1]) for spec, points in out.items()}


# ------------------------------------------------------------------------------------------------------ choosing
@dataclass(frozen=True)
class Choice:
    """What `auto` picked: the candidate, the config it runs, and the calibration's figures at the target."""

    candidate: str
    config: PolicyConfig
    fraction: float  # the compute fraction it reached in calibration at this target (interpolated between targets)
    error: float  # the calibrated relative squared error of the final latents at that fraction
    ranking: tuple[tuple[str, float], ...]  # every comparable candidate and its error, best first

    def describe(self) -> str:
        psnr = -10 * math.log10(self.error) if self.error > 0 else math.inf
        return (
            f"auto picked {self.candidate} (calibrated: compute fraction {self.fraction:.3f}, "
            f"latent PSNR {psnr:.2f} dB over {len(self.ranking)} candidates)"
        )

    def to_dict(self) -> dict:
        return {
            "candidate": self.candidate,
            "policy": self.config.policy_name,
            "options": {  # the profile is the one `auto` was given
                f.name: getattr(self.config, f.name) for f in dataclasses.fields(self.config) if f.name != "profile"
            },
            "fraction": self.fraction,
            "error": self.error,
            "ranking": [list(r) for r in self.ranking],
        }


def _predict(points: list[tuple[float, float, float]], speedup: float, knob: bool) -> tuple[float, float, float]:
    """(target to apply, compute fraction, error) of a candidate asked for `speedup`, from its calibrated runs
    (target, fraction, error); ValueError if it was not calibrated there or does not reach 1 / `speedup`."""
    limit = 1.0 / speedup + FRACTION_SLACK
    if not knob:  # an interval policy: the calibrated interval of most compute within the budget
        within = [p for p in points if p[1] <= limit]
        if not within:
            raise ValueError("no calibrated interval reaches the fraction")
        return max(within, key=lambda p: p[1])
    by_target = sorted(points)
    targets = [p[0] for p in by_target]
    exact = [p for p in by_target if math.isclose(p[0], speedup, rel_tol=1e-6)]
    if exact:
        predicted = exact[0]
    elif targets[0] < speedup < targets[-1]:  # between two calibrated targets: linear in 1 / speedup (the fraction)
        k = next(i for i, t in enumerate(targets) if t > speedup)
        (t0, f0, e0), (t1, f1, e1) = by_target[k - 1], by_target[k]
        w = (1 / speedup - 1 / t0) / (1 / t1 - 1 / t0)
        predicted = (speedup, f0 + w * (f1 - f0), e0 + w * (e1 - e0))
    else:
        raise ValueError("outside its calibrated targets")
    if predicted[1] > limit:
        raise ValueError(f"reaches only fraction {predicted[1]:.3f}")
    return speedup, predicted[1], predicted[2]


def choose(profile: Any, speedup: float, only: Sequence[str] | None = None) -> Choice:
    """The least-error candidate of `profile`'s `auto` section at compute fraction 1 / `speedup`."""
    section = profile.section(AutoSection)
    if not section or not section.runs:
        raise ValueError(
            f"auto: the profile ({profile.name}) has no candidate runs; record them with "
            "`dit-cache calibrate ... --candidates default` (or calibrate(..., candidates='default'))"
        )
    summary = summarize({"runs": section.runs})
    if only is not None:
        missing = sorted(set(only) - set(summary))
        if missing:
            raise ValueError(f"auto: candidates {missing} are not in the profile; it has {sorted(summary)}")
        summary = {k: v for k, v in summary.items() if k in only}
    scored, why = [], {}
    for spec, points in summary.items():
        try:
            target, reached, error = _predict(points, speedup, has_speedup_knob(spec))
        except ValueError as e:
            why[spec] = str(e)
            continue
        scored.append((error, spec, target, reached))
    if not scored:
        targets = sorted({t for p in summary.values() for t, _, _ in p})
        raise ValueError(
            f"auto: no candidate of the profile reaches speedup {speedup:g} (fraction {1 / speedup:.3f}) within its "
            f"calibration ({'; '.join(f'{k}: {v}' for k, v in why.items())}; calibrated targets: {targets}). "
            f"Ask for a calibrated speedup, or recalibrate with --candidate-targets including {speedup:g}"
        )
    scored.sort()
    error, spec, target, reached = scored[0]
    return Choice(
        candidate=spec,
        config=candidate_config(spec, target, profile),
        fraction=reached,
        error=error,
        ranking=tuple((s, e) for e, s, _, _ in scored),
    )


def resolve(config: Auto, transformer: Any) -> Choice:
    """The choice of `config` for `transformer` (its profile resolved as every policy's is)."""
    from .calibration.resolve import resolve_profile

    profile = resolve_profile(config.profile, transformer, "auto", required=True)
    choice = choose(profile, config.speedup, config.candidates)
    logger.info("dit_cache: %s", choice.describe())
    return choice
