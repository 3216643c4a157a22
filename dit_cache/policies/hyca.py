"""HyCa-style hybrid caching (Zheng et al. 2025): TaylorSeer's schedule, with a solver per unit.

Every unit (each block's attention and MLP output, the places FORA and TaylorSeer cache) is forecast on the steps
between computations by its own solver: reuse (order 0), or a first- or second-order Taylor forecast. Which one, in
this order of precedence:

1. `unit_solvers=` given: those.
2. The profile holds an assignment searched for this very schedule (its step count and computed steps) on the final
   output (`dit-cache calibrate --hyca-targets`, calibration/hyca_search.py: starting from the best of orders 0, 1, 2
   applied uniformly, a coordinate descent over the units, each trial a real run of the calibration jobs scored by
   the relative error of its final latents): that assignment, if it uses only solvers among `solvers`.
3. Else the unit-trajectory rule: the solver whose forecasts made the least error on the profile's recorded unit
   trajectories (`unit_features`, recorded by `dit-cache calibrate --block-traces`: a strided sample of each unit's
   output per step) when replayed under the call's schedule with the run's forecasting history (`TaylorHistory`).
   Error: sum |forecast - recorded| / sum |recorded| over the forecast steps, summed over the calibration
   trajectories of the call's branch. A tie goes to the lower order (less memory). This rule sees a unit's own error,
   not the error it causes in the output, and scores below uniform order 2 on the zoo models (docs/policies.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from ..calibration import ProfileError, resolve_profile
from ..calibration.recorder import UNIT_FEATURES, unit_keys
from ..calibration.sections import HyCaSection, hyca_schedule_key
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
    the least error in the final output of the calibration jobs under this very schedule (searched by
    `dit-cache calibrate --hyca-targets`), else the least error on the units' own recorded trajectories (recorded
    with `dit-cache calibrate --block-traces`).

    speedup: picks the interval, as TaylorSeer's.
    unit_solvers: one solver per unit (in `unit_keys` order: block, then submodule name) instead of the profile's
        choice; no profile is needed then.
    choose: "output" (the assignment searched on the output for this schedule, else the unit-trajectory rule) or
        "trajectories" (always the unit-trajectory rule, HyCa's own per-feature criterion).
    """

    interval: int | None = None
    warmup: int = 2
    solvers: tuple[int, ...] = HYCA_SOLVERS
    profile: Any = None
    speedup: float | None = None
    unit_solvers: tuple[int, ...] | None = None
    choose: str = "output"

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
        if self.unit_solvers is not None:
            given = tuple(self.unit_solvers) if isinstance(self.unit_solvers, (list, tuple)) else None
            if not given or any(isinstance(s, bool) or s not in solvers for s in given):
                raise ValueError(
                    f"hyca: unit_solvers must be a non-empty list of one solver per unit, each among solvers={solvers}, "
                    f"got {self.unit_solvers!r}"
                )
            object.__setattr__(self, "unit_solvers", given)
        if self.choose not in ("output", "trajectories"):
            raise ValueError(f"hyca: choose must be 'output' or 'trajectories', got {self.choose!r}")
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
        given = config.unit_solvers
        if given is not None and len(given) != len(self.units):
            raise ValueError(
                f"hyca: unit_solvers has {len(given)} solvers, this model has {len(self.units)} attention/MLP units "
                f"({', '.join(f'{b}.{n}' for b, n in self.units)}): give one per unit, in that order"
            )
        self.profile = resolve_profile(config.profile, model.transformer, "hyca", required=given is None)
        by_output = self.profile is not None and config.choose == "output"
        self.searched = self.profile.section(HyCaSection) if by_output else None
        if given is None and self.searched is None and not self.profile.has_array(UNIT_FEATURES):
            raise ProfileError(
                f"hyca: profile {self.profile.name!r} has neither solver assignments searched on the output nor "
                "per-unit trajectories to choose solvers on; record one with `dit-cache calibrate --block-traces "
                "--hyca-targets 2 3 ...` and pass profile=PATH (see docs/calibration.md)"
            )
        self._solvers: dict[tuple, dict[tuple[int, str], int]] = {}
        self.sources: dict[tuple, str] = {}  # per call key: "given", "output search" or "unit trajectories"

    def new_state(self) -> HyCaState:
        return HyCaState()

    def decide(self, call: CallInfo, state: HyCaState, values: list[float]) -> str:
        state.orders = self.solvers_for(call)
        return super().decide(call, state, values)

    def unit_order(self, state: HyCaState, key: tuple[int, str]) -> int:
        return state.orders.get(key, self.order)

    def computed(self, num_steps: int) -> list[int]:
        """The steps this schedule computes in a call of `num_steps` steps."""
        interval, steps = self.plan(num_steps)
        return sorted(steps) if steps is not None else computed_steps(num_steps, interval, self.config.warmup)

    def solvers_for(self, call: CallInfo) -> dict[tuple[int, str], int]:
        key = (call.branch, call.num_steps, tuple(call.sigmas) if call.sigmas else None)
        if key not in self._solvers:
            computed = self.computed(call.num_steps)
            picks, source = self.config.unit_solvers, "given"
            if picks is None:
                picks, source = self.searched_solvers(call.num_steps, computed), "output search"
            if picks is None:
                picks, source = self.trajectory_solvers(call, set(computed)), "unit trajectories"
            self._solvers[key] = dict(zip(self.units, picks))
            self.sources[key] = source
            logger.debug("hyca solvers for %s (%s): %s", key, source, self._solvers[key])
        return self._solvers[key]

    def searched_solvers(self, num_steps: int, computed: list[int]) -> list[int] | None:
        """The assignment searched on the output for this schedule, if the profile has one this call may use."""
        if self.searched is None:
            return None
        found = (self.searched.assignments or {}).get(hyca_schedule_key(num_steps, computed))
        labels = [f"{b}.{n}" for b, n in self.units]
        if found is None or (self.searched.units is not None and self.searched.units != labels):
            return None
        if not set(found["solvers"]) <= set(self.config.solvers):
            return None
        return list(found["solvers"])

    def trajectory_solvers(self, call: CallInfo, computed: set[int]) -> list[int]:
        """Per unit, the solver of least error on its own recorded trajectories (rule 3 of the module doc)."""
        if not self.profile.has_array(UNIT_FEATURES):
            raise ProfileError(
                f"hyca: profile {self.profile.name!r} has no solver assignment searched for this schedule "
                f"({hyca_schedule_key(call.num_steps, sorted(computed))}: searched "
                f"{sorted((self.searched.assignments or {}) if self.searched else [])}) and no per-unit trajectories; "
                "calibrate with --hyca-targets at this speedup and step count, or with --block-traces"
            )
        solvers = tuple(sorted(self.config.solvers))
        dst = self.profile.call_grid(call.num_steps, call.sigmas)
        sums = None
        for features, grid in self.trajectories(call.branch):
            part = solver_errors(resample_steps(features.float(), grid, dst), computed, solvers)
            sums = part if sums is None else sums + part
        return pick_solvers(sums, solvers)

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
