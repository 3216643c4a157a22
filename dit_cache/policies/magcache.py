"""MagCache (Ma et al. 2025): the segment mechanism of step.py, skipped while the error accumulated from the
calibrated magnitude ratios of the residual stays under a threshold."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..calibration import keys, resolve_profile
from ..calibration.sections import MagCacheDefaults
from ..config import PolicyConfig, _check_fraction, _check_int, _check_number, _check_order, _check_speedup
from ..schedulers.budget import ValuesFor
from ..state import COMPUTE, REUSE, CallInfo
from .base import ModelContext, register_policy
from .step import SegmentPolicy, SegmentState


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


@dataclass
class MagCacheState(SegmentState):
    ratio: float = 1.0
    error: float = 0.0
    steps: int = 0


@register_policy(
    "magcache", MagCache, level="step", needs_profile="required", speedup_by="profile", in_default_eval=True
)
class MagCachePolicy(SegmentPolicy):
    """After the retention steps: R *= ratio_t, k += 1, E += |1 - R|; reuse while E < threshold and k <= K."""

    state_class = MagCacheState

    def __init__(self, config: MagCache, model: ModelContext) -> None:
        super().__init__(config, model)
        self.profile = resolve_profile(config.profile, model.transformer, "magcache", required=True)
        if not self.profile.has(keys.MAG_RATIO):
            raise ValueError(
                f"profile {self.profile.name!r} has no MagCache ratios; recalibrate it with dit-cache calibrate"
            )
        defaults = self.profile.section(MagCacheDefaults) or MagCacheDefaults()
        self.threshold = config.threshold if config.threshold is not None else defaults.threshold
        self.max_steps = config.max_skip if config.max_skip is not None else defaults.max_skip
        if self.speedup is not None and config.max_skip is None:
            # long enough runs of reuse for the target (K is the paper's cap on consecutive skips)
            self.max_steps = max(self.max_steps, math.ceil(2 * self.speedup))
        self.retention = config.retention if config.retention is not None else defaults.retention
        self.max_skip = None  # the rule's k <= K is the cap
        self._ratios: dict[tuple, np.ndarray] = {}
        self.check_ceiling_at_apply(
            f"computing the first retention={self.retention:g} of the steps and at least one step in every "
            f"{self.max_steps + 1} (max_skip={self.max_steps})",
            "Ask for less, or lower retention / raise max_skip",
        )

    def replay_traces(self, num_steps: int, sigmas: list[float] | None) -> list[tuple[str, ValuesFor]]:
        branches = [b for b, data in self.profile.branches.items() if keys.MAG_RATIO in data]
        return [(b, lambda step, state: []) for b in branches]

    def ratios(self, call: CallInfo) -> np.ndarray:
        key = (call.branch, call.num_steps, tuple(call.sigmas) if call.sigmas else None)
        if key not in self._ratios:
            self._ratios[key] = self.profile.per_step(call.branch, keys.MAG_RATIO, call.num_steps, call.sigmas)
        return self._ratios[key]

    def forced(self, call: CallInfo, state: MagCacheState) -> bool:
        return super().forced(call, state) or call.step < int(self.retention * call.num_steps)

    def rule(self, call: CallInfo, state: MagCacheState) -> str:
        state.ratio *= float(self.ratios(call)[call.step])
        state.steps += 1
        state.error += abs(1.0 - state.ratio)
        call.record.indicator = state.error
        return REUSE if state.error < self.threshold_at(call) and state.steps <= self.max_steps else COMPUTE

    def on_compute(self, call: CallInfo, state: MagCacheState) -> None:
        state.ratio, state.error, state.steps = 1.0, 0.0, 0
