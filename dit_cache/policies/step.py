"""Step-level policies: the blocks [start, end) are one cached segment, computed as a whole or replaced by their
input plus the residual stored at the last computed step. TeaCache, MagCache, the first-block probe and fixed
schedules differ only in their decision rule; the segment mechanism below serves them all.

With `forecast=k` (k > 0) a skipped step gets a Taylor forecast of the residual from the last k + 1 computed steps
instead of the last residual as is (decision "forecast"); the decision rules are unchanged.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import kernels
from ..adapters import BlockCall
from ..calibration import ProfileError, resolve_profile
from ..calibration.resample import position_grid, resample_edges, resample_increments, resample_matrix
from ..config import FBCache, LeMiCa, MagCache, PolicyConfig, Schedule, TeaCache
from ..engine import BlockSlot
from ..schedulers.budget import ValuesFor, replay_fraction, search_threshold
from ..schedulers.lemica import ScheduleError, budget_for_speedup, solve_lexminimax
from ..schedulers.targets import TOLERANCE, SpeedupError, check_ceiling, check_reached, floor_over_step_counts
from ..state import COMPUTE, FORECAST, REUSE, CallInfo
from .base import ModelContext, Policy, policy_for, shared_tuning
from .taylor import TaylorHistory

# TeaCache without a fitted polynomial: the output change is taken to equal the indicator change.
IDENTITY_COEFFICIENTS = (0.0, 0.0, 0.0, 1.0, 0.0)
IDENTITY_DEFAULT_THRESHOLD = 0.1
POLYNOMIAL_DEFAULT_THRESHOLD = 0.1
_EPS = 1e-12

logger = logging.getLogger(__name__)


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
        if self.speedup is not None:
            self._check_speedup_source(data)
            self.check_ceiling_at_apply(
                "computing the first and last steps"
                + (f", the warm-up ({self.warmup:g} of the steps)" if self.warmup else "")
                + (f" and at least one step in every max_skip + 1 = {self.max_skip + 1}" if self.max_skip is not None else ""),
                "Ask for less" + (" or raise max_skip" if self.max_skip is not None else ""),
            )  # fmt: skip

    def _check_speedup_source(self, data: dict | None) -> None:
        table = (data or {}).get("threshold_speedups")
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
        for record in profile.records:
            for branch, data in record["branches"].items():
                grid = profile.branches[branch]["grid"]
                x = resample_increments(data["x"], grid, dst)
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
        if self.speedup is not None and config.max_skip is None:
            # long enough runs of reuse for the target (K is the paper's cap on consecutive skips)
            self.max_steps = max(self.max_steps, math.ceil(2 * self.speedup))
        self.retention = config.retention if config.retention is not None else defaults.get("retention", 0.2)
        self.max_skip = None  # the rule's k <= K is the cap
        self._ratios: dict[tuple, np.ndarray] = {}
        self.check_ceiling_at_apply(
            f"computing the first retention={self.retention:g} of the steps and at least one step in every "
            f"{self.max_steps + 1} (max_skip={self.max_steps})",
            "Ask for less, or lower retention / raise max_skip",
        )

    def replay_traces(self, num_steps: int, sigmas: list[float] | None) -> list[tuple[str, ValuesFor]]:
        branches = [b for b, data in self.profile.branches.items() if "mag_ratio" in data]
        return [(b, lambda step, state: []) for b in branches]

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
        call.record.indicator = state.error
        return REUSE if state.error < self.threshold_at(call) and state.steps <= self.max_steps else COMPUTE

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
        for record in profile.records:
            for branch in record["branches"]:
                pairs = profile.arrays[f"records/{record['index']}/{branch}/fb_pairs"].numpy()
                full = np.tril(pairs, -1) + np.tril(pairs, -1).T  # symmetric, so interpolation sees both sides
                matrix = resample_matrix(full, profile.branches[branch]["grid"], dst)

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
        self.steps, self.written_for = tuple(config.steps), config.num_steps
        self._mapped: dict[int, frozenset[int]] = {}

    def steps_for(self, num_steps: int) -> frozenset[int]:
        if num_steps not in self._mapped:
            self._mapped[num_steps] = map_steps(self.steps, self.written_for, num_steps)
        return self._mapped[num_steps]

    def rule(self, call: CallInfo, state: SegmentState) -> str:
        return COMPUTE if call.step in self.steps_for(call.num_steps) else REUSE

    def forced(self, call: CallInfo, state: SegmentState) -> bool:
        self.steps_for(call.num_steps)  # a list out of range fails on the first call, before anything is cached
        return super().forced(call, state)


@policy_for(LeMiCa)
class LeMiCaPolicy(SchedulePolicy):
    """The schedule policy, with its steps solved for each call's own step count on the profile's LeMiCa edge
    weights (resampled over the trajectory: `resample_edges`), or mapped from a published schedule."""

    def __init__(self, config: LeMiCa, model: ModelContext) -> None:
        SegmentPolicy.__init__(self, config, model)
        self.speedup = None  # the budget, not a threshold, carries the target here
        self._mapped = {}
        self.profile = resolve_profile(config.profile, model.transformer, "lemica", required=True)
        data = self.profile.policies.get("lemica", {})
        self.written_for = int(data.get("num_steps", 0)) or None
        self.edges = self.profile.arrays.get("lemica/edges")
        measured = self.profile.arrays.get(f"lemica/edges_forecast{config.forecast}") if config.forecast else None
        if measured is not None:  # edges measured with the forecast this run uses: its schedule minimizes that error
            self.edges = measured
        elif config.forecast and self.edges is not None and data.get("mode") == "global":
            logger.info(
                "lemica: forecast=%d runs on edges measured without forecasting; calibrate with --lemica-forecast "
                "0 %d for a schedule solved on the error it makes", config.forecast, config.forecast,
            )  # fmt: skip
        self.steps = ()
        if self.edges is None:
            schedules = {int(b): s for b, s in data.get("schedules", {}).items()}
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
            grid = data.get("grid")
            if grid is not None and len(grid) == size:
                return np.asarray(grid, dtype=np.float64)
        return position_grid(size)

    def rule(self, call: CallInfo, state: SegmentState) -> str:
        return COMPUTE if call.step in self.steps_for_call(call) else REUSE

    def forced(self, call: CallInfo, state: SegmentState) -> bool:
        self.steps_for_call(call)  # an unreachable target fails on the first call, before anything is cached
        return SegmentPolicy.forced(self, call, state)
