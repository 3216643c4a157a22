"""Speedup targets that are reached or refused, never silently missed.

Every policy that takes `speedup=X` resolves it to a setting whose planned compute fraction (in the units of
`stats()`) lies within `TOLERANCE` of 1 / X, or raises `SpeedupError` naming the target, what is reachable and the fix.
What can be known without the step count (a cap on consecutive reuses, always-computed blocks or steps) is checked
when the policy is applied; the rest on the first call of each step count, before anything is cached.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

TOLERANCE = 0.05  # the largest |planned compute fraction - 1 / speedup| a target may land at
# step counts at which `floor_over_step_counts` looks for the lowest structural compute fraction
STEP_COUNTS = (*range(2, 17), 20, 24, 28, 32, 40, 50, 64, 80, 100, 128, 200, 256)


class SpeedupError(ValueError):
    """A `speedup=` target that this policy cannot reach within TOLERANCE."""


def within(fraction: float, speedup: float) -> bool:
    """Whether a compute fraction meets a speedup target: |fraction - 1 / speedup| <= TOLERANCE (float noise aside)."""
    return abs(fraction - 1.0 / speedup) <= TOLERANCE + 1e-9


def describe(fraction: float) -> str:
    return f"compute fraction {fraction:.3f} ({1 / fraction:.2f}x)" if fraction > 0 else "compute fraction 0"


def check_reached(policy: str, speedup: float, planned: float, num_steps: int, reachable: str, fix: str) -> None:
    """Raise unless `planned` (the fraction the resolved setting computes) is within TOLERANCE of 1 / speedup.

    reachable: what this policy can reach at this step count, in words ("compute fractions 0.25-1.00").
    """
    if within(planned, speedup):
        return
    target = 1.0 / speedup
    raise SpeedupError(
        f"{policy}: speedup={speedup:g} (compute fraction {target:.3f}) is out of reach at {num_steps} steps: the "
        f"closest setting gives {describe(planned)}; reachable here: {reachable}. {fix}"
    )


def check_ceiling(policy: str, speedup: float, floor: float, why: str, fix: str, where: str = "") -> None:
    """At apply: raise when no step count can compute as little as 1 / speedup (within TOLERANCE) because at least
    `floor` of the work is always computed (`why` says what keeps it; `floor` over STEP_COUNTS, or a bound that holds
    at every step count)."""
    if floor <= 1.0 / speedup + TOLERANCE + 1e-9:
        return
    most = 1.0 / (floor - TOLERANCE) if floor > TOLERANCE else float("inf")
    raise SpeedupError(
        f"{policy}: speedup={speedup:g} is out of reach {where + ' ' if where else ''}at any step count "
        f"({STEP_COUNTS[0]}-{STEP_COUNTS[-1]}): {why} keeps "
        f"at least {describe(floor)}, so targets up to {most:.2f}x are reachable. {fix}"
    )


def floor_over_step_counts(floor_at: Callable[[int], float], step_counts: Iterable[int] = STEP_COUNTS) -> float:
    """The lowest compute fraction `floor_at(num_steps)` over common step counts (what no step count goes under)."""
    return min(floor_at(n) for n in step_counts)


def nearest(options: dict[float, object], target: float) -> tuple[float, object]:
    """(fraction, setting) of the option whose fraction is closest to `target` (ties: the larger fraction, safer)."""
    fraction = min(options, key=lambda f: (abs(f - target), -f))
    return fraction, options[fraction]


def span(fractions: Iterable[float]) -> str:
    values = sorted(set(round(f, 3) for f in fractions))
    if len(values) <= 6:
        return "compute fractions " + ", ".join(f"{v:.3f}" for v in values)
    return f"compute fractions {values[0]:.3f}-{values[-1]:.3f} in {len(values)} settings"
