"""EasyCache (Zhou et al. 2025): runtime-adaptive reuse of the block stack's transformation, no calibration.

The segment mechanism of step.py (reuse = the current input plus the last computed residual); the rule, per call:

    pred_t = k * |x_t - x_(t-1)| / |y_c|        acc += pred_t        reuse while acc < tolerance
    k      = |y_c - y_c'| / |x_c - x_c'|        (measured between the last two computed steps c' < c)

x: the stack's input at every call (computed or not), y: its output at computed steps, |.| the mean absolute value;
the warm-up, the last step and every step before k is known compute; a compute resets acc. The sums are measured on
the device: the input change at the decision block (TeaCache's probe slot), and k's three sums when a step computes,
read with the next call's probe, so a call costs one host read. A batch takes the prediction of the row that moves
most (`rel_l1_rows`' convention); of separate CFG calls, the first of each step decides for the others.

speedup= replays this rule on a profile's recorded trajectories (the stack's input and output tables, `input_pairs`
and `output_pairs`: every quantity of the rule is a mean |a_i - a_j| or mean |a_i| of them) and takes the tolerance
whose replayed compute fraction is closest to 1 / speedup, as TeaCache and MagCache do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..adapters import BlockCall
from ..calibration import ProfileError, keys, resolve_profile
from ..calibration.resample import resample_matrix
from ..config import (
    PolicyConfig,
    _check_fraction,
    _check_int,
    _check_number,
    _check_order,
    _check_speedup,
)
from ..engine import BlockSlot
from ..schedulers.budget import ValuesFor, replay_fraction
from ..state import COMPUTE, REUSE, CallInfo
from .base import ModelContext, register_policy
from .step import SegmentPolicy, SegmentState


@dataclass(frozen=True)
class EasyCache(PolicyConfig):
    """EasyCache (Zhou et al. 2025), runtime-adaptive, no calibration: after the warm-up, reuse the block stack's
    last computed transformation (output minus input) while the accumulated estimate of the output's relative change
    stays under `tolerance`. The estimate at step t is k x |x_t - x_(t-1)| / |y_c|: x the stack input, y_c the stack
    output of the last computed step, k = |y_c - y_c'| / |x_c - x_c'| the transformation rate measured between the last
    two computed steps (mean absolute values).

    tolerance: accumulated estimate before a recompute (the paper's tau; 0 never reuses; None: 0.05, or the one that
        gives `speedup`). warmup: share of the first steps always computed (the paper's retention steps). max_skip:
        cap on consecutive reuses (None: no cap). forecast: as on the step policies (0: plain reuse).
    speedup: the tolerance is searched by replaying the rule on `profile`'s recorded trajectories (a calibrated
        profile, `dit-cache calibrate`) so that 1 / speedup of the steps compute.
    """

    tolerance: float | None = None
    warmup: float = 0.1
    max_skip: int | None = None
    forecast: int = 0
    profile: Any = None
    speedup: float | None = None

    def __post_init__(self):
        _check_number("easycache", "tolerance", self.tolerance)
        _check_fraction("easycache", "warmup", self.warmup)
        _check_int("easycache", "max_skip", self.max_skip, low=0)
        _check_order("easycache", "forecast", self.forecast)
        _check_speedup("easycache", self.speedup)
        if self.speedup is not None and self.tolerance is not None:
            raise ValueError("easycache: give tolerance or speedup, not both (speedup picks the tolerance)")


DEFAULT_TOLERANCE = 0.05


def row_abs_sums(x: torch.Tensor) -> torch.Tensor:
    """sum |x| per batch row (dim 0), float32, on x's device."""
    x = x.detach()
    rows = x.shape[0] if x.dim() >= 2 else 1
    return x.float().abs().reshape(rows, -1).sum(dim=1)


