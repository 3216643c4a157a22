"""Step-level policies: the blocks [start, end) are one cached segment, computed as a whole or replaced by their
input plus the residual stored at the last computed step. TeaCache, MagCache, the first-block probe and fixed
schedules differ only in their decision rule; the segment mechanism below serves them all.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import kernels
from ..adapters import BlockCall
from ..calibration import resolve_profile
from ..config import FBCache, MagCache, PolicyConfig, Schedule, TeaCache
from ..engine import BlockSlot
from ..state import COMPUTE, REUSE, CallInfo
from .base import ModelContext, Policy, policy_for

# TeaCache without a fitted polynomial: the output change is taken to equal the indicator change.
IDENTITY_COEFFICIENTS = (0.0, 0.0, 0.0, 1.0, 0.0)
IDENTITY_DEFAULT_THRESHOLD = 0.1
POLYNOMIAL_DEFAULT_THRESHOLD = 0.1
_EPS = 1e-12


def rel_l1_value(values: list[float]) -> float | None:
    """sum|a - b| / sum|b| from the two read sums, or None when there was nothing to compare."""
    if len(values) < 2:
        return None
    num, den = values[0], values[1]
    if den <= _EPS:
        return 0.0 if num <= _EPS else math.inf
    return num / den


@dataclass
class SegmentState:
    residual: tuple[torch.Tensor, torch.Tensor | None] | None = None  # (hidden, encoder) output minus input
    encoder_out: bool = False  # whether the segment's last block returns an encoder stream
    last_computed: int | None = None
    skips: int = 0  # consecutive calls not computed


class SegmentPolicy(Policy):
    """Caches blocks [start, len - back) as one unit. Subclasses give the rule: `observe` what the probe measured,
    `rule` when not `forced`, and `on_compute` to reset their accumulators."""

    state_class = SegmentState

    def __init__(self, config: PolicyConfig, model: ModelContext, *, start: int = 0, back: int = 0) -> None:
        super().__init__(config, model)
        count = len(model.slots)
        self.start, self.end = start, count - back
        if not 0 <= self.start < self.end <= count:
            raise ValueError(
                f"{config.policy_name}: the model has {count} blocks; front/back blocks leave no block to cache "
                f"(start={start}, back={back})"
            )
        self.decision_block = start
        self.segment_units = sum(slot.units for slot in model.slots[self.start : self.end])
        self.max_skip = getattr(config, "max_skip", None)

    def new_state(self) -> Any:
        return self.state_class()

    # ------------------------------------------------------------------------------------------------ decision
    def observe(self, call: CallInfo, state: Any, values: list[float]) -> None:
        pass

    def forced(self, call: CallInfo, state: Any) -> bool:
        return state.residual is None or (self.max_skip is not None and state.skips >= self.max_skip)

    def rule(self, call: CallInfo, state: Any) -> str:
        return COMPUTE

    def on_compute(self, call: CallInfo, state: Any) -> None:
        pass

    def decide(self, call: CallInfo, state: Any, values: list[float]) -> str:
        self.observe(call, state, values)
        decision = COMPUTE if self.forced(call, state) else self.rule(call, state)
        if decision == COMPUTE:
            self.on_compute(call, state)
            state.skips = 0
            state.last_computed = call.step
        else:
            state.skips += 1
        return decision

    # ------------------------------------------------------------------------------------------------ mechanism
    def run_block(self, call: CallInfo, state: Any, slot: BlockSlot, forward: Callable, block: BlockCall) -> Any:
        i = slot.index
        if i == 0:
            call.stack_input = (block.hidden, block.encoder)
        if i < self.start or i >= self.end or state is None:
            return forward(*block.args, **block.kwargs)
        if i == self.start:
            call.segment_input = (block.hidden, block.encoder)
        if call.decision == COMPUTE:
            output = forward(*block.args, **block.kwargs)
            if i == self.end - 1:
                self.store(call, state, slot, output)
            return output
        if i == self.start:
            call.skipped_units += self.segment_units
        if i < self.end - 1:  # a skipped block hands its input on unchanged
            return slot.group.make_output(block.hidden, block.encoder)
        return slot.group.make_output(*self.replay(call, state))

    def store(self, call: CallInfo, state: Any, slot: BlockSlot, output: Any) -> None:
        hidden_out, encoder_out = slot.group.split_output(output)
        hidden_in, encoder_in = call.segment_input
        if hidden_out.shape != hidden_in.shape:
            raise RuntimeError(
                f"{self.name}: the cached blocks change the hidden-state shape ({tuple(hidden_in.shape)} -> "
                f"{tuple(hidden_out.shape)}); this model needs an adapter whose segment keeps the layout"
            )
        # Write into the previous residual's buffer, unless autograd is recording (in-place would break it).
        old = state.residual if state.residual is not None and not torch.is_grad_enabled() else (None, None)
        hidden_res = kernels.store_residual(hidden_out, hidden_in, old[0])
        encoder_res = None
        if encoder_out is not None and encoder_in is not None and encoder_out.shape == encoder_in.shape:
            encoder_res = kernels.store_residual(encoder_out, encoder_in, old[1])
        state.residual = (hidden_res, encoder_res)
        state.encoder_out = encoder_out is not None

    def replay(self, call: CallInfo, state: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        hidden_in, encoder_in = call.segment_input
        hidden_res, encoder_res = state.residual
        hidden = kernels.apply_residual(hidden_in, hidden_res)
        if not state.encoder_out:
            encoder = None
        elif encoder_res is None:
            encoder = encoder_in
        else:
            encoder = kernels.apply_residual(encoder_in, encoder_res)
        return hidden, encoder


# ---------------------------------------------------------------------------------------------------- TeaCache
@dataclass
class TeaCacheState(SegmentState):
    previous_indicator: torch.Tensor | None = None
    accumulated: float = 0.0


@policy_for(TeaCache)
class TeaCachePolicy(SegmentPolicy):
    """acc += max(0, poly(rel_l1(I_t, I_prev))); reuse while acc < threshold; first, last and warm-up steps computed."""

    state_class = TeaCacheState

    def __init__(self, config: TeaCache, model: ModelContext) -> None:
        super().__init__(config, model)
        profile = resolve_profile(config.profile, model.transformer, "teacache")
        data = profile.policies.get("teacache") if profile is not None else None
        self.profile = profile
        if data:
            self.coefficients = tuple(data["coefficients"])
            default = data.get("threshold") or POLYNOMIAL_DEFAULT_THRESHOLD
            self.warmup = float(data.get("warmup") or 0.0)
        else:
            self.coefficients = IDENTITY_COEFFICIENTS
            default = IDENTITY_DEFAULT_THRESHOLD
            self.warmup = 0.0
        self.threshold = config.threshold if config.threshold is not None else default

    def rescale(self, distance: float) -> float:
        # Published polynomials go negative outside their fitted range: clamp at 0.
        return max(0.0, float(np.polyval(self.coefficients, distance)))

    def probe(self, call: CallInfo, state: Any, slot: BlockSlot, block: BlockCall) -> torch.Tensor | None:
        indicator = self.model.spec.indicator(slot.module, block).detach()
        call.payload = indicator
        previous = state.previous_indicator if state is not None else None
        if previous is None or previous.shape != indicator.shape:
            return None
        return kernels.rel_l1_parts(indicator, previous)

    def observe(self, call: CallInfo, state: TeaCacheState, values: list[float]) -> None:
        state.previous_indicator = call.payload
        call.indicator = rel_l1_value(values)

    def forced(self, call: CallInfo, state: TeaCacheState) -> bool:
        warmup_steps = math.ceil(self.warmup * call.num_steps - 1e-9)
        return (
            super().forced(call, state)
            or call.indicator is None
            or call.step == 0
            or call.step == call.last_step
            or call.step < warmup_steps
        )

    def rule(self, call: CallInfo, state: TeaCacheState) -> str:
        state.accumulated += self.rescale(call.indicator)
        return REUSE if state.accumulated < self.threshold else COMPUTE

    def on_compute(self, call: CallInfo, state: TeaCacheState) -> None:
        state.accumulated = 0.0


# ---------------------------------------------------------------------------------------------------- MagCache
@dataclass
class MagCacheState(SegmentState):
    ratio: float = 1.0
    error: float = 0.0
    steps: int = 0


@policy_for(MagCache)
class MagCachePolicy(SegmentPolicy):
    """After the retention steps: R *= ratio_t, k += 1, E += |1 - R|; reuse while E < threshold and k <= K."""

    state_class = MagCacheState

    def __init__(self, config: MagCache, model: ModelContext) -> None:
        super().__init__(config, model)
        self.profile = resolve_profile(config.profile, model.transformer, "magcache", required=True)
        if not self.profile.has("mag_ratio"):
            raise ValueError(
                f"profile {self.profile.name!r} has no MagCache ratios; recalibrate it with dit-cache calibrate"
            )
        defaults = self.profile.policies.get("magcache", {})
        self.threshold = config.threshold if config.threshold is not None else defaults.get("threshold", 0.12)
        self.max_steps = config.max_skip if config.max_skip is not None else defaults.get("max_skip", 2)
        self.retention = config.retention if config.retention is not None else defaults.get("retention", 0.2)
        self.max_skip = None  # the rule's k <= K is the cap
        self._ratios: dict[tuple, np.ndarray] = {}

    def ratios(self, call: CallInfo) -> np.ndarray:
        key = (call.branch, call.num_steps, tuple(call.sigmas) if call.sigmas else None)
        if key not in self._ratios:
            self._ratios[key] = self.profile.per_step(call.branch, "mag_ratio", call.num_steps, call.sigmas)
        return self._ratios[key]

    def forced(self, call: CallInfo, state: MagCacheState) -> bool:
        return super().forced(call, state) or call.step < int(self.retention * call.num_steps)

    def rule(self, call: CallInfo, state: MagCacheState) -> str:
        state.ratio *= float(self.ratios(call)[call.step])
        state.steps += 1
        state.error += abs(1.0 - state.ratio)
        call.indicator = state.error
        return REUSE if state.error < self.threshold and state.steps <= self.max_steps else COMPUTE

    def on_compute(self, call: CallInfo, state: MagCacheState) -> None:
        state.ratio, state.error, state.steps = 1.0, 0.0, 0


# ---------------------------------------------------------------------------------------------------- first block
@dataclass
class FBCacheState(SegmentState):
    front_residual: torch.Tensor | None = None  # of the last computed step


@policy_for(FBCache)
class FBCachePolicy(SegmentPolicy):
    """Run the front blocks; reuse the middle while rel_l1(front residual, its value at the last compute) < threshold."""

    state_class = FBCacheState

    def __init__(self, config: FBCache, model: ModelContext) -> None:
        super().__init__(config, model, start=config.front_blocks, back=config.back_blocks)
        self.threshold = config.threshold

    def probe(self, call: CallInfo, state: Any, slot: BlockSlot, block: BlockCall) -> torch.Tensor | None:
        front = block.hidden - call.stack_input[0]
        call.payload = front
        previous = state.front_residual if state is not None else None
        if previous is None or previous.shape != front.shape:
            return None
        return kernels.rel_l1_parts(front, previous)

    def observe(self, call: CallInfo, state: FBCacheState, values: list[float]) -> None:
        call.indicator = rel_l1_value(values)

    def forced(self, call: CallInfo, state: FBCacheState) -> bool:
        return super().forced(call, state) or call.indicator is None

    def rule(self, call: CallInfo, state: FBCacheState) -> str:
        return REUSE if call.indicator < self.threshold else COMPUTE

    def on_compute(self, call: CallInfo, state: FBCacheState) -> None:
        state.front_residual = call.payload


# ---------------------------------------------------------------------------------------------------- schedule
def map_steps(steps: tuple[int, ...], written_for: int | None, num_steps: int) -> frozenset[int]:
    """The listed steps for a call of `num_steps` steps: as they are, or moved to the same trajectory position."""
    if written_for is None or written_for == num_steps:
        if steps[-1] >= num_steps:
            raise ValueError(
                f"schedule: step {steps[-1]} is out of range for a {num_steps}-step call (valid: 0..{num_steps - 1}); "
                "pass num_steps=<the step count the list was written for> to map it onto other step counts"
            )
        return frozenset(steps)
    if written_for == 1 or num_steps == 1:
        return frozenset({0})
    scale = (num_steps - 1) / (written_for - 1)
    return frozenset({0, *(min(num_steps - 1, round(s * scale)) for s in steps)})


@policy_for(Schedule)
class SchedulePolicy(SegmentPolicy):
    """Compute exactly the listed steps, reuse the last residual on the others."""

    def __init__(self, config: Schedule, model: ModelContext) -> None:
        super().__init__(config, model)
        self._mapped: dict[int, frozenset[int]] = {}

    def steps_for(self, num_steps: int) -> frozenset[int]:
        if num_steps not in self._mapped:
            self._mapped[num_steps] = map_steps(self.config.steps, self.config.num_steps, num_steps)
        return self._mapped[num_steps]

    def rule(self, call: CallInfo, state: SegmentState) -> str:
        return COMPUTE if call.step in self.steps_for(call.num_steps) else REUSE

    def forced(self, call: CallInfo, state: SegmentState) -> bool:
        self.steps_for(call.num_steps)  # a list out of range fails on the first call, before anything is cached
        return super().forced(call, state)
