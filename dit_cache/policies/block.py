"""Block-level policies. FORA: every `interval`-th step computes; in between each block reuses the outputs of its
attention and MLP submodules (taken before the gate multiplication, so the current step's gates scale them), or,
with `forecast=k`, a Taylor forecast of them from the last k + 1 computed steps (TaylorSeer's mechanism)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..config import FORA
from ..engine import BlockSlot
from ..state import COMPUTE, FORECAST, REUSE, CallInfo
from .base import Policy, policy_for
from .taylor import TaylorHistory, flatten, unflatten


@dataclass
class FORAState:
    last_computed: int | None = None
    outputs: dict[tuple[int, str], Any] = field(default_factory=dict)
    histories: dict[tuple[int, str], tuple[list[TaylorHistory], tuple | None]] = field(default_factory=dict)
    empty: dict[tuple[int, str], Any] = field(default_factory=dict)  # token-less stand-ins of units that feed another


@policy_for(FORA)
class FORAPolicy(Policy):
    uses_submodules = True

    @property
    def order(self) -> int:
        return self.config.forecast

    corrector = 0.0

    def new_state(self) -> FORAState:
        return FORAState()

    def decide(self, call: CallInfo, state: FORAState, values: list[float]) -> str:
        if state.last_computed is None or call.step - state.last_computed >= self.config.interval:
            state.last_computed = call.step
            return COMPUTE
        return FORECAST if self.order else REUSE

    def run_submodule(
        self, call: CallInfo, state: FORAState, slot: BlockSlot, name: str, forward: Callable, args: tuple, kwargs: dict
    ) -> Any:
        key = (slot.index, name)
        consumer = slot.feeds.get(name)
        if consumer is not None:
            return self._run_feeder(call, state, key, (slot.index, consumer), forward, args, kwargs)
        if call.decision == COMPUTE or (key not in state.outputs and key not in state.histories):
            output = forward(*args, **kwargs)
            if self.order:
                self._remember(state, key, output, call.step)
            else:
                state.outputs[key] = output
            return output
        call.skipped_units += 1
        if key in state.histories:
            histories, layout = state.histories[key]
            return unflatten([h.forecast(call.step) for h in histories], layout)
        return state.outputs[key]

    def _run_feeder(self, call, state: FORAState, key, consumer, forward: Callable, args: tuple, kwargs: dict) -> Any:
        """A unit read only by `consumer` (Flux's single blocks: attention and MLP, read by proj_out): when the
        consumer's output is reused its value is never read, so it is neither kept nor forecast; the block gets a
        stand-in with no tokens, on which its concatenation costs nothing."""
        kept = consumer in state.outputs or consumer in state.histories
        if call.decision != COMPUTE and kept and key in state.empty:
            call.skipped_units += 1
            return state.empty[key]
        output = forward(*args, **kwargs)
        tensors, layout = flatten(output)
        if all(t.dim() >= 2 for t in tensors):
            state.empty[key] = unflatten([t.new_empty((t.shape[0], 0, *t.shape[2:])) for t in tensors], layout)
        return output

    def _remember(self, state: FORAState, key: tuple[int, str], output: Any, step: int) -> None:
        tensors, layout = flatten(output)
        entry = state.histories.get(key)
        if entry is None or len(entry[0]) != len(tensors):
            entry = state.histories[key] = ([TaylorHistory(self.order, self.corrector) for _ in tensors], layout)
        for history, tensor in zip(entry[0], tensors):
            history.update(tensor, step)
