"""HyCa-style hybrid caching (Zheng et al. 2025): TaylorSeer's schedule, with a solver per unit.

Every unit (each block's attention and MLP output, the places FORA and TaylorSeer cache) is forecast on the steps
between computations by its own solver: reuse (order 0), or a first- or second-order Taylor forecast. The choice is
the solver whose forecasts made the least error on the profile's recorded unit trajectories (`unit_features`,
recorded by `dit-cache calibrate --block-traces`: a strided sample of each unit's output per step) when replayed
under the very schedule of the call (its step count, interval or spread steps, warm-up), with the forecasting
history the run uses (`TaylorHistory`). Error: sum |forecast - recorded| / sum |recorded| over the forecast steps,
summed over the calibration trajectories of the call's branch. A tie goes to the lower order (less memory).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from ..calibration import ProfileError, resolve_profile
from ..calibration.recorder import UNIT_FEATURES, unit_keys
from ..config import (
    PolicyConfig,
    _check_int,
    _check_speedup,
)
from ..state import CallInfo
from .base import ModelContext, register_policy
from .fora import FORAState
from .forecast import TaylorSeerPolicy, computed_steps
from .taylor import TaylorHistory

logger = logging.getLogger(__name__)


HYCA_SOLVERS = (0, 1, 2)  # reuse, first- and second-order Taylor forecast


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


@dataclass
class HyCaState(FORAState):
    orders: dict[tuple[int, str], int] = field(default_factory=dict)  # each unit's solver for this call


def resample_steps(table: torch.Tensor, src, dst) -> torch.Tensor:
    """A (steps, ...) table at other grid positions, linearly interpolated along the steps."""
    steps = table.shape[0]
    position = np.interp(np.asarray(dst, dtype=np.float64), np.asarray(src, dtype=np.float64), np.arange(steps))
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, steps - 1)
    weight = torch.tensor(position - low, dtype=table.dtype).reshape(-1, *([1] * (table.dim() - 1)))
    return table[low] * (1 - weight) + table[high] * weight


def solver_errors(features: torch.Tensor, computed: set[int], solvers: tuple[int, ...]) -> torch.Tensor:
    """(solvers, units, 2): [sum |forecast - feature|, sum |feature|] over the steps not in `computed`, each solver
    forecasting from the computed steps before it (features: (steps, units, samples))."""
    sums = torch.zeros(len(solvers), features.shape[1], 2, dtype=torch.float64)
    for s, order in enumerate(solvers):
        history = TaylorHistory(order)
        for step in range(features.shape[0]):
            feature = features[step]
            if step in computed:
                history.update(feature.clone(), step)
            elif history.ready:
                sums[s, :, 0] += (history.forecast(step) - feature).abs().sum(dim=-1).double()
                sums[s, :, 1] += feature.abs().sum(dim=-1).double()
    return sums


def pick_solvers(sums: torch.Tensor, solvers: tuple[int, ...]) -> list[int]:
    """Per unit, the solver of least relative error; ties (within 1e-6) go to the lowest order."""
    errors = sums[..., 0] / sums[..., 1].clamp_min(1e-30)
    order = sorted(range(len(solvers)), key=lambda s: solvers[s])
    picks = []
    for unit in range(errors.shape[1]):
        best = float(errors[:, unit].min())
        picks.append(next(solvers[s] for s in order if float(errors[s, unit]) <= best * (1 + 1e-6) + 1e-12))
    return picks


@register_policy("hyca", HyCa, level="block", needs_profile="recorded", speedup_by="profile")
class HyCaPolicy(TaylorSeerPolicy):
    def __init__(self, config: HyCa, model: ModelContext) -> None:
        super().__init__(config, model)
        self.units = unit_keys(model.slots)
        self.profile = resolve_profile(config.profile, model.transformer, "hyca", required=True)
        if not self.profile.has_array(UNIT_FEATURES):
            raise ProfileError(
                f"hyca: profile {self.profile.name!r} has no per-unit trajectories to choose solvers on; record one "
                "with `dit-cache calibrate --block-traces ...` and pass profile=PATH (see docs/calibration.md)"
            )
        self._solvers: dict[tuple, dict[tuple[int, str], int]] = {}

    def new_state(self) -> HyCaState:
        return HyCaState()

    def decide(self, call: CallInfo, state: HyCaState, values: list[float]) -> str:
        state.orders = self.solvers_for(call)
        return super().decide(call, state, values)

    def unit_order(self, state: HyCaState, key: tuple[int, str]) -> int:
        return state.orders.get(key, self.order)

    def solvers_for(self, call: CallInfo) -> dict[tuple[int, str], int]:
        key = (call.branch, call.num_steps, tuple(call.sigmas) if call.sigmas else None)
        if key not in self._solvers:
            n = call.num_steps
            interval, steps = self.plan(n)
            computed = set(steps) if steps is not None else set(computed_steps(n, interval, self.config.warmup))
            solvers = tuple(sorted(self.config.solvers))
            dst = self.profile.call_grid(n, call.sigmas)
            sums = None
            for features, grid in self.trajectories(call.branch):
                part = solver_errors(resample_steps(features.float(), grid, dst), computed, solvers)
                sums = part if sums is None else sums + part
            picks = pick_solvers(sums, solvers)
            self._solvers[key] = dict(zip(self.units, picks))
            logger.debug("hyca solvers for %s: %s", key, self._solvers[key])
        return self._solvers[key]

    def trajectories(self, branch: str) -> list[tuple[torch.Tensor, list[float]]]:
        """(steps, units, samples) recorded unit features and their grid, of `branch` if recorded, else of all."""
        found: dict[str, list] = {}
        for record in self.profile.job_records():
            for name in record.branches:
                table = self.profile.record_table(record.index, name, UNIT_FEATURES)
                grid = self.profile.grid(name)
                if table is not None and grid is not None and table.shape[:2] == (len(grid), len(self.units)):
                    found.setdefault(name, []).append((table, grid))
        chosen = found.get(branch) or [t for tables in found.values() for t in tables]
        if not chosen:
            raise ProfileError(
                f"hyca: profile {self.profile.name!r} has no unit trajectories for the {len(self.units)} attention/MLP "
                "units of this model; recalibrate with --block-traces"
            )
        return chosen
