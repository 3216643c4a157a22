"""Searched forecast schedules: for a count of computed steps, the steps TaylorSeer computes, searched on the
calibration prompts (never on the ones an evaluation scores) by the error they cause in the final output.

A fixed count of computed steps can be placed in many ways, and on a trained model the placement matters more than
the rule: on zoo:shapes-video at 10 of 30 steps TaylorSeer's even spread and a searched placement differ by 3-4 dB
(docs/benchmarks.md). The search starts from the best of a few rules (`exact_steps`, the even spread, LeMiCa's path
where the profile has edge weights), then takes the first improving local move (one computed step shifted by one,
step 0 kept) until a full pass of moves gains nothing or the time budget runs out. The score of a schedule is the
mean over the jobs of the final latents' PSNR-like 10 log10(1 / relative error) against the uncached run.

Stored in the profile's `taylorseer` section (`SearchedSchedules`), saved after every improvement: an interrupted
search resumes from its best schedule. `taylorseer:searched=True,speedup=X` runs the schedule of round(steps / X)
computed steps, mapped to other step counts as `steps=` is.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..api import apply, remove, stats
from ..auto import relative_error
from . import keys
from .candidates import final_output
from .profile import Profile
from .sections import SearchedSchedules, searched_key

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScheduleSearch:
    """What `dit-cache calibrate --search-schedules` searches: schedules for these target speedups, for TaylorSeer at
    `order` forecasting along `coordinate`, scored on the first `prompts` calibration jobs, `budget` seconds each."""

    targets: tuple[float, ...]
    order: int = 1
    coordinate: str = "step"
    prompts: int = 4
    budget: float = 1800.0
    warmup: int = 2

    def __post_init__(self):
        from ..policies.forecast import TaylorSeer

        targets = tuple(float(t) for t in self.targets)
        if not targets or any(not math.isfinite(t) or t <= 1 for t in targets):
            raise ValueError(f"--search-schedules must be speedups above 1, got {list(self.targets)}")
        object.__setattr__(self, "targets", targets)
        TaylorSeer(order=self.order, coordinate=self.coordinate, warmup=self.warmup)  # the same checks and messages
        if isinstance(self.prompts, bool) or not isinstance(self.prompts, int) or self.prompts < 1:
            raise ValueError(f"--search-prompts must be at least 1, got {self.prompts!r}")
        if not math.isfinite(self.budget) or self.budget <= 0:
            raise ValueError(f"--search-budget must be a positive number of seconds, got {self.budget!r}")


def neighbours(steps: tuple[int, ...], num_steps: int) -> list[tuple[int, ...]]:
    """Each computed step but 0 moved one step earlier or later, where that step is free and in range."""
    taken, moves = set(steps), []
    for step in steps[1:]:
        for new in (step - 1, step + 1):
            if 0 < new < num_steps and new not in taken:
                moves.append(tuple(sorted(taken - {step} | {new})))
    return moves


def local_search(
    score: Callable[[tuple[int, ...]], float],
    start: tuple[int, ...],
    num_steps: int,
    budget: float,
    on_improve: Callable[[dict], None] | None = None,
) -> dict:
    """First-improvement local search from `start` (higher score is better) until a full pass of `neighbours`
    gains nothing (converged) or `budget` seconds have passed. Returns the best schedule, its score, whether it
    converged and how many schedules were scored; `on_improve` gets the same dict after each improvement."""
    started = time.perf_counter()
    best, best_score = tuple(start), score(tuple(start))
    result = {"steps": list(best), "score": best_score, "converged": False, "tried": 1}
    improved = True
    while improved:
        improved = False
        for candidate in neighbours(best, num_steps):
            if time.perf_counter() - started >= budget:
                result["seconds"] = time.perf_counter() - started
                return result
            value = score(candidate)
            result["tried"] += 1
            if value > best_score:
                best, best_score, improved = candidate, value, True
                result.update(steps=list(best), score=best_score, seconds=time.perf_counter() - started)
                if on_improve:
                    on_improve(dict(result))
                break
    result.update(converged=True, seconds=time.perf_counter() - started)
    return result


def latent_psnr(cached: Any, reference: Any) -> float:
    """10 log10(1 / relative squared error) of the final latents (capped at 100 dB for an exact match)."""
    error = relative_error(cached, reference)
    return 100.0 if error <= 1e-10 else -10.0 * math.log10(error)


def start_schedules(num_steps: int, count: int, warmup: int, profile: Profile | None) -> list[tuple[int, ...]]:
    """The rules the search starts from (the best of them is searched): TaylorSeer's `exact_steps` and even
    spread, and LeMiCa's lexicographic-minimax path where the profile has edge weights."""
    from ..policies.forecast import exact_steps, spread_steps

    starts = [
        tuple(sorted(exact_steps(num_steps, warmup, count))),
        tuple(sorted(spread_steps(num_steps, warmup, count))),
    ]
    edges = profile.arrays.get(keys.LEMICA_EDGES) if profile is not None else None
    if edges is not None and len(edges) == num_steps:
        from ..schedulers.lemica import solve_lexminimax

        try:
            starts.append(tuple(sorted(solve_lexminimax(edges.double().cpu().numpy(), count))))
        except Exception as e:  # noqa: BLE001 - a start rule that fails is only one start less
            logger.info("schedule search: LeMiCa start skipped (%s)", e)
    return list(dict.fromkeys(s for s in starts if len(s) == count and s[0] == 0))