@dataclass
class EasyCacheState(SegmentState):
    previous_input: torch.Tensor | None = None  # the stack input of the previous call of this branch
    computed_input: torch.Tensor | None = None  # ... and of the last computed step
    computed_output: torch.Tensor | None = None  # the stack output of the last computed step
    rate_sums: torch.Tensor | None = None  # (rows, 3): |y_c - y_c'|, |x_c - x_c'|, |y_c| summed per row
    accumulated: float = 0.0
    previous_computed: int | None = None  # c', the computed step before the last one (the replay's rate)
    # step -> (branch, decision) of the step's first call, shared by the branch states of one trajectory
    leading: dict[int, tuple[str, str]] = field(default_factory=dict)


@register_policy("easycache", EasyCache, level="step", needs_profile="optional", speedup_by="profile")
class EasyCachePolicy(SegmentPolicy):
    state_class = EasyCacheState

    def __init__(self, config: EasyCache, model: ModelContext) -> None:
        super().__init__(config, model)
        self.threshold = config.tolerance if config.tolerance is not None else DEFAULT_TOLERANCE
        # step -> (branch, decision) of the step's first call: state of the running trajectory, shared by the states
        # of its branches (each new branch state gets it), emptied in place on every reset
        self._leading: dict[int, tuple[str, str]] = {}
        self.profile = None
        if self.speedup is not None:
            self.profile = self._traced_profile(resolve_profile(config.profile, model.transformer, "easycache"),
                                                "the block stack's input and output tables")  # fmt: skip
            if not all(self.profile.has_array(kind, records=True) for kind in (keys.INPUT_PAIRS, keys.OUTPUT_PAIRS)):
                raise ProfileError(
                    f"easycache: profile {self.profile.name!r} has no stack input/output tables (input_pairs, "
                    "output_pairs) to replay speedup= on; recalibrate it with `dit-cache calibrate --block-traces` (this version "
                    "records them), or pass tolerance= instead of speedup="
                )
            self.check_ceiling_at_apply(
                f"computing the warm-up ({self.config.warmup:g} of the steps), steps 0-1 (no rate yet) and the last"
                + (f", and one step in every max_skip + 1 = {self.max_skip + 1}" if self.max_skip is not None else ""),
                "Ask for less, or lower warmup" + (" / raise max_skip" if self.max_skip is not None else ""),
            )  # fmt: skip

    def fixed(self, threshold: float) -> EasyCachePolicy:
        trial = super().fixed(threshold)
        trial._leading = {}  # a replay's decisions are not the running trajectory's
        return trial

    def structural_floor(self, num_steps: int) -> float:
        """Every step reused that the rule may reuse: no change predicted once a rate is known."""

        def neutral(step: int, state: EasyCacheState) -> list[float]:
            if step == 0:
                return []
            return [1.0, math.nan, math.nan, math.nan] if state.previous_computed is None else [0.0, 1.0, 1.0, 1.0]

        return replay_fraction(self.fixed(1e12), [("cond", neutral)], num_steps, None)

    def replay_traces(self, num_steps: int, sigmas: list[float] | None) -> list[tuple[str, ValuesFor]]:
        """Per calibration job, its first branch (the one whose calls lead each step; the others follow it): the
        probe's [input change, |y_c - y_c'|, |x_c - x_c'|, |y_c|] read from the job's recorded tables."""
        profile = self.profile
        dst = profile.call_grid(num_steps, sigmas)
        traces = []
        for record in profile.job_records():
            branch = next(iter(record.branches), None)
            if branch is None:
                continue
            tables = []
            for kind in (keys.INPUT_PAIRS, keys.OUTPUT_PAIRS):
                table = profile.arrays.get(keys.record_array(record.index, branch, kind))
                if table is None:
                    break
                lower = np.tril(table.double().numpy())
                tables.append(resample_matrix(lower + np.tril(lower, -1).T, profile.grid(branch), dst))
            if len(tables) == 2:
                traces.append((branch, _replayed_values(*tables)))
        if not traces:
            raise ProfileError(f"easycache: profile {profile.name!r} has no job with input_pairs and output_pairs")
        return traces

    def new_state(self) -> EasyCacheState:
        return EasyCacheState(leading=self._leading)

    def reset(self, states: dict[str, Any]) -> None:
        self._leading.clear()

    def decide(self, call: CallInfo, state: EasyCacheState, values: list[float]) -> str:
        """The first branch to reach a step decides it; the other CFG branches follow (computed on different steps,
        their errors would be amplified by guidance instead of cancelling; the paper decides on the conditional
        call for both)."""
        lead = state.leading.get(call.step)
        if lead is not None and lead[0] != call.branch:
            self.observe(call, state, values)
            follow = COMPUTE if lead[1] == COMPUTE or SegmentPolicy.forced(self, call, state) else REUSE
            return self.settle(call, state, follow)
        decision = super().decide(call, state, values)
        state.leading[call.step] = (call.branch, decision)
        return decision

    def probe(self, call: CallInfo, state: Any, slot: BlockSlot, block: BlockCall) -> torch.Tensor | None:
        x = block.hidden.detach()
        call.record.payload = x
        previous = state.previous_input if state is not None else None
        if previous is None or previous.shape != x.shape:
            return None
        change = row_abs_sums(x - previous)
        rate = state.rate_sums
        if rate is None or rate.shape[0] != change.shape[0]:
            rate = torch.full((change.shape[0], 3), math.nan, device=change.device)
        return torch.cat([change[:, None], rate.to(change.device)], dim=1)  # (rows, 4)

    def observe(self, call: CallInfo, state: EasyCacheState, values: list[float]) -> None:
        state.previous_input = call.record.payload
        call.record.indicator = predicted_change(values)

    def forced(self, call: CallInfo, state: EasyCacheState) -> bool:
        warmup_steps = math.ceil(self.config.warmup * call.num_steps - 1e-9)
        return (
            super().forced(call, state)
            or call.record.indicator is None
            or call.step < warmup_steps
            or call.step == call.last_step
        )

    def rule(self, call: CallInfo, state: EasyCacheState) -> str:
        state.accumulated += call.record.indicator
        return REUSE if state.accumulated < self.threshold_at(call) else COMPUTE

    def on_compute(self, call: CallInfo, state: EasyCacheState) -> None:
        state.accumulated = 0.0
        state.previous_computed = state.last_computed

    def store(self, call: CallInfo, state: EasyCacheState, slot: BlockSlot, output: Any) -> None:
        super().store(call, state, slot, output)
        y, _ = slot.group.split_output(output)
        x = call.record.segment_input[0]
        y, x = y.detach(), x.detach()
        if state.computed_output is not None and state.computed_output.shape == y.shape:
            state.rate_sums = torch.stack(
                [row_abs_sums(y - state.computed_output), row_abs_sums(x - state.computed_input), row_abs_sums(y)],
                dim=1,
            )
        state.computed_input, state.computed_output = x, y


