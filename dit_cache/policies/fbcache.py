"""First-block probe (FBCache / DBCache): the segment mechanism of step.py after the front blocks, skipped while
the front blocks' residual barely changed since the last computed step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..adapters import BlockCall
from ..calibration import keys, resolve_profile
from ..calibration.resample import resample_matrix
from ..config import PolicyConfig, _check_int, _check_number, _check_order, _check_speedup
from ..engine import BlockSlot
from ..schedulers.budget import ValuesFor
from ..state import COMPUTE, REUSE, CallInfo
from .base import ModelContext, register_policy
from .step import SegmentPolicy, SegmentState, rel_l1_rows, rel_l1_value


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


@dataclass
class FBCacheState(SegmentState):
    front_residual: torch.Tensor | None = None  # of the last computed step


@register_policy("fbcache", FBCache, level="step", needs_profile="optional", speedup_by="profile", in_default_eval=True)
class FBCachePolicy(SegmentPolicy):
    """Run the front blocks; reuse the middle while rel_l1(front residual, its value at the last compute) < threshold."""

    state_class = FBCacheState

    def __init__(self, config: FBCache, model: ModelContext) -> None:
        super().__init__(config, model, start=config.front_blocks, back=config.back_blocks)
        self.threshold = config.threshold
        self.profile = None
        if self.speedup is not None:
            self.profile = self._traced_profile(
                resolve_profile(config.profile, model.transformer, "fbcache"), "first-block residual distances"
            )
            if config.front_blocks != 1:
                raise ValueError("fbcache: speedup targets are calibrated for front_blocks=1")
            self.check_ceiling_at_apply(
                f"running front_blocks={config.front_blocks} and back_blocks={config.back_blocks} on every step"
                + (f" and the cached blocks on one step in every {self.max_skip + 1}" if self.max_skip is not None else ""),
                "Ask for less, or lower back_blocks" + (" / raise max_skip" if self.max_skip is not None else ""),
            )  # fmt: skip

    def replay_traces(self, num_steps: int, sigmas: list[float] | None) -> list[tuple[str, ValuesFor]]:
        profile = self.profile
        dst = profile.call_grid(num_steps, sigmas)
        traces = []
        for record in profile.job_records():
            for branch in record.branches:
                pairs = profile.arrays[keys.record_array(record.index, branch, keys.FB_PAIRS)].numpy()
                full = np.tril(pairs, -1) + np.tril(pairs, -1).T  # symmetric, so interpolation sees both sides
                matrix = resample_matrix(full, profile.grid(branch), dst)

                def values_for(step, state, matrix=matrix):
                    last = state.last_computed
                    return [] if last is None else [float(matrix[step, last]), 1.0]

                traces.append((branch, values_for))
        return traces

    def probe(self, call: CallInfo, state: Any, slot: BlockSlot, block: BlockCall) -> torch.Tensor | None:
        front = block.hidden - call.record.stack_input[0]
        call.record.payload = front
        previous = state.front_residual if state is not None else None
        if previous is None or previous.shape != front.shape:
            return None
        return rel_l1_rows(front, previous)

    def observe(self, call: CallInfo, state: FBCacheState, values: list[float]) -> None:
        call.record.indicator = rel_l1_value(values)

    def forced(self, call: CallInfo, state: FBCacheState) -> bool:
        return super().forced(call, state) or call.record.indicator is None

    def rule(self, call: CallInfo, state: FBCacheState) -> str:
        return REUSE if call.record.indicator < self.threshold_at(call) else COMPUTE

    def on_compute(self, call: CallInfo, state: FBCacheState) -> None:
        state.front_residual = call.record.payload