def search_schedules(
    pipe: Any,
    profile: Profile,
    jobs: Sequence[tuple[int, Any, int]],
    call_kwargs: Callable[[Any, int], dict],
    num_steps: int,
    search: ScheduleSearch,
    out: Path | None = None,
    progress: bool = True,
    transformer: Any = None,
) -> dict:
    """Fill `profile.policies["taylorseer"]`: for each of `search.targets` X, the schedule of round(num_steps / X)
    computed steps searched for TaylorSeer at `search.order` and `.coordinate` on `jobs` (index, prompt, seed), each
    search given `search.budget` seconds. A schedule already converged in the section is kept; an unconverged one is
    resumed from its best steps. The profile is saved to `out` after every improvement."""
    order, coordinate, budget = search.order, search.coordinate, search.budget
    transformer = pipe.transformer if transformer is None else transformer
    section = profile.policies.setdefault(keys.TAYLORSEER, SearchedSchedules(num_steps=num_steps).to_dict())
    if section.get("num_steps") != num_steps:
        raise ValueError(
            f"this profile's searched schedules were made for {section.get('num_steps')} steps, this search runs "
            f"{num_steps}: use another --out"
        )
    indices = [index for index, _, _ in jobs]
    if section.get("schedules") and section.get("jobs") not in (None, indices):
        raise ValueError(
            f"this profile's schedules were searched on jobs {section['jobs']}, this search scores {indices}: their "
            "scores would not compare; use the same --search-prompts or another --out"
        )
    section["jobs"] = indices
    found = section.setdefault("schedules", {}).setdefault(searched_key(order, coordinate), {})
    todo = [t for t in sorted(search.targets) if not found.get(str(_count(num_steps, t, order)), {}).get("converged")]
    if not todo:
        return section
    references = [final_output(pipe, call_kwargs(prompt, seed)) for _, prompt, seed in jobs]
    score = _scorer(pipe, transformer, jobs, references, call_kwargs, num_steps, order, coordinate)
    bar = _bar(len(todo), progress)
    try:
        for target in todo:
            count = _count(num_steps, target, order)
            previous = found.get(str(count))
            if previous is not None:
                start = tuple(previous["steps"])
            else:
                start = max(start_schedules(num_steps, count, search.warmup, profile), key=score)
            spent = float(previous.get("seconds", 0.0)) if previous else 0.0
            tried = int(previous.get("tried", 0)) if previous else 0

            def keep(result: dict, spent: float = spent, tried: int = tried, count: int = count) -> None:
                found[str(count)] = {
                    **result, "tried": tried + result["tried"], "seconds": spent + result.get("seconds", 0.0)
                }  # fmt: skip
                if out is not None:
                    profile.save(out)

            keep(local_search(score, start, num_steps, budget, on_improve=keep))
            logger.info(
                "searched %d of %d steps (order %d, %s): %s, %.2f dB, converged %s", count, num_steps, order,
                coordinate, found[str(count)]["steps"], found[str(count)]["score"], found[str(count)]["converged"],
            )  # fmt: skip
            if bar:
                bar.update(1)
    finally:
        if bar:
            bar.close()
    return section


def _count(num_steps: int, target: float, order: int) -> int:
    """The computed steps a schedule for `target` has: round(num_steps / target), at least the history's order + 1."""
    return max(order + 1, min(num_steps, round(num_steps / target)))


def _scorer(pipe, transformer, jobs, references, call_kwargs, num_steps: int, order: int, coordinate: str):
    """score(steps): the mean latent PSNR of TaylorSeer computing exactly `steps` on the jobs (memoized: the search
    meets a schedule again when it scores its starts)."""
    from ..policies.forecast import TaylorSeer

    scores: dict[tuple[int, ...], float] = {}

    def score(steps: tuple[int, ...]) -> float:
        if steps in scores:
            return scores[steps]
        config = TaylorSeer(steps=steps, num_steps=num_steps, order=order, coordinate=coordinate)
        values = []
        for (_, prompt, seed), reference in zip(jobs, references):
            apply(transformer, config, scheduler=pipe.scheduler)
            try:
                cached = final_output(pipe, call_kwargs(prompt, seed))
                computed = sorted(set(stats(transformer).computed_steps()))
            finally:
                remove(transformer)
            if tuple(computed) != steps:
                raise RuntimeError(f"schedule search asked for steps {steps}, the run computed {computed}")
            values.append(latent_psnr(cached, reference))
        scores[steps] = sum(values) / len(values)
        return scores[steps]

    return score


def _bar(total: int, enabled: bool):
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="schedule search", unit="target")
