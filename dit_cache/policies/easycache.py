"""EasyCache (Zhou et al. 2025): runtime-adaptive reuse of the block stack's transformation, no calibration.

The segment mechanism of step.py (reuse = the current input plus the last computed residual); the rule, per call:

    pred_t = k * |x_t - x_(t-1)| / |y_c|        acc += pred_t        reuse while acc < tolerance
    k      = |y_c - y_c'| / |x_c - x_c'|        (measured between the last two computed steps c' < c)

x: the stack's input at every call (computed or not), y: its output at computed steps, |.| the mean absolute value;
the warm-up, the last step and every step before k is known compute; a compute resets acc. The sums are measured on
the device: the input change at the decision block (TeaCache's probe slot), and k's three sums when a step computes,
read with the next call's probe, so a call costs one host read. A batch takes the prediction of the row that moves
most (`rel_l1_rows`' convention); of separate CFG calls, the first of each step decides for the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ..adapters import BlockCall
from ..config import (
    PolicyConfig,
    _check_fraction,
    _check_int,
    _check_number,
    _check_order,
)
from ..engine import BlockSlot
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

    tolerance: accumulated estimate before a recompute (the paper's tau; 0 never reuses). warmup: share of the first
        steps always computed (the paper's retention steps). max_skip: cap on consecutive reuses (None: no cap).
    forecast: as on the step policies (0: plain reuse of the transformation).
    """

    tolerance: float = 0.05
    warmup: float = 0.1
    max_skip: int | None = None
    forecast: int = 0

    def __post_init__(self):
        _check_number("easycache", "tolerance", self.tolerance, allow_none=False)
        _check_fraction("easycache", "warmup", self.warmup)
        _check_int("easycache", "max_skip", self.max_skip, low=0)
        _check_order("easycache", "forecast", self.forecast)


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
    # step -> (branch, decision) of the step's first call, shared by the branch states of one trajectory
    leading: dict[int, tuple[str, str]] = field(default_factory=dict)


@register_policy("easycache", EasyCache, level="step")
class EasyCachePolicy(SegmentPolicy):
    state_class = EasyCacheState

    def __init__(self, config: EasyCache, model: ModelContext) -> None:
        super().__init__(config, model)
        self.threshold = config.tolerance
        # step -> (branch, decision) of the step's first call: state of the running trajectory, shared by the states
        # of its branches (each new branch state gets it), emptied in place on every reset
        self._leading: dict[int, tuple[str, str]] = {}

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
