"""TaylorSeer (Liu et al. 2025) and its FoCa-style corrected variant: the first `warmup` steps and every
`interval`-th step after them compute every attention and MLP submodule and update its Taylor history (see
`taylor.py`); the steps in between forecast each submodule output from that history, before the gate multiplication,
so the current step's gates scale the forecast. Step-level forecasting (the `forecast=` option of the step policies)
lives with the segment mechanism in step.py and uses the same history."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import (
    PolicyConfig,
    _check_int,
    _check_order,
    _check_speedup,
)
from ..schedulers.targets import check_ceiling, check_reached, floor_over_step_counts, nearest, within
from ..state import COMPUTE, FORECAST, CallInfo
from .base import ModelContext, register_policy
from .fora import FORAPolicy, FORAState
from .schedule import check_steps, map_steps
from .taylor import COORDINATES


@dataclass(frozen=True)
class TaylorSeer(PolicyConfig):
    """TaylorSeer (Liu et al. 2025): the first `warmup` steps and then every `interval`-th step compute and update
    a Taylor history of every attention and MLP output; the steps in between forecast each output from it.

    order: Taylor order (the history keeps order + 1 tensors per output; exact on polynomial trajectories of
        degree <= order). corrector: FoCa-style calibration weight in [0, 1] for long skips: the error the forecast
        made at the last refresh calibrates the next forecasts (0: plain TaylorSeer).
    speedup: picks the interval. exact: with speedup, compute exactly round(steps / speedup) steps (the warm-up, then
        gaps as even as the count allows, the longer ones mid-trajectory) instead of the nearest interval, which may
        land up to 0.05 off the target (interval 2 computes 16 of 30 steps at 2x: fraction 0.533, not 0.5).
    steps: compute exactly these steps (0-based, increasing, with 0) and forecast every other one, instead of an
        interval, speedup or warm-up: a schedule found on calibration prompts (benchmarks/video_schedule_search.py).
        num_steps: the step count `steps` was written for; a call with another count maps each step to the same
        position of the trajectory (as the `schedule` policy does). None: `steps` index the call as they are.
    coordinate: the axis the forecast extrapolates along: "step" (the step index, as TaylorSeer) or "sigma" (the
        scheduler's noise level; gaps follow the sigma schedule, which a flow-matching shift makes uneven).
    searched: with speedup, run the schedule of round(steps / speedup) computed steps that `dit-cache calibrate
        --search-schedules` searched for this order and coordinate on the calibration prompts (from `profile`: a
        path, a Profile, or None for the one saved with the model), mapped to the call's step count.
    """

    interval: int | None = None
    order: int = 1
    warmup: int = 2
    corrector: float = 0.0
    speedup: float | None = None
    exact: bool = False
    steps: tuple[int, ...] | None = None
    num_steps: int | None = None
    coordinate: str = "step"
    searched: bool = False
    profile: Any = None

    def __post_init__(self):
        _check_int("taylorseer", "interval", self.interval, low=1)
        if self.coordinate not in COORDINATES:
            raise ValueError(
                f"taylorseer: coordinate must be one of {', '.join(map(repr, COORDINATES))}, got {self.coordinate!r}"
            )
        _check_order("taylorseer", "order", self.order)
        _check_int("taylorseer", "warmup", self.warmup, low=0, allow_none=False)
        if (
            isinstance(self.corrector, bool)
            or not isinstance(self.corrector, (int, float))
            or not 0 <= self.corrector <= 1
        ):
            raise ValueError(f"taylorseer: corrector must be a weight in [0, 1] (0: off), got {self.corrector!r}")
        _check_speedup("taylorseer", self.speedup)
        if self.speedup is not None and self.interval is not None:
            raise ValueError("taylorseer: give interval or speedup, not both (speedup picks the interval)")
        if not isinstance(self.exact, bool):
            raise ValueError(f"taylorseer: exact must be True or False, got {self.exact!r}")
        if not isinstance(self.searched, bool):
            raise ValueError(f"taylorseer: searched must be True or False, got {self.searched!r}")
        if self.searched and (self.speedup is None or self.exact):
            raise ValueError(
                "taylorseer: searched=True needs speedup= (the count of computed steps it looks up) and not exact=True"
            )
        if self.exact and self.speedup is None:
            raise ValueError("taylorseer: exact=True needs speedup= (it sets how many steps are computed)")
        if self.steps is not None:
            object.__setattr__(self, "steps", check_steps("taylorseer", self.steps, self.num_steps))
            if self.interval is not None or self.speedup is not None:
                raise ValueError("taylorseer: give steps or interval / speedup, not both (steps are the schedule)")
        elif self.num_steps is not None:
            raise ValueError("taylorseer: num_steps= is the step count of steps=(...); give steps too or drop it")


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


def spread_steps(num_steps: int, warmup: int, count: int) -> frozenset[int]:
    """`count` computed steps of `num_steps`: the warm-up (at least step 0), then the others spread evenly up to the
    last step (gaps differ by at most one step; the forecasting history takes uneven gaps)."""
    head = max(1, min(warmup, count, num_steps))
    rest = count - head
    steps = set(range(head))
    steps |= {head - 1 + round(k * (num_steps - head) / rest) for k in range(1, rest + 1)} if rest > 0 else set()
    return frozenset(steps)


def exact_steps(num_steps: int, warmup: int, count: int) -> frozenset[int]:
    """`count` computed steps of `num_steps` for exact=True: the warm-up (at least step 0), then gaps as even as the
    count allows, the longer ones in the middle of the trajectory: a trained DiT's output changes fastest at both
    ends (the profiles' U-shaped `output_change`), where a forecast over a long gap misses most."""
    head = max(1, min(warmup, count, num_steps))
    rest = count - head
    if rest <= 0:
        return frozenset(range(head))
    base, extra = divmod(num_steps - head, rest)  # gaps from step head - 1 to the last step
    gaps = [base] * rest
    for k in sorted(range(rest), key=lambda k: (abs(k - (rest - 1) / 2), -k))[:extra]:  # the middle ones first
        gaps[k] += 1
    steps, step = set(range(head)), head - 1
    for gap in gaps:
        step += gap
        steps.add(step)
    return frozenset(steps)


@register_policy("taylorseer", TaylorSeer, level="block", speedup_by="schedule", in_default_eval=True)
class TaylorSeerPolicy(FORAPolicy):
    """speedup= takes the interval that reaches the target (TaylorSeer's fixed interval); where no interval does
    (intervals move the fraction in jumps: 1, then about 1/2, 1/3...), or with exact=True, the number of computed
    steps that does, spread evenly after the warm-up."""

    def __init__(self, config: TaylorSeer, model: ModelContext) -> None:
        super().__init__(config, model)
        self.corrector = float(config.corrector)
        self._plans: dict[int, tuple[int, frozenset[int] | None]] = {}
        self.check_ceiling_at_apply()
        self.searched_schedule = self._searched_schedule() if getattr(config, "searched", False) else None

    def _searched_schedule(self) -> tuple[tuple[int, ...], int]:
        """(the steps, the step count they were searched at) of the profile's schedule for this speedup."""
        from ..calibration import ProfileError, resolve_profile
        from ..calibration.sections import SearchedSchedules, searched_key

        config = self.config
        profile = resolve_profile(config.profile, self.model.transformer, "taylorseer", required=True)
        section = profile.section(SearchedSchedules)
        key = searched_key(config.order, config.coordinate)
        command = (
            f"dit-cache calibrate ... --resume --search-schedules {config.speedup:g} --search-order {config.order} "
            f"--search-coordinate {config.coordinate}"
        )
        if section is None:
            raise ProfileError(
                f"taylorseer: profile {profile.name!r} has no searched schedules; record them with `{command}`"
            )
        count = max(1, round(section.num_steps / config.speedup))
        steps = section.schedule(config.order, config.coordinate, count)
        if steps is None:
            have = {k: sorted(int(c) for c in v) for k, v in (section.schedules or {}).items()}
            raise ProfileError(
                f"taylorseer: profile {profile.name!r} has no schedule of {count} of {section.num_steps} steps "
                f"searched for {key} (speedup {config.speedup:g}); it has {have or 'none'}. Record it with `{command}`"
            )
        return tuple(steps), int(section.num_steps)

    @property
    def order(self) -> int:
        return self.config.order

    def least_computed(self, num_steps: int) -> int:
        """The fewest computed steps: the warm-up, and order + 1 to fill the history before a forecast."""
        return min(num_steps, max(self.config.warmup, 1, self.order + 1))

    def plan(self, num_steps: int) -> tuple[int, frozenset[int] | None]:
        """(interval, None) for a fixed interval, or (0, the computed steps) for a spread budget."""
        config = self.config
        listed = getattr(config, "steps", None)  # HyCa has no `steps`
        written_for = getattr(config, "num_steps", None)
        if self.searched_schedule is not None:
            listed, written_for = self.searched_schedule
        if listed is not None:
            if num_steps not in self._plans:
                self._plans[num_steps] = (0, map_steps(listed, written_for, num_steps, "taylorseer"))
            return self._plans[num_steps]
        if config.speedup is None:
            return (config.interval if config.interval is not None else 4), None
        if num_steps not in self._plans:
            target = 1.0 / config.speedup
            fraction, interval = nearest(interval_options(num_steps, config.warmup, self.order), target)
            if within(fraction, config.speedup) and not getattr(config, "exact", False):  # HyCa has no `exact`
                self._plans[num_steps] = (interval, None)
            else:
                least = self.least_computed(num_steps)
                fraction, count = nearest({c / num_steps: c for c in range(least, num_steps + 1)}, target)
                check_reached(
                    "taylorseer", config.speedup, fraction, num_steps,
                    f"compute fractions {least / num_steps:.3f}-1 in steps of 1/{num_steps}",
                    f"warmup={config.warmup} and order={self.order} (order + 1 computed steps) are always computed: "
                    "ask for less, lower warmup, or run more steps",
                )  # fmt: skip
                spread = exact_steps if getattr(config, "exact", False) else spread_steps
                self._plans[num_steps] = (0, spread(num_steps, config.warmup, count))
        return self._plans[num_steps]

    def check_ceiling_at_apply(self) -> None:
        config = self.config
        if config.speedup is None or config.speedup == 1:
            return
        check_ceiling(
            "taylorseer", config.speedup, floor_over_step_counts(lambda n: self.least_computed(n) / n),
            f"computing the warmup={config.warmup} first steps and order + 1 = {self.order + 1} steps of history",
            "Ask for less or lower warmup / order",
        )  # fmt: skip

    def decide(self, call: CallInfo, state: FORAState, values: list[float]) -> str:
        interval, steps = self.plan(call.num_steps)
        if (
            getattr(self.config, "steps", None) is not None or self.searched_schedule is not None
        ):  # no warm-up of its own
            due = call.step in steps
            if due or state.last_computed is None:
                state.last_computed = call.step
                return COMPUTE
            return FORECAST
        if steps is not None:
            due = call.step in steps
        else:
            if state.last_computed is None:
                self._check_history(call, interval)
            due = state.last_computed is not None and call.step - state.last_computed >= interval
        if call.step < self.config.warmup or state.last_computed is None or due:
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