def _replayed_values(inputs: np.ndarray, outputs: np.ndarray) -> ValuesFor:
    """What the probe reads at a step of a recorded trajectory, from its symmetric tables of mean |a_i - a_j| (mean
    |a_i| on the diagonal) of the stack's input and output: the change since the previous step, and the rate sums
    between the replay's last two computed steps (NaN before there are two)."""

    def values_for(step: int, state: EasyCacheState) -> list[float]:
        if step == 0:
            return []
        change = float(inputs[step, step - 1])
        c, before = state.last_computed, state.previous_computed
        if c is None or before is None:
            return [change, math.nan, math.nan, math.nan]
        return [change, float(outputs[c, before]), float(inputs[c, before]), float(outputs[c, c])]

    return values_for


def predicted_change(values: list[float]) -> float | None:
    """The largest per-row k * |dx| / |y_c| of the read (rows, 4) sums (0 for a row whose input did not change);
    None when a row that moves has no rate (fewer than two computed steps, or no input change between them)."""
    if len(values) < 4:
        return None
    worst = None
    for i in range(0, len(values) - 3, 4):
        change, d_out, d_in, out = values[i : i + 4]
        if change == 0:  # this row did not move (padding or text rows of a token-first layout): no change
            predicted = 0.0
        elif not all(math.isfinite(v) for v in (d_out, d_in, out)) or d_in <= 0 or out <= 0:
            return None  # no rate measured for a row that moves
        else:
            predicted = d_out / d_in * change / out
        worst = predicted if worst is None else max(worst, predicted)
    return worst
