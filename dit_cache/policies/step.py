"""Step-level policies: the blocks [start, end) are one cached segment, computed as a whole or replaced by their
input plus the residual stored at the last computed step. TeaCache, MagCache, the first-block probe and fixed
schedules differ only in their decision rule; the segment mechanism below serves them all.

With `forecast=k` (k > 0) a skipped step gets a Taylor forecast of the residual from the last k + 1 computed steps
instead of the last residual as is (decision "forecast"); the decision rules are unchanged.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .. import kernels
from ..adapters import BlockCall
from ..calibration import ProfileError
from ..config import PolicyConfig
from ..engine import BlockSlot
from ..schedulers.budget import ValuesFor, replay_fraction, search_threshold
from ..schedulers.targets import TOLERANCE, SpeedupError, check_ceiling, check_reached, floor_over_step_counts
from ..state import COMPUTE, FORECAST, REUSE, CallInfo
from .base import ModelContext, Policy, shared_tuning
from .taylor import TaylorHistory

_EPS = 1e-12


def rel_l1_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`[sum|a - b|, sum|b|]` per batch row (dim 0 of `a` and `b`): float32 (rows, 2), on the inputs' device.

    A batch (several samples, or the two CFG halves of a batched call) takes one decision; it is taken on the
    sample that changed most (see `rel_l1_value`), never on a batch average that a calm sample would dilute. Sums,
    not ratios, so that a sequence-parallel group can all-reduce them per row before dividing.
    """
    if a.dim() < 2 or a.shape[0] == 1:
        return kernels.rel_l1_parts(a, b).reshape(1, 2)
    return torch.stack([kernels.rel_l1_parts(x, y) for x, y in zip(a, b)])


def _ratio(num: float, den: float) -> float:
    if den <= _EPS:
        return 0.0 if num <= _EPS else math.inf
    return num / den


def rel_l1_value(values: list[float]) -> float | None:
    """The largest per-row sum|a - b| / sum|b| of the read sums (pairs, one per batch row, see `rel_l1_rows`), or
    None when there was nothing to compare."""
    if len(values) < 2:
        return None
    return max(_ratio(values[i], values[i + 1]) for i in range(0, len(values) - 1, 2))


