"""ERTACache-style caching (Peng et al. 2025): a schedule chosen offline from the profile's residual-error table, and
rectified reuse. The schedule executor of step.py runs it.

Offline residual profile: `res_pairs[i, c]`, recorded by every calibration, is the rel-L1 error of using step c's
block-stack residual at step i, averaged over the calibration prompts and the CFG branches (resampled to the call's
grid): every branch runs the same schedule.
The schedule computes step 0, then for every later step i reuses while that error against the last computed step c
stays under the threshold (and fewer than `max_skip` reuses in a row), else computes (c = i).

Rectification: a residual reused at step i from step c is scaled by the closed-form gain prod(ratio_k, c < k <= i),
the profile's per-step residual-norm ratios (MagCache's mag_ratio): the linear correction that matches the reused
residual's magnitude to the one the trajectory reaches at step i.

Timestep adjustment (`adjust_timestep=True`): a flow-matching Euler step x_(i+1) = x_i + (sigma_(i+1) - sigma_i) v_i
taken with a reused output v^ is corrected by a step size d~_i = s_i (sigma_(i+1) - sigma_i) instead of the
scheduler's. dit_cache does not drive the sampler, but for this update a step size s d is exactly an output s v^, so
the policy scales the transformer's output of a reused step by s_i. s_i is the least-squares step size that brings
the reused step's update closest to the reference one, fitted offline: with v^ = v_c (the output of the step c the
schedule reuses from) s_i = <v_c, v_i> / <v_c, v_c>, from the profile's `output_gram` (mean products of the recorded
outputs), pooled over the calibration prompts and CFG branches (one s per step: the guided output is then scaled by
the same s, still an exact step size). Refused where the calling pipeline's scheduler is not an ODE Euler one.

speedup= searches the threshold whose schedule computes 1 / speedup of the steps, on the same table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..calibration import ProfileError, keys, resolve_profile
from ..calibration.recorder import model_output_tensor
from ..calibration.resample import resample_matrix
from ..config import (
    PolicyConfig,
    _check_int,
    _check_number,
    _check_speedup,
)
from ..schedulers.budget import search_threshold
from ..schedulers.targets import check_reached
from ..state import COMPUTE, REUSE, CallInfo, calling_pipeline
from .base import ModelContext, register_policy
from .step import SegmentPolicy, SegmentState

DEFAULT_THRESHOLD = 0.1
# schedulers whose step is x + (sigma_next - sigma) * output: a step size change is exactly a scale on the output
EULER_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler",)


@dataclass(frozen=True)
class ERTACache(PolicyConfig):
    """ERTACache-style (Peng et al. 2025): a schedule fixed offline from a profile's residual-error table, with
    rectified reuse. The profile's `res_pairs` hold, per pair of steps (i, c), the rel-L1 error of using step c's
    block-stack residual at step i, averaged over the calibration prompts and CFG branches; the schedule (one for
    every branch) computes step 0 and reuses every later step i while that error against the last computed step c
    stays under `threshold` (at most `max_skip` in a row). A reused residual is rectified by the closed-form gain prod(ratio_k, c < k <= i) of the profile's
    residual-norm ratios (`rectify=False`: reused as is). `adjust_timestep=True`: the transformer's output of a
    reused step is scaled by the least-squares step size s_i = <v_c, v_i> / <v_c, v_c> of the profile's recorded
    outputs (v_c the reused step's, v_i the reference's), which for a flow-matching Euler scheduler is exactly the
    step size s_i (sigma_(i+1) - sigma_i) in place of the scheduler's.

    threshold: error bound (None: 0.1, or the one that gives `speedup`, searched on the profile).
    """

    threshold: float | None = None
    max_skip: int | None = None
    rectify: bool = True
    profile: Any = None
    speedup: float | None = None
    adjust_timestep: bool = False

    def __post_init__(self):
        _check_number("ertacache", "threshold", self.threshold)
        _check_int("ertacache", "max_skip", self.max_skip, low=0)
        for name in ("rectify", "adjust_timestep"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"ertacache: {name} must be True or False, got {getattr(self, name)!r}")
        _check_speedup("ertacache", self.speedup)
        if self.speedup is not None and self.threshold is not None:
            raise ValueError("ertacache: give threshold or speedup, not both (speedup picks the threshold)")


def greedy_schedule(errors: np.ndarray, threshold: float, max_skip: int | None) -> frozenset[int]:
    """The steps computed when each step reuses the last computed one while errors[i, c] < threshold."""
    computed, last, skips = [0], 0, 0
    for i in range(1, errors.shape[0]):
        if errors[i, last] < threshold and (max_skip is None or skips < max_skip):
            skips += 1
        else:
            computed.append(i)
            last, skips = i, 0
    return frozenset(computed)


@register_policy("ertacache", ERTACache, level="step", needs_profile="recorded", speedup_by="profile")
class ERTACachePolicy(SegmentPolicy):
    def __init__(self, config: ERTACache, model: ModelContext) -> None:
        super().__init__(config, model)
        self.speedup = None  # the schedule, not a runtime threshold, carries the target
        self.profile = resolve_profile(config.profile, model.transformer, "ertacache", required=True)
        if not self.profile.has_array(keys.RES_PAIRS, records=False):
            raise ProfileError(
                f"ertacache: profile {self.profile.name!r} has no residual-error table (res_pairs); record one with "
                "`dit-cache calibrate` (any calibration records it) and pass profile=PATH"
            )
        if config.rectify and not self.profile.has(keys.MAG_RATIO):
            raise ProfileError(
                f"ertacache: profile {self.profile.name!r} has no residual-norm ratios to rectify with; recalibrate "
                "it, or pass rectify=False"
            )
        if config.adjust_timestep:
            if not self.profile.has_array(keys.OUTPUT_GRAM, records=False):
                raise ProfileError(
                    f"ertacache: profile {self.profile.name!r} has no output products (output_gram) to fit the "
                    "timestep adjustment on; recalibrate it with `dit-cache calibrate --block-traces` (this version records them), "
                    "or pass adjust_timestep=False"
                )
            check_euler(self.profile.sampler.get("scheduler"), f"profile {self.profile.name!r} was calibrated with")

    # ------------------------------------------------------------------------------------------------ schedule
    def errors(self, num_steps: int, sigmas: list[float] | None) -> np.ndarray:
        """The mean over the recorded branches of their res_pairs, symmetric, on the call's grid."""
        tables = []
        for branch, data in self.profile.branches.items():
            table = self.profile.arrays.get(keys.branch_array(branch, keys.RES_PAIRS))
            grid = data.get(keys.GRID)
            if table is not None and grid is not None and len(grid) == table.shape[0]:
                lower = np.tril(table.double().numpy(), -1)
                tables.append(resample_matrix(lower + lower.T, grid, self.profile.call_grid(num_steps, sigmas)))
        if not tables:
            raise ProfileError(f"ertacache: profile {self.profile.name!r} has no res_pairs on a recorded grid")
        return np.mean(tables, axis=0)

    def steps_for_call(self, call: CallInfo) -> frozenset[int]:
        """One schedule for every CFG branch: branches computed on different steps make errors that guidance
        amplifies instead of cancelling (the paper, like EasyCache, decides once per step)."""
        key = ("ertacache", call.num_steps, tuple(call.sigmas) if call.sigmas else None)
        if key not in self._tuned:
            errors = self.errors(call.num_steps, call.sigmas)
            config = self.config
            if config.speedup is None:
                threshold = config.threshold if config.threshold is not None else DEFAULT_THRESHOLD
            else:
                n = call.num_steps

                def fraction_at(threshold: float) -> float:
                    return len(greedy_schedule(errors, threshold, config.max_skip)) / n

                threshold = search_threshold(fraction_at, 1.0 / config.speedup)
                floor = 1 if config.max_skip is None else -(-n // (config.max_skip + 1))
                check_reached(
                    "ertacache", config.speedup, fraction_at(threshold), n,
                    f"compute fractions {floor / n:.3f}-1 in steps of 1/{n}, where the profile's errors part them",
                    "Ask for a target near the closest, or calibrate on more prompts (smoother errors)",
                )  # fmt: skip
            self._tuned[key] = greedy_schedule(errors, threshold, config.max_skip)
        return self._tuned[key]

    def forced(self, call: CallInfo, state: SegmentState) -> bool:
        self.steps_for_call(call)  # an unreachable target fails on the first call, before anything is cached
        if self.config.adjust_timestep and call.step == 0:
            scheduler = getattr(calling_pipeline(self.model.transformer), "scheduler", None)
            if scheduler is not None:  # a transformer driven outside a pipeline: not detectable
                check_euler(type(scheduler).__name__, "the calling pipeline runs", scheduler)
        return super().forced(call, state) or call.step == 0

    def rule(self, call: CallInfo, state: SegmentState) -> str:
        return COMPUTE if call.step in self.steps_for_call(call) else REUSE

    # ------------------------------------------------------------------------------------------------ rectification
    def residual_scale(self, call: CallInfo, state: SegmentState) -> float | None:
        if not self.config.rectify or state.last_computed is None:
            return None
        key = ("ertacache-ratios", call.branch, call.num_steps, tuple(call.sigmas) if call.sigmas else None)
        if key not in self._tuned:
            self._tuned[key] = self.profile.per_step(call.branch, keys.MAG_RATIO, call.num_steps, call.sigmas)
        ratios = self._tuned[key]
        return float(np.prod(ratios[state.last_computed + 1 : call.step + 1]))

    # ------------------------------------------------------------------------------------------------ timestep
    def step_sizes(self, call: CallInfo) -> np.ndarray:
        """Per step of the call's grid, the factor on its scheduler step size (1 on computed steps): on a step i
        reused from c, sum <v_c, v_i> / sum <v_c, v_c> over the recorded branches (mean products, symmetric)."""
        key = ("ertacache-steps", call.num_steps, tuple(call.sigmas) if call.sigmas else None)
        if key not in self._tuned:
            dst = self.profile.call_grid(call.num_steps, call.sigmas)
            gram = np.zeros((call.num_steps, call.num_steps))
            for branch, data in self.profile.branches.items():
                table = self.profile.arrays.get(keys.branch_array(branch, keys.OUTPUT_GRAM))
                grid = data.get(keys.GRID)
                if table is not None and grid is not None and len(grid) == table.shape[0]:
                    lower = np.tril(table.double().numpy())
                    gram += resample_matrix(lower + np.tril(lower, -1).T, grid, dst)
            computed = self.steps_for_call(call)
            sizes, source = np.ones(call.num_steps), 0
            for i in range(call.num_steps):
                if i in computed:
                    source = i
                elif gram[source, source] > 0:
                    sizes[i] = gram[i, source] / gram[source, source]
            self._tuned[key] = sizes
        return self._tuned[key]

    def finish(self, call: CallInfo, state: SegmentState, output: Any) -> Any:
        if not self.config.adjust_timestep or call.record.decision == COMPUTE:
            return output
        return scaled_output(output, float(self.step_sizes(call)[call.step]))


def check_euler(scheduler: str | None, where: str, instance: Any = None) -> None:
    """Refuse the timestep adjustment on a scheduler whose step is not x + (sigma_next - sigma) * output."""
    stochastic = bool((getattr(instance, "config", None) or {}).get("stochastic_sampling", False))
    if scheduler is None or (scheduler in EULER_SCHEDULERS and not stochastic):
        return
    what = f"{scheduler} with stochastic_sampling" if stochastic else scheduler
    raise ValueError(
        f"ertacache: adjust_timestep=True is exact only for an ODE Euler step ({', '.join(EULER_SCHEDULERS)}), and "
        f"{where} {what}; use that scheduler, or pass adjust_timestep=False"
    )


def scaled_output(output: Any, factor: float) -> Any:
    """The transformer's output with its prediction (the tensor, the first of a tuple, or `.sample`) times factor."""
    if factor == 1.0:
        return output
    if isinstance(output, torch.Tensor):
        return output * factor
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        return (output[0] * factor, *output[1:])
    sample = model_output_tensor(output)
    if isinstance(output, dict) and sample is not None:  # diffusers' BaseOutput is a dict too
        return type(output)(**{**output, "sample": sample * factor})
    raise TypeError(f"ertacache: cannot scale a transformer output of type {type(output).__name__}")
