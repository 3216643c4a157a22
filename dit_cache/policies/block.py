"""Block-level policies. FORA: every `interval`-th step computes; in between each block reuses the outputs of its
attention and MLP submodules (taken before the gate multiplication, so the current step's gates scale them)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..config import FORA
from ..engine import BlockSlot
from ..state import COMPUTE, REUSE, CallInfo
from .base import Policy, policy_for


@dataclass
class FORAState:
    last_computed: int | None = None
    outputs: dict[tuple[int, str], Any] = field(default_factory=dict)


@policy_for(FORA)
class FORAPolicy(Policy):
    uses_submodules = True

    def new_state(self) -> FORAState:
        return FORAState()

    def decide(self, call: CallInfo, state: FORAState, values: list[float]) -> str:
        if state.last_computed is None or call.step - state.last_computed >= self.config.interval:
            state.last_computed = call.step
            return COMPUTE
        return REUSE

    def run_submodule(
        self, call: CallInfo, state: FORAState, slot: BlockSlot, name: str, forward: Callable, args: tuple, kwargs: dict
    ) -> Any:
        key = (slot.index, name)
        if call.decision == COMPUTE or key not in state.outputs:
            output = forward(*args, **kwargs)
            state.outputs[key] = output
            return output
        call.skipped_units += 1
        return state.outputs[key]
