"""Plain schedules: every k-th step, or an explicit list."""

from __future__ import annotations


def fixed_interval(num_steps: int, interval: int, *, last: bool = False) -> list[int]:
    """Steps 0, k, 2k, ... (and the last step with `last=True`)."""
    if interval < 1:
        raise ValueError(f"interval must be >= 1, got {interval}")
    steps = list(range(0, num_steps, interval))
    if last and steps[-1] != num_steps - 1:
        steps.append(num_steps - 1)
    return steps


def explicit(steps, num_steps: int) -> list[int]:
    """A validated explicit list: sorted, unique, within range, starting at 0."""
    out = sorted(set(int(s) for s in steps))
    if not out or out[0] != 0 or out[-1] >= num_steps:
        raise ValueError(f"steps must start at 0 and stay below {num_steps}, got {steps}")
    return out