@dataclass
class SegmentState:
    residual: tuple[torch.Tensor, torch.Tensor | None] | None = None  # (hidden, encoder) output minus input
    encoder_out: bool = False  # whether the segment's last block returns an encoder stream
    last_computed: int | None = None
    skips: int = 0  # consecutive calls not computed
    history: tuple[TaylorHistory, TaylorHistory] | None = None  # (hidden, encoder) residual forecasts


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
        self.speedup = getattr(config, "speedup", None)
        self.forecast_order = getattr(config, "forecast", 0)
        self._tuned: dict = shared_tuning(self)
        # the threshold planned for each (step count, sigmas, expert steps) of a speedup target, in planning order
        self._plans: dict[tuple, float] = self._tuned.setdefault("thresholds", {})
        self._threshold: float | None = None

    @property
    def threshold(self) -> float | None:
        """The threshold the rule compares with: the configured one, or with a speedup target the one planned for the
        step grid planned last (each call reads the plan of its own grid: `threshold_at`)."""
        if self.speedup is not None and self._plans:
            return next(reversed(self._plans.values()))
        return self._threshold

    @threshold.setter
    def threshold(self, value: float | None) -> None:
        self._threshold = value

    def threshold_at(self, call: CallInfo) -> float:
        """The threshold of `call`'s decision: planned once per step grid for a speedup target, else the configured."""
        if self.speedup is None:
            return self._threshold
        return self.threshold_for(call.num_steps, call.sigmas, call.expert_steps)

    def fixed(self, threshold: float) -> SegmentPolicy:
        """A copy of this policy that decides at `threshold`, with no speedup target: what the speedup search and
        the budget replay run (the live policy is never changed)."""
        trial = copy.copy(self)
        trial.speedup, trial._threshold = None, threshold
        return trial

    def new_state(self) -> Any:
        return self.state_class()

    # ------------------------------------------------------------------------------------------------ decision
    def observe(self, call: CallInfo, state: Any, values: list[float]) -> None:
        pass

    def forced(self, call: CallInfo, state: Any) -> bool:
        # nothing computed yet on this branch: no residual to reuse (it is stored by the call that computed)
        return state.last_computed is None or (self.max_skip is not None and state.skips >= self.max_skip)

    def rule(self, call: CallInfo, state: Any) -> str:
        return COMPUTE

    def on_compute(self, call: CallInfo, state: Any) -> None:
        pass

    def decide(self, call: CallInfo, state: Any, values: list[float]) -> str:
        """Pure in the policy: reads the plan of the call's step grid, changes only `state` (and the call's record)."""
        if self.speedup is not None:  # plan before anything is cached: an unreachable target fails on the first call
            self.threshold_for(call.num_steps, call.sigmas, call.expert_steps)
        self.observe(call, state, values)
        return self.settle(call, state, COMPUTE if self.forced(call, state) else self.rule(call, state))

    def settle(self, call: CallInfo, state: Any, decision: str) -> str:
        """Book a decision: reset the rule's accumulators on compute, count skips, turn reuse into forecast."""
        if decision == COMPUTE:
            self.on_compute(call, state)
            state.skips = 0
            state.last_computed = call.step
        else:
            state.skips += 1
            if self.forecast_order and decision == REUSE:
                decision = FORECAST
        return decision

    # ------------------------------------------------------------------------------------------------ speedup
    def replay_traces(self, num_steps: int, sigmas: list[float] | None) -> list[tuple[str, ValuesFor]]:
        """(branch, values_for) per recorded trajectory, resampled to `num_steps`; policies with a threshold and
        a profile override this."""
        raise ValueError(f"{self.name}: speedup targets are not supported by this policy")

    def threshold_for(self, num_steps: int, sigmas: list[float] | None, steps: range | None = None) -> float:
        """The threshold whose replayed compute fraction is closest to 1 / speedup, for this step count; raises
        `SpeedupError` when the closest is more than TOLERANCE away. With two experts, `steps` are this expert's:
        the replay starts there afresh, as the expert does, and counts its steps only (each expert reaching the
        target on its own steps, both together reach it on all of them)."""
        key = (num_steps, tuple(sigmas) if sigmas else None, None if steps is None else (steps.start, steps.stop))
        if key not in self._plans:
            traces = self.replay_traces(num_steps, sigmas)
            speedup = self.speedup

            def fraction_at(threshold: float) -> float:
                return replay_fraction(self.fixed(threshold), traces, num_steps, sigmas, steps)

            target = 1.0 / speedup
            best = search_threshold(fraction_at, target)
            floor = fraction_at(1e12)
            if floor > target + TOLERANCE:
                where = f"{num_steps} steps" if steps is None else f"the {len(steps)} steps of this expert"
                raise SpeedupError(
                    f"{self.name}: speedup={speedup:g} is above what this policy can reach on this profile at "
                    f"{where} (at most {1 / floor:.2f}x: forced steps and always-computed blocks); "
                    "ask for less, or loosen max_skip / retention / front_blocks"
                )
            check_reached(
                self.name, speedup, fraction_at(best), num_steps if steps is None else len(steps),
                f"compute fractions {floor:.3f}-1, in jumps (a threshold moves whole steps on these traces)",
                "Ask for a target near the closest, or calibrate on more prompts (smoother traces)",
            )  # fmt: skip
            self._plans[key] = best
        return self._plans[key]

    def structural_floor(self, num_steps: int) -> float:
        """The compute fraction at `num_steps` when every step the rule may reuse is reused (no threshold limit)."""

        def neutral(step: int, state: Any) -> list[float]:
            return [0.0, 1.0] if step > 0 else []

        return replay_fraction(self.fixed(1e12), [("cond", neutral)], num_steps, None)

    def check_ceiling_at_apply(self, why: str, fix: str) -> None:
        """At apply: refuse a speedup no step count reaches (structural floor over common step counts)."""
        if self.speedup is not None and self.speedup > 1:
            check_ceiling(self.name, self.speedup, floor_over_step_counts(self.structural_floor), why, fix)

    def _traced_profile(self, profile, key: str):
        if profile is None or not profile.records:
            raise ProfileError(
                f"{self.name}: speedup= needs a calibrated profile with per-prompt traces ({key}); record one with "
                "`dit-cache calibrate` and pass profile=PATH (see docs/calibration.md)"
            )
        return profile

    # ------------------------------------------------------------------------------------------------ mechanism
    def run_block(self, call: CallInfo, state: Any, slot: BlockSlot, forward: Callable, block: BlockCall) -> Any:
        i = slot.index
        if i == 0:
            call.record.stack_input = (block.hidden, block.encoder)
        if i < self.start or i >= self.end or state is None:
            return forward(*block.args, **block.kwargs)
        if i == self.start:
            call.record.segment_input = (block.hidden, block.encoder)
        if call.record.decision == COMPUTE:
            output = forward(*block.args, **block.kwargs)
            if i == self.end - 1:
                self.store(call, state, slot, output)
            return output
        if i == self.start:
            call.record.skipped_units += self.segment_units
        if i < self.end - 1:  # a skipped block hands its input on unchanged
            return slot.group.make_output(block.hidden, block.encoder)
        return slot.group.make_output(*self.replay(call, state))

    def store(self, call: CallInfo, state: Any, slot: BlockSlot, output: Any) -> None:
        hidden_out, encoder_out = slot.group.split_output(output)
        hidden_in, encoder_in = call.record.segment_input
        if hidden_out.shape != hidden_in.shape:
            raise RuntimeError(
                f"{self.name}: the cached blocks change the hidden-state shape ({tuple(hidden_in.shape)} -> "
                f"{tuple(hidden_out.shape)}); this model needs an adapter whose segment keeps the layout"
            )
        # Write into the previous residual's buffer, unless autograd is recording (in-place would break it) or the
        # forecast history keeps its own copies.
        reuse_buffer = state.residual is not None and not torch.is_grad_enabled() and not self.forecast_order
        old = state.residual if reuse_buffer else (None, None)
        hidden_res = kernels.store_residual(hidden_out, hidden_in, old[0])
        encoder_res = None
        if encoder_out is not None and encoder_in is not None and encoder_out.shape == encoder_in.shape:
            encoder_res = kernels.store_residual(encoder_out, encoder_in, old[1])
        state.residual = (hidden_res, encoder_res)
        state.encoder_out = encoder_out is not None
        if self.forecast_order:
            if state.history is None:
                state.history = (TaylorHistory(self.forecast_order), TaylorHistory(self.forecast_order))
            state.history[0].update(hidden_res, call.step)
            if encoder_res is not None:
                state.history[1].update(encoder_res, call.step)

    def residual_scale(self, call: CallInfo, state: Any) -> float | None:
        """A factor on the reused image-stream residual (None: as stored); ERTACache's rectification."""
        return None

    def replay(self, call: CallInfo, state: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        hidden_in, encoder_in = call.record.segment_input
        hidden_res, encoder_res = state.residual
        if call.record.decision == FORECAST and state.history is not None:
            hidden_res = state.history[0].forecast(call.step)
            if encoder_res is not None and state.history[1].ready:
                encoder_res = state.history[1].forecast(call.step)
        hidden = kernels.apply_residual(hidden_in, hidden_res, self.residual_scale(call, state))
        if not state.encoder_out:
            encoder = None
        elif encoder_res is None:
            encoder = encoder_in
        else:
            encoder = kernels.apply_residual(encoder_in, encoder_res)
        return hidden, encoder
