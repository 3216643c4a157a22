"""Block-level policies. FORA: every `interval`-th step computes; in between each block reuses the outputs of its
attention and MLP submodules (taken before the gate multiplication, so the current step's gates scale them), or,
with `forecast=k`, a Taylor forecast of them from the last k + 1 computed steps (TaylorSeer's mechanism)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..config import (
    PolicyConfig,
    _check_int,
    _check_order,
)
from ..engine import BlockSlot
from ..state import COMPUTE, FORECAST, REUSE, CallInfo
from .base import Policy, register_policy
from .taylor import TaylorHistory, flatten, forecast_position, unflatten


@dataclass(frozen=True)
class FORA(PolicyConfig):
    """FORA (Selvaraju et al. 2024): compute every `interval`-th step; in between, every block reuses its attention
    and MLP outputs (taken before the gate multiplication, so the current step's gates scale them)."""

    interval: int = 2
    forecast: int = 0

    def __post_init__(self):
        _check_order("fora", "forecast", self.forecast)
        _check_int("fora", "interval", self.interval, low=1, allow_none=False)


@dataclass
class FORAState:
    last_computed: int | None = None
    outputs: dict[tuple[int, str], Any] = field(default_factory=dict)
    histories: dict[tuple[int, str], tuple[list[TaylorHistory], tuple | None]] = field(default_factory=dict)
    empty: dict[tuple[int, str], Any] = field(default_factory=dict)  # token-less stand-ins of units that feed another


@register_policy("fora", FORA, level="block", speedup_by="interval", in_default_eval=True)
class FORAPolicy(Policy):
    uses_submodules = True

    @property
    def order(self) -> int:
        return self.config.forecast

    corrector = 0.0

    @property
    def coordinate(self) -> str:
        """The axis forecasts extrapolate along (`forecast_position`); TaylorSeer's `coordinate` option."""
        return getattr(self.config, "coordinate", "step")

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
        consumer = slot.feeds.get(name)  # the one unit that reads this one's output (Flux single blocks: proj_out)
        if call.record.decision != COMPUTE and key in state.empty and _kept(state, (slot.index, consumer)):
            call.record.skipped_units += 1  # the consumer's output is reused: this value is never read
            return state.empty[key]
        if call.record.decision == COMPUTE or not _kept(state, key):
            output = forward(*args, **kwargs)
            stand_in = _token_less(output) if consumer is not None else None
            if stand_in is not None:  # neither kept nor forecast: the consumer's output is
                state.empty[key] = stand_in
            elif self.order:
                self._remember(state, key, output, forecast_position(call, self.coordinate))
            else:
                state.outputs[key] = output
            return output
        call.record.skipped_units += 1
        if key in state.histories:
            histories, layout = state.histories[key]
            position = forecast_position(call, self.coordinate)
            return unflatten([h.forecast(position) for h in histories], layout)
        return state.outputs[key]

    def unit_order(self, state: FORAState, key: tuple[int, str]) -> int:
        """The forecast order of one unit (HyCa gives each its own)."""
        return self.order

    def _remember(self, state: FORAState, key: tuple[int, str], output: Any, position: float) -> None:
        tensors, layout = flatten(output)
        entry = state.histories.get(key)
        if entry is None or len(entry[0]) != len(tensors):
            order = self.unit_order(state, key)
            entry = state.histories[key] = ([TaylorHistory(order, self.corrector) for _ in tensors], layout)
        for history, tensor in zip(entry[0], tensors):
            history.update(tensor, position)


def _kept(state: FORAState, key: tuple[int, str]) -> bool:
    return key in state.outputs or key in state.histories


def _token_less(output: Any) -> Any:
    """`output` with no tokens (dim 1 emptied), for a block to concatenate at no cost; None if a tensor has no
    token dim."""
    try:
        tensors, layout = flatten(output)
    except TypeError:
        return None
    if not all(t.dim() >= 2 for t in tensors):
        return None
    return unflatten([t.new_empty((t.shape[0], 0, *t.shape[2:])) for t in tensors], layout)
