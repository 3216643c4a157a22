"""TaylorSeer (Liu et al. 2025) and its FoCa-style corrected variant: the first `warmup` steps and every
`interval`-th step after them compute every attention and MLP submodule and update its Taylor history (see
`taylor.py`); the steps in between forecast each submodule output from that history, before the gate multiplication,
so the current step's gates scale the forecast. Step-level forecasting (the `forecast=` option of the step policies)
lives with the segment mechanism in step.py and uses the same history."""

from __future__ import annotations

import logging

from ..config import TaylorSeer
from ..schedulers.targets import check_ceiling, check_reached, floor_over_step_counts, nearest, span
from ..state import COMPUTE, FORECAST, CallInfo
from .base import ModelContext, policy_for
from .block import FORAPolicy, FORAState

logger = logging.getLogger(__name__)


def computed_steps(num_steps: int, interval: int, warmup: int, start: int = 0) -> list[int]:
    """The steps TaylorSeer computes in a call of `num_steps` steps whose first step for this model is `start`."""
    steps, last = [], None
    for step in range(start, num_steps):
        if step < warmup or last is None or step - last >= interval:
            steps.append(step)
            last = step
    return steps


def interval_options(num_steps: int, warmup: int, order: int = 0) -> dict[float, int]:
    """Compute fraction -> the smallest interval giving it, among intervals whose history can fill (order + 1
    computed steps before the first forecast, or no forecast at all)."""
    options: dict[float, int] = {}
    for interval in range(1, max(2, num_steps)):
        computed = len(computed_steps(num_steps, interval, warmup))
        if computed < num_steps and computed < order + 1:
            continue
        options.setdefault(computed / num_steps, interval)
    return options


def interval_for_speedup(num_steps: int, warmup: int, speedup: float, order: int = 0) -> int:
    """The interval whose compute fraction (computed steps / steps) is closest to 1 / speedup (ties: the smaller)."""
    return nearest(interval_options(num_steps, warmup, order), 1.0 / speedup)[1]


@policy_for(TaylorSeer)
class TaylorSeerPolicy(FORAPolicy):
    def __init__(self, config: TaylorSeer, model: ModelContext) -> None:
        super().__init__(config, model)
        self.corrector = float(config.corrector)
        self._intervals: dict[int, int] = {}
        self.check_ceiling_at_apply()

    @property
    def order(self) -> int:
        return self.config.order

    def interval(self, num_steps: int) -> int:
        config = self.config
        if config.speedup is None:
            return config.interval if config.interval is not None else 4
        if num_steps not in self._intervals:
            options = interval_options(num_steps, config.warmup, self.order)
            fraction, interval = nearest(options, 1.0 / config.speedup)
            check_reached(
                "taylorseer", config.speedup, fraction, num_steps, span(options),
                f"warmup={config.warmup} and order={self.order} (order + 1 computed steps) are always computed: ask "
                "for less, lower warmup, or run more steps",
            )  # fmt: skip
            self._intervals[num_steps] = interval
        return self._intervals[num_steps]

    def check_ceiling_at_apply(self) -> None:
        config = self.config
        if config.speedup is None or config.speedup == 1:
            return

        def floor(num_steps: int) -> float:
            return min(interval_options(num_steps, config.warmup, self.order))

        check_ceiling(
            "taylorseer", config.speedup, floor_over_step_counts(floor),
            f"computing the warmup={config.warmup} first steps and order + 1 = {self.order + 1} steps of history",
            "Ask for less or lower warmup / order",
        )  # fmt: skip

    def decide(self, call: CallInfo, state: FORAState, values: list[float]) -> str:
        interval = self.interval(call.num_steps)
        if state.last_computed is None:
            self._check_history(call, interval)
        if call.step < self.config.warmup or state.last_computed is None or call.step - state.last_computed >= interval:
            state.last_computed = call.step
            return COMPUTE
        return FORECAST

    def _check_history(self, call: CallInfo, interval: int) -> None:
        """An order the trajectory's computed steps can never fill is a mistake: say so before caching anything."""
        if interval == 1:
            return
        computed = computed_steps(call.num_steps, interval, self.config.warmup, start=call.step)
        forecasts = call.num_steps - call.step - len(computed)
        if forecasts and len(computed) < self.order + 1:
            fits = [
                n
                for n in range(interval - 1, 0, -1)
                if len(computed_steps(call.num_steps, n, self.config.warmup, start=call.step)) >= self.order + 1
            ]
            raise ValueError(
                f"taylorseer: order={self.order} needs {self.order + 1} computed steps in the history, but a "
                f"{call.num_steps}-step call with interval={interval} and warmup={self.config.warmup} computes only "
                f"{len(computed)} ({', '.join(map(str, computed))}); lower order to {len(computed) - 1}"
                + (f" or interval to {fits[0]}" if fits else "")
            )
