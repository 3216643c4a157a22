"""Fixed schedules: compute exactly the listed steps (the segment mechanism of step.py), reuse in between."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import PolicyConfig, _check_int, _check_order
from ..state import COMPUTE, REUSE, CallInfo
from .base import ModelContext, register_policy
from .step import SegmentPolicy, SegmentState


@dataclass(frozen=True)
class Schedule(PolicyConfig):
    """Compute exactly the steps in `steps` (0-based, sorted, must include 0); reuse the last residual in between.

    num_steps: the step count `steps` was written for; a call with another step count maps each listed step to the
    nearest step at the same position of the trajectory. None: `steps` index the call as they are.
    """

    steps: tuple[int, ...] = field(default=())
    num_steps: int | None = None
    forecast: int = 0

    def __post_init__(self):
        _check_order("schedule", "forecast", self.forecast)
        object.__setattr__(self, "steps", check_steps("schedule", self.steps, self.num_steps))


def check_steps(policy: str, steps, num_steps: int | None) -> tuple[int, ...]:
    """A list of computed steps as a tuple: non-negative, strictly increasing, starting at 0, within `num_steps`."""
    if isinstance(steps, (str, bytes)) or not hasattr(steps, "__iter__"):
        raise ValueError(
            f"{policy}: steps must be a sequence of step indices, e.g. steps=(0, 1, 2, 4, 8), got {steps!r}"
        )
    steps = tuple(steps)
    if not steps:
        raise ValueError(f"{policy}: steps must list the step indices to compute, e.g. steps=(0, 1, 2, 4, 8, 16)")
    for s in steps:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ValueError(f"{policy}: steps must be non-negative integers, got {s!r} in {steps}")
    if list(steps) != sorted(set(steps)):
        raise ValueError(f"{policy}: steps must be strictly increasing without repeats, got {steps}")
    if steps[0] != 0:
        raise ValueError(f"{policy}: step 0 must be computed (there is nothing to reuse before it), got {steps}")
    _check_int(policy, "num_steps", num_steps, low=1)
    if num_steps is not None and steps[-1] >= num_steps:
        raise ValueError(
            f"{policy}: step {steps[-1]} is out of range for num_steps={num_steps} (valid: 0..{num_steps - 1})"
        )
    return steps


def map_steps(
    steps: tuple[int, ...], written_for: int | None, num_steps: int, policy: str = "schedule"
) -> frozenset[int]:
    """The listed steps for a call of `num_steps` steps: as they are, or moved to the same trajectory position."""
    if written_for is None or written_for == num_steps:
        if steps[-1] >= num_steps:
            raise ValueError(
                f"{policy}: step {steps[-1]} is out of range for a {num_steps}-step call (valid: 0..{num_steps - 1}); "
                "pass num_steps=<the step count the list was written for> to map it onto other step counts"
            )
        return frozenset(steps)
    if written_for == 1 or num_steps == 1:
        return frozenset({0})
    scale = (num_steps - 1) / (written_for - 1)
    return frozenset({0, *(min(num_steps - 1, round(s * scale)) for s in steps)})


@register_policy("schedule", Schedule, level="step")
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
