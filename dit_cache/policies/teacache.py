"""TeaCache (Liu et al. 2024): the segment mechanism of step.py, skipped while the accumulated, polynomial-rescaled
change of a cheap timestep-modulated indicator stays under a threshold."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..adapters import BlockCall
from ..calibration import resolve_profile
from ..calibration.resample import resample_increments
from ..calibration.sections import TeaCacheFit
from ..config import PolicyConfig, _check_int, _check_number, _check_order, _check_speedup
from ..engine import BlockSlot
from ..schedulers.budget import ValuesFor
from ..state import COMPUTE, REUSE, CallInfo
from .base import ModelContext, register_policy
from .step import SegmentPolicy, SegmentState, rel_l1_rows, rel_l1_value

# TeaCache without a fitted polynomial: the output change is taken to equal the indicator change.
IDENTITY_COEFFICIENTS = (0.0, 0.0, 0.0, 1.0, 0.0)
IDENTITY_DEFAULT_THRESHOLD = 0.1
POLYNOMIAL_DEFAULT_THRESHOLD = 0.1


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


@dataclass
class TeaCacheState(SegmentState):
    previous_indicator: torch.Tensor | None = None
    accumulated: float = 0.0


@register_policy(
    "teacache", TeaCache, level="step", needs_profile="optional", speedup_by="profile", in_default_eval=True
)
class TeaCachePolicy(SegmentPolicy):
    """acc += max(0, poly(rel_l1(I_t, I_prev))); reuse while acc < threshold; first, last and warm-up steps computed."""

    state_class = TeaCacheState

    def __init__(self, config: TeaCache, model: ModelContext) -> None:
        super().__init__(config, model)
        profile = resolve_profile(config.profile, model.transformer, "teacache")
        data = profile.section(TeaCacheFit) if profile is not None else None
        self.profile = profile
        if data:
            self.coefficients = tuple(data.coefficients)
            default = data.threshold or POLYNOMIAL_DEFAULT_THRESHOLD
            self.warmup = float(data.warmup or 0.0)
        else:
            self.coefficients = IDENTITY_COEFFICIENTS
            default = IDENTITY_DEFAULT_THRESHOLD
            self.warmup = 0.0
        self.threshold = config.threshold if config.threshold is not None else default
        if self.speedup is not None:
            self._check_speedup_source(data)
            self.check_ceiling_at_apply(
                "computing the first and last steps"
                + (f", the warm-up ({self.warmup:g} of the steps)" if self.warmup else "")
                + (f" and at least one step in every max_skip + 1 = {self.max_skip + 1}" if self.max_skip is not None else ""),
                "Ask for less" + (" or raise max_skip" if self.max_skip is not None else ""),
            )  # fmt: skip

    def _check_speedup_source(self, data: TeaCacheFit | None) -> None:
        table = data.threshold_speedups if data else None
        if self.profile is not None and self.profile.records:
            return
        if table:  # published threshold -> speedup pairs: interpolate instead of replaying
            pairs = sorted((float(s), float(t)) for t, s in table.items())
            speeds, thresholds = zip(*pairs)
            if not speeds[0] <= self.speedup <= speeds[-1]:
                raise ValueError(
                    f"teacache: speedup={self.speedup} is outside the published range {speeds[0]}-{speeds[-1]}x of "
                    f"profile {self.profile.name!r}; calibrate this model for other targets"
                )
            self.threshold = float(np.interp(self.speedup, speeds, thresholds))
            self.speedup = None
            return
        self._traced_profile(self.profile, "TeaCache indicator changes")

    def replay_traces(self, num_steps: int, sigmas: list[float] | None) -> list[tuple[str, ValuesFor]]:
        profile = self.profile
        dst = profile.call_grid(num_steps, sigmas)
        traces = []
        for record in profile.job_records():
            for branch, data in record.branches.items():
                grid = profile.grid(branch)
                x = resample_increments(data.x, grid, dst)
                traces.append((branch, lambda step, state, x=x: [x[step], 1.0] if step > 0 else []))
        return traces

    def rescale(self, distance: float) -> float:
        # Published polynomials go negative outside their fitted range: clamp at 0.
        return max(0.0, float(np.polyval(self.coefficients, distance)))

    def probe(self, call: CallInfo, state: Any, slot: BlockSlot, block: BlockCall) -> torch.Tensor | None:
        indicator = self.model.spec.indicator(slot.module, block).detach()
        call.record.payload = indicator
        previous = state.previous_indicator if state is not None else None
        if previous is None or previous.shape != indicator.shape:
            return None
        return rel_l1_rows(indicator, previous)

    def observe(self, call: CallInfo, state: TeaCacheState, values: list[float]) -> None:
        state.previous_indicator = call.record.payload
        call.record.indicator = rel_l1_value(values)

    def forced(self, call: CallInfo, state: TeaCacheState) -> bool:
        warmup_steps = math.ceil(self.warmup * call.num_steps - 1e-9)
        return (
            super().forced(call, state)
            or call.record.indicator is None
            or call.step == 0
            or call.step == call.last_step
            or call.step < warmup_steps
        )

    def rule(self, call: CallInfo, state: TeaCacheState) -> str:
        state.accumulated += self.rescale(call.record.indicator)
        return REUSE if state.accumulated < self.threshold_at(call) else COMPUTE

    def on_compute(self, call: CallInfo, state: TeaCacheState) -> None:
        state.accumulated = 0.0
