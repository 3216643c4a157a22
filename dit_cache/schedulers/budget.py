"""Speedup targets: pick a threshold by replaying a policy's own decision rule on recorded traces.

The replay drives the policy's real `decide` with the values its probe would have measured (taken from the
profile), so the plan and the run use one rule. The compute fraction is counted in the same units as `stats()`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..state import COMPUTE, CallInfo

# values_for(step, state) -> what the probe would have read at that step (e.g. [num, den] of a rel-L1)
ValuesFor = Callable[[int, Any], list[float]]


def replay(
    policy: Any,
    branch: str,
    num_steps: int,
    sigmas: Sequence[float] | None,
    values_for: ValuesFor,
    steps: range | None = None,
) -> list[str]:
    """The decisions `policy` takes on one branch of one trajectory, on `steps` of it (all by default; one expert's
    steps where experts share the trajectory, Wan 2.2 A14B: it starts there with a fresh state, as in the run).
    The replay owns its state: `decide` changes nothing else."""
    state = policy.new_state()
    decisions = []
    sigmas = list(sigmas) if sigmas is not None else None
    for step in range(num_steps) if steps is None else steps:
        sigma = sigmas[step] if sigmas else None
        call = CallInfo(branch, None, step=step, num_steps=num_steps, sigma=sigma, sigmas=sigmas).seal()
        decisions.append(policy.decide(call, state, values_for(step, state)))
    return decisions


def replay_fraction(
    policy: Any,
    traces: Sequence[tuple[str, ValuesFor]],
    num_steps: int,
    sigmas: Sequence[float] | None,
    steps: range | None = None,
) -> float:
    """Mean compute fraction (attention/MLP units, as in stats()) of `policy` over the traces, on `steps` (all by
    default; one expert's own steps where experts share the trajectory)."""
    total_units = sum(slot.units for slot in policy.model.slots)
    segment_share = policy.segment_units / total_units if total_units else 1.0
    fractions = []
    for branch, values_for in traces:
        decisions = replay(policy, branch, num_steps, sigmas, values_for, steps)
        reused = sum(d != COMPUTE for d in decisions)
        fractions.append(1.0 - segment_share * reused / len(decisions))
    return sum(fractions) / len(fractions)


def search_threshold(fraction_at: Callable[[float], float], target: float, *, iterations: int = 48) -> float:
    """The threshold whose compute fraction is closest to `target` (ties: the smaller, i.e. safer, threshold).

    fraction_at(threshold) must be (roughly) non-increasing; the search brackets, then bisects.
    """
    evaluated: dict[float, float] = {}

    def at(t: float) -> float:
        if t not in evaluated:
            evaluated[t] = fraction_at(t)
        return evaluated[t]

    lo, hi = 0.0, 1e-3
    at(lo)  # threshold 0 reuses nothing: the answer for a target of 1 (compute everything)
    while at(hi) > target and hi < 1e6:
        lo, hi = hi, hi * 4
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if at(mid) > target:
            lo = mid
        else:
            hi = mid
    return min(evaluated, key=lambda t: (abs(evaluated[t] - target), t))
