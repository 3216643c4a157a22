"""LeMiCa (Gao et al. 2025): the schedule policy with its steps solved on a profile's edge weights by the
lexicographic-minimax path, for each call's own step count."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..calibration import ProfileError, keys, resolve_profile
from ..calibration.resample import position_grid, resample_edges
from ..calibration.sections import LeMiCaSection
from ..config import PolicyConfig, _check_int, _check_order, _check_speedup
from ..schedulers.lemica import ScheduleError, budget_for_speedup, solve_lexminimax
from ..schedulers.targets import check_reached
from ..state import COMPUTE, REUSE, CallInfo
from .base import ModelContext, register_policy
from .schedule import SchedulePolicy, map_steps
from .step import SegmentPolicy, SegmentState

logger = logging.getLogger(__name__)


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


@register_policy("lemica", LeMiCa, level="step", needs_profile="required", speedup_by="profile", in_default_eval=True)
class LeMiCaPolicy(SchedulePolicy):
    """The schedule policy, with its steps solved for each call's own step count on the profile's LeMiCa edge
    weights (resampled over the trajectory: `resample_edges`), or mapped from a published schedule."""

    def __init__(self, config: LeMiCa, model: ModelContext) -> None:
        SegmentPolicy.__init__(self, config, model)
        self.speedup = None  # the budget, not a threshold, carries the target here
        self._mapped = {}
        self.profile = resolve_profile(config.profile, model.transformer, "lemica", required=True)
        data = self.profile.section(LeMiCaSection) or LeMiCaSection()
        self.written_for = int(data.num_steps or 0) or None
        self.edges = self.profile.arrays.get(keys.LEMICA_EDGES)
        measured = self.profile.arrays.get(keys.lemica_edges(config.forecast)) if config.forecast else None
        if measured is not None:  # edges measured with the forecast this run uses: its schedule minimizes that error
            self.edges = measured
        elif config.forecast and self.edges is not None and data.mode == "global":
            logger.info(
                "lemica: forecast=%d runs on edges measured without forecasting; calibrate with --lemica-forecast "
                "0 %d for a schedule solved on the error it makes", config.forecast, config.forecast,
            )  # fmt: skip
        self.steps = ()
        if self.edges is None:
            schedules = {int(b): s for b, s in (data.schedules or {}).items()}
            if not schedules or self.written_for is None:
                raise ProfileError(f"profile {self.profile.name!r} has no LeMiCa edge weights; calibrate with --lemica")
            budget = config.budget or (
                budget_for_speedup(self.written_for, config.speedup) if config.speedup else max(schedules)
            )
            if budget not in schedules:
                raise ScheduleError(
                    f"lemica: profile {self.profile.name!r} only has published schedules for budgets "
                    f"{sorted(schedules)} at {self.written_for} steps (asked: {budget}); calibrate edge weights for "
                    "others"
                )
            self.steps = tuple(schedules[budget])

    def steps_for_call(self, call: CallInfo) -> frozenset[int]:
        steps = call.expert_steps or range(call.num_steps)
        key = ("lemica", call.num_steps, tuple(call.sigmas) if call.sigmas else None, steps.start, steps.stop)
        if key not in self._tuned:
            self._tuned[key] = self._solve(call.num_steps, call.sigmas, steps)
        return self._tuned[key]

    def _solve(self, num_steps: int, sigmas: list[float] | None, steps: range) -> frozenset[int]:
        """The computed steps among `steps`: all of the trajectory, or one expert's where experts share it (Wan 2.2
        A14B): that expert's path runs from its first step to its last on the edge weights of its own steps, with
        its share of the budget, so both experts together reach the target over all steps."""
        config = self.config
        count = len(steps)
        if self.edges is None:  # a published schedule, moved to the same trajectory positions
            mapped = map_steps(self.steps, self.written_for, num_steps)
            chosen = frozenset(s for s in mapped if s in steps) | {steps.start}
        else:
            budget = self._budget(count if config.budget is None else num_steps)
            if count < num_steps and config.budget is not None:  # one expert's share of budget=, at least 2 steps
                budget = min(count, max(min(2, count), round(budget * count / num_steps)))
            edges = self.edges.double().numpy()
            src = self._edge_grid(edges.shape[0])
            grid = self.profile.call_grid(num_steps, sigmas)[steps.start : steps.stop]
            chosen = frozenset(steps.start + s for s in solve_lexminimax(resample_edges(edges, src, grid), budget))
        if config.speedup is not None:
            least = min(2, count)
            check_reached(
                "lemica", config.speedup, len(chosen) / count, count,
                f"compute fractions {least / count:.3f}-1 in steps of 1/{count}"
                if self.edges is not None else f"{len(chosen)} of {count} steps (a published schedule)",
                "Ask for a speedup near one of them, or run more steps (finer steps)"
                if self.edges is not None else "Calibrate edge weights for other targets (dit-cache calibrate)",
            )  # fmt: skip
        return chosen

    def _budget(self, num_steps: int) -> int:
        config = self.config
        if config.budget is None:
            return 1 if num_steps == 1 else budget_for_speedup(num_steps, config.speedup or 2.0)
        if config.budget > num_steps:
            raise ScheduleError(
                f"lemica: budget={config.budget} computed steps is more than the {num_steps} steps of this call; "
                f"pass budget <= {num_steps}, or speedup= (its budget follows the step count)"
            )
        return config.budget

    def _edge_grid(self, size: int) -> np.ndarray:
        """The calibration grid the edge weights are indexed by (the recorded branches' grid)."""
        for data in self.profile.branches.values():
            grid = data.get(keys.GRID)
            if grid is not None and len(grid) == size:
                return np.asarray(grid, dtype=np.float64)
        return position_grid(size)

    def rule(self, call: CallInfo, state: SegmentState) -> str:
        return COMPUTE if call.step in self.steps_for_call(call) else REUSE

    def forced(self, call: CallInfo, state: SegmentState) -> bool:
        self.steps_for_call(call)  # an unreachable target fails on the first call, before anything is cached
        return SegmentPolicy.forced(self, call, state)
