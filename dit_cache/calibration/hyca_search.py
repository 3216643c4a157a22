"""HyCa's solver assignment searched on what matters, the final output (`dit-cache calibrate --hyca-targets`).

For each target speedup: the uncached final latents of the first calibration jobs, then real runs of the pipeline
with HyCa at that speedup and a given solver per unit (`HyCa(unit_solvers=...)`), each scored by the mean over the
jobs of the relative error of its final latents (`auto.relative_error`, as auto's candidate runs are). The search
starts from the best of orders 0, 1 and 2 applied to every unit (so it never scores below any of them on these
jobs), then sweeps the units in order, trying each unit's other solvers and keeping a change only when it lowers the
mean error and raises no job's error (coordinate descent; `sweeps` passes at most, fewer when a pass changes
nothing). Keeping every change that lowers the mean fitted the calibration prompts (up to +4.2 dB over the best
uniform order there) and lost up to 4.8 dB to uniform order 2 on other prompts of the zoo models. A pass costs
2 x units runs of every job. The result is stored per schedule (step count and computed steps) in the profile's
`policies.hyca` section (sections.HyCaSection), which `apply(pipe, "hyca", speedup=X, profile=P)` reads.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..api import apply, cache_engine, remove
from ..auto import relative_error
from ..policies.hyca import HYCA_SOLVERS, HyCa
from . import keys
from .candidates import final_output
from .profile import Profile, ProfileError
from .recorder import unit_keys
from .sections import HyCaSection, hyca_schedule_key

logger = logging.getLogger(__name__)


def search_hyca(
    pipe: Any,
    profile: Profile,
    jobs: Sequence[tuple[int, Any, int]],
    call_kwargs: Callable[[Any, int], dict],
    targets: Sequence[float],
    sweeps: int = 1,
    out: Path | None = None,
    transformer: Any = None,
) -> dict:
    """Fill `profile.policies["hyca"]` with one searched assignment per target speedup (see the module doc);
    `call_kwargs(prompt, seed)` gives the pipeline's arguments (latent output). Schedules already in the section are
    kept and not searched again; the profile is saved to `out` after each target."""
    targets = tuple(sorted({float(t) for t in targets}))
    if not targets or any(not math.isfinite(t) or t <= 1.0 for t in targets):
        raise ValueError(f"--hyca-targets must be speedups above 1, got {list(targets)}")
    if isinstance(sweeps, bool) or not isinstance(sweeps, int) or sweeps < 0:
        raise ValueError(f"--hyca-sweeps must be 0 or more, got {sweeps!r}")
    if not jobs:
        raise ValueError("the HyCa search needs at least one calibration job")
    transformer = pipe.transformer if transformer is None else transformer
    units = _units(transformer, pipe)
    labels = [f"{b}.{n}" for b, n in units]
    previous = profile.section(HyCaSection)
    if previous is not None and previous.units not in (None, labels):
        raise ProfileError(f"this profile's HyCa assignments are for units {previous.units}, this model has {labels}")
    section = profile.policies.setdefault(keys.HYCA, HyCaSection(units=labels, assignments={}).to_dict())
    section.setdefault("assignments", {})
    section["prompts"] = len(jobs)
    references = None
    for target in targets:
        started = time.perf_counter()
        num_steps = int(call_kwargs(jobs[0][1], jobs[0][2])["num_inference_steps"])
        key = hyca_schedule_key(num_steps, _computed(transformer, pipe, target, num_steps, len(units)))
        if key in section["assignments"]:
            continue
        if references is None:
            references = [final_output(pipe, call_kwargs(prompt, seed)) for _, prompt, seed in jobs]
        found = search_one(pipe, transformer, jobs, references, call_kwargs, target, len(units), sweeps)
        section["assignments"][key] = found
        section["seconds"] = section.get("seconds", 0.0) + time.perf_counter() - started
        logger.info("hyca %gx (%s): %s", target, key, found)
        if out is not None:
            profile.save(out)
    return section


def output_errors(
    pipe: Any, transformer: Any, jobs: Sequence, references: list, call_kwargs: Callable, config: HyCa
) -> list[float]:
    """Per job, the relative error of the final latents under `config` (inf where not finite)."""
    errors = []
    for (_, prompt, seed), reference in zip(jobs, references):
        apply(transformer, config, scheduler=pipe.scheduler)
        try:
            error = relative_error(final_output(pipe, call_kwargs(prompt, seed)), reference)
        finally:
            remove(transformer)
        errors.append(error if math.isfinite(error) else math.inf)
    return errors


def search_one(
    pipe: Any,
    transformer: Any,
    jobs: Sequence,
    references: list,
    call_kwargs: Callable,
    target: float,
    units: int,
    sweeps: int,
) -> dict:
    """The assignment of least output error at `target`: the best uniform one, then coordinate descent in which a
    change is kept only if it lowers the mean error over the jobs and raises no job's error."""
    evaluations = 0

    def score(solvers: list[int]) -> list[float]:
        nonlocal evaluations
        evaluations += 1
        config = HyCa(speedup=target, unit_solvers=tuple(solvers))
        return output_errors(pipe, transformer, jobs, references, call_kwargs, config)

    def mean(errors: list[float]) -> float:
        return sum(errors) / len(errors)

    uniform = [score([order] * units) for order in HYCA_SOLVERS]
    start = min(range(len(HYCA_SOLVERS)), key=lambda s: (mean(uniform[s]), s))  # ties: the lower order
    best, errors = [HYCA_SOLVERS[start]] * units, uniform[start]
    for _ in range(sweeps):
        changed = False
        for unit in range(units):
            for order in [s for s in HYCA_SOLVERS if s != best[unit]]:  # the others than the unit's at its turn
                trial = [*best[:unit], order, *best[unit + 1 :]]
                found = score(trial)
                # every job no worse: a change that helps some prompts at another's cost is an error cancellation
                # specific to those prompts, and did not carry over to others on the zoo models
                if mean(found) < mean(errors) * (1 - 1e-9) and all(f <= e for f, e in zip(found, errors)):
                    best, errors, changed = trial, found, True
        if not changed:
            break
    return {
        "speedup": target,
        "solvers": best,
        "error": mean(errors),
        "uniform": [mean(u) for u in uniform],
        "job_errors": errors,
        "evaluations": evaluations,
    }


def _units(transformer: Any, pipe: Any) -> list[tuple[int, str]]:
    """The model's attention/MLP units, in the order HyCa's `unit_solvers` lists them."""
    apply(transformer, "fora", scheduler=pipe.scheduler)
    try:
        return unit_keys(cache_engine(transformer).slots)
    finally:
        remove(transformer)


def _computed(transformer: Any, pipe: Any, target: float, num_steps: int, units: int) -> list[int]:
    """The steps HyCa at `target` computes in a call of `num_steps` steps (its schedule key)."""
    apply(transformer, HyCa(speedup=target, unit_solvers=(0,) * units), scheduler=pipe.scheduler)
    try:
        return cache_engine(transformer).policy.computed(num_steps)
    finally:
        remove(transformer)
