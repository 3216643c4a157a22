"""Candidate runs for `auto` (see dit_cache/auto.py): each candidate policy at each target speedup, through the real
pipeline on the first calibration jobs, against the uncached run of the same job. Runs after the recording pass
(the candidates use the profile it built), saved after every job: an interrupted run resumes at the next job."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..api import apply, remove, stats
from ..auto import DEFAULT_TARGETS, candidate_config, candidate_list, relative_error
from . import keys
from .profile import Profile, ProfileError
from .sections import AutoSection

logger = logging.getLogger(__name__)


def final_output(pipe: Any, kwargs: dict) -> Any:
    out = pipe(**kwargs)
    for attr in ("images", "frames"):
        if hasattr(out, attr):
            return getattr(out, attr)
    return out[0]


def measure_candidates(
    pipe: Any,
    profile: Profile,
    jobs: Sequence[tuple[int, Any, int]],
    call_kwargs: Any,
    candidates: str | Sequence[str] = "default",
    targets: Sequence[float] = DEFAULT_TARGETS,
    out: Path | None = None,
    progress: bool = True,
    transformer: Any = None,
) -> dict:
    """Fill `profile.policies["auto"]`: for each job (index, prompt, seed), the uncached final latents, then every
    candidate at every target; `call_kwargs(prompt, seed)` gives the pipeline's arguments (latent output).
    Runs already in the section (a resumed run, or a profile calibrated with fewer candidates at the same targets) are
    kept and not rerun; the profile is saved to `out` after each job.
    transformer: the one the candidates run on (default `pipe.transformer`; an expert of Wan 2.2 A14B)."""
    specs = candidate_list(candidates)
    targets = tuple(sorted({float(t) for t in targets}))
    if not targets or any(not math.isfinite(t) or t <= 1.0 for t in targets):
        raise ValueError(f"--candidate-targets must be speedups above 1, got {list(targets)}")
    wanted = AutoSection(candidates=list(specs), targets=list(targets), runs={})
    previous = profile.section(AutoSection)
    if previous and (previous.targets != wanted.targets or not set(previous.candidates) <= set(wanted.candidates)):
        raise ProfileError(
            f"this profile's candidate runs were made for {previous.candidates} at {previous.targets}; "
            f"this run asks {list(specs)} at {list(targets)}: use another --out, or the same targets and candidates "
            "(more candidates are added to the jobs already run)"
        )
    section = profile.policies.setdefault(keys.AUTO, wanted.to_dict())  # filled in place, job by job
    # new candidates: run on the jobs already in the section too, the recorded runs kept
    section["candidates"] = list(dict.fromkeys([*section["candidates"], *specs]))
    run_keys = [f"{spec}@{target:g}" for spec in specs for target in targets]
    todo = [job for job in jobs if not set(run_keys) <= set(section["runs"].get(str(job[0]), {}))]
    transformer = pipe.transformer if transformer is None else transformer
    bar = _bar(sum(len(set(run_keys) - set(section["runs"].get(str(j[0]), {}))) for j in todo), progress)
    try:
        for index, prompt, seed in todo:
            started = time.perf_counter()
            reference = final_output(pipe, call_kwargs(prompt, seed))
            runs: dict[str, Any] = dict(section["runs"].get(str(index), {}))
            for spec in specs:
                for target in targets:
                    key = f"{spec}@{target:g}"
                    if key in runs:
                        continue
                    try:
                        config = candidate_config(spec, target, profile)
                        apply(transformer, config, scheduler=pipe.scheduler)
                    except ValueError as e:  # no setting reaches it (FORA at 1.5x, CFG reuse at 3x, no schedule
                        runs[key] = str(e)  # searched for that speedup)
                        continue
                    try:
                        cached = final_output(pipe, call_kwargs(prompt, seed))
                        fraction = stats(transformer).compute_fraction
                    finally:
                        remove(transformer)
                    error = relative_error(cached, reference)
                    runs[key] = [fraction, error if math.isfinite(error) else None]
                    if bar:
                        bar.update(1)
            section["runs"][str(index)] = runs
            section["seconds"] = section.get("seconds", 0.0) + time.perf_counter() - started  # the cost, reported
            if out is not None:
                profile.save(out)
    finally:
        if bar:
            bar.close()
    logger.info("auto candidates: %d jobs x %d candidates x %d targets", len(todo), len(specs), len(targets))
    return section


def _bar(total: int, enabled: bool):
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="auto candidates", unit="run")
