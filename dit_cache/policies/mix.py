"""A per-step mixture in the style of MixCache: each call chooses whole-step reuse, token reuse or full compute, and
the unconditional CFG branch is rebuilt from the conditional one when its step was not fully computed.

Decision rule (documented in docs/policies.md), per branch and step:

    signal   acc += max(0, poly(rel_l1(I_t, I_prev)))      TeaCache's accumulated indicator change since the last
                                                            full compute; poly from the profile when one exists
                                                            (identity otherwise); one host read per call
    forced   first step, last step, the profile's warm-up, nothing cached yet, max_skip non-full steps in a row
             -> full compute
    acc < reuse_threshold                 -> step reuse (the block stack's residual of the last full compute)
    reuse_threshold <= acc < token_thr.   -> token reuse (self-attention reused, `fraction` of the tokens recomputed
                                             through MLP and cross-attention; acc is kept)
    acc >= token_threshold                -> full compute, acc = 0
    CFG ("cfg" mode), sequential branches: the unconditional call of a step whose conditional call was not fully
             computed is rebuilt from that conditional output and the difference stored at the last full step; when
             the conditional call computed in full, the unconditional one does too (it refreshes the difference).
    CFG, batched (one call for both halves): the choice must be made before the call runs, so it follows the
             previous step: after a step that was not fully computed, the call runs on the conditional half and the
             other half is rebuilt (the half calls keep their own signal, branch "cond").

A mode left out of `modes` drops its rung: without "token" the step-reuse threshold is token_threshold (the mixture
is then TeaCache plus CFG reuse); without "step" nothing is reused whole. Since acc only grows between full
computes, a run of non-full steps is step reuse first, then token reuse, then a full compute.

speedup= (with a profile that has TeaCache traces) scales both thresholds, keeping their ratio, until the rule
replayed on the traces computes 1 / speedup of the work (token steps counted by the share they compute).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..adapters import BlockCall
from ..config import (
    PolicyConfig,
    _check_int,
    _check_number,
    _check_open_fraction,
    _check_speedup,
)
from ..engine import BlockSlot
from ..schedulers.budget import replay, search_threshold
from ..schedulers.targets import TOLERANCE, SpeedupError, check_ceiling, check_reached
from ..state import COMPUTE, PARTIAL, REUSE, CallInfo
from .base import Locate, ModelContext, Policy, register_policy, shared_tuning
from .cfg import CFGPolicy
from .teacache import IDENTITY_DEFAULT_THRESHOLD, TeaCache, TeaCachePolicy, TeaCacheState
from .token import TokenMechanism, TokenState, read_token_layout

MIX_MODES = {"step": "step", "teacache": "step", "cfg": "cfg", "token": "token", "toca": "token"}


@dataclass(frozen=True)
class MixCache(PolicyConfig):
    """A per-step mixture in the style of MixCache: every call chooses step reuse, token reuse or full compute from
    the step's signal (TeaCache's accumulated, profile-rescaled indicator change since the last full compute), and
    the unconditional CFG branch is rebuilt from the conditional one whenever its step was not fully computed.

    Rule: acc < reuse_threshold -> reuse the whole step; acc < token_threshold -> token reuse (self-attention reused,
    `fraction` of the tokens recomputed through MLP and cross-attention); else full compute (acc = 0). First and
    last steps, and max_skip non-full steps in a row, compute in full.
    modes: the granularities to choose from, among "step" (alias "teacache"), "token" ("toca") and "cfg".
    Thresholds default to the profile's TeaCache threshold (token) and half of it (step), else 0.1 and 0.05;
    speedup= scales both on a profile's traces.
    """

    reuse_threshold: float | None = None
    token_threshold: float | None = None
    fraction: float = 0.3
    modes: tuple[str, ...] = ("step", "token", "cfg")
    max_skip: int | None = None
    profile: Any = None
    speedup: float | None = None

    def __post_init__(self):
        modes = (self.modes,) if isinstance(self.modes, str) else tuple(self.modes)
        for mode in modes:
            if mode not in MIX_MODES:
                raise ValueError(
                    f"mix: unknown policy {mode!r} in modes; the mixture chooses among step (alias teacache), token "
                    "(alias toca) and cfg; for other policies apply them directly or as CFGCache(step=...)"
                )
        canonical = tuple(dict.fromkeys(MIX_MODES[m] for m in modes))
        if not canonical:
            raise ValueError("mix: modes is empty; name at least one of step, token, cfg")
        object.__setattr__(self, "modes", canonical)
        _check_number("mix", "reuse_threshold", self.reuse_threshold)
        _check_number("mix", "token_threshold", self.token_threshold)
        if (
            self.reuse_threshold is not None
            and self.token_threshold is not None
            and self.reuse_threshold > self.token_threshold
        ):
            raise ValueError(
                f"mix: reuse_threshold ({self.reuse_threshold}) must not exceed token_threshold ({self.token_threshold}):"
                " whole-step reuse is for the calmer steps"
            )
        _check_open_fraction("mix", "fraction", self.fraction)
        _check_int("mix", "max_skip", self.max_skip, low=0)
        _check_speedup("mix", self.speedup)


@dataclass
class MixState(TeaCacheState):
    tokens: TokenState = field(default_factory=TokenState)


class MixChooser(TeaCachePolicy):
    """Step reuse / token reuse / full compute on one branch, from TeaCache's accumulated signal."""

    state_class = MixState
    intercepts_calls = True  # reads the token grid from the call's arguments

    def __init__(self, config: MixCache, model: ModelContext) -> None:
        tea = TeaCache(threshold=config.token_threshold, max_skip=config.max_skip, profile=config.profile)
        super().__init__(tea, model)
        self.config = config
        self.modes = config.modes
        self.uses_submodules = "token" in self.modes
        self.token_threshold = self.threshold
        if config.reuse_threshold is not None:
            self.reuse_threshold = config.reuse_threshold
        else:
            self.reuse_threshold = (
                self.token_threshold / 2 if self.profile is not None else IDENTITY_DEFAULT_THRESHOLD / 2
            )
            self.reuse_threshold = min(self.reuse_threshold, self.token_threshold)
        self.ratio = self.reuse_threshold / self.token_threshold if self.token_threshold > 0 else 0.5
        self.cfg_follow = "cfg" in self.modes
        self.mechanism = TokenMechanism(model, self_attention="reuse", age_scale=max(1.0, float(config.max_skip or 3)))
        self.mix_speedup = config.speedup
        if self.mix_speedup is not None:
            self._traced_profile(self.profile, "TeaCache indicator changes")
            if config.max_skip is not None and self.mix_speedup > 1:
                check_ceiling(
                    "mix", self.mix_speedup, 1.0 / (config.max_skip + 1),
                    f"a full step in every max_skip + 1 = {config.max_skip + 1} steps", "Ask for less or raise max_skip",
                )  # fmt: skip
        self._scales: dict[tuple, float] = shared_tuning(self)

    @property
    def name(self) -> str:
        return "mix"

    # ------------------------------------------------------------------------------------------ rule
    def thresholds(self, call: CallInfo) -> tuple[float, float]:
        """(step reuse below, token reuse below) of `call`'s decision after dropping the modes left out: planned once
        per step grid for a speedup target, else the configured ones."""
        if self.mix_speedup is None:
            step, token = self.reuse_threshold, self.token_threshold
        else:
            token = self.plan(call.num_steps, call.sigmas)
            step = token * self.ratio
        if "token" not in self.modes:
            step = token
        if "step" not in self.modes:
            step = 0.0
        return step, token

    def rule(self, call: CallInfo, state: MixState) -> str:
        state.accumulated += self.rescale(call.record.indicator)
        step, token = self.thresholds(call)
        if state.accumulated < step:
            return REUSE
        if state.accumulated < token:
            return PARTIAL
        return COMPUTE

    def forced(self, call: CallInfo, state: MixState) -> bool:
        # with CFG reuse, an unconditional call that runs does so to refresh the stored difference: in full
        return super().forced(call, state) or (self.cfg_follow and call.record.cfg == "uncond")

    def decide(self, call: CallInfo, state: MixState, values: list[float]) -> str:
        if self.mix_speedup is not None:  # plan first: an unreachable target fails on the first call
            self.plan(call.num_steps, call.sigmas)
        return super().decide(call, state, values)

    def fixed_mix(self, token: float) -> MixChooser:
        """A copy of this chooser that decides at token threshold `token` (and the step threshold in the configured
        ratio), with no speedup target: what the speedup search replays."""
        trial = copy.copy(self)
        trial.mix_speedup, trial.token_threshold, trial.reuse_threshold = None, token, token * self.ratio
        return trial

    # ------------------------------------------------------------------------------------------ mechanism
    def intercept_call(self, call: CallInfo, args: tuple, kwargs: dict, forward: Callable, locate: Locate) -> Any:
        read_token_layout(call, self.model, args, kwargs, keep_grid=True)
        return forward(*args, **kwargs)

    def run_block(self, call: CallInfo, state: Any, slot: BlockSlot, forward: Callable, block: BlockCall) -> Any:
        if state is not None and call.record.decision == PARTIAL:  # every block runs; its submodules go partial
            return forward(*block.args, **block.kwargs)
        return super().run_block(call, state, slot, forward, block)

    def run_submodule(
        self, call: CallInfo, state: MixState, slot: BlockSlot, name: str, forward: Callable, args: tuple, kwargs: dict
    ) -> Any:
        fraction = self.config.fraction if call.record.decision == PARTIAL else None
        return self.mechanism.run(call, state.tokens, slot, name, forward, args, kwargs, fraction)

    # ------------------------------------------------------------------------------------------ speedup
    def plan(self, num_steps: int, sigmas: list[float] | None) -> float:
        """The token threshold of a speedup target at this step grid, searched once on the profile's traces."""
        key = (num_steps, tuple(sigmas) if sigmas else None)
        if key not in self._scales:
            traces = self.replay_traces(num_steps, sigmas)
            total = sum(slot.units for slot in self.model.slots)
            speedup = self.mix_speedup

            def fraction_at(token: float) -> float:
                trial = self.fixed_mix(token)
                work = []
                for branch, values_for in traces:
                    decisions = replay(trial, branch, num_steps, sigmas, values_for)
                    units = [
                        total if d == COMPUTE else self.mechanism.units(self.config.fraction, s, num_steps)
                        if d == PARTIAL else 0.0
                        for s, d in enumerate(decisions)
                    ]  # fmt: skip
                    work.append(sum(units) / (total * num_steps))
                return sum(work) / len(work)

            best = search_threshold(fraction_at, 1.0 / speedup)
            floor = fraction_at(1e12)
            if floor > 1.0 / speedup + TOLERANCE:
                raise SpeedupError(
                    f"mix: speedup={speedup:g} is above what the mixture reaches on this profile at {num_steps} "
                    "steps (forced full steps); ask for less or loosen max_skip"
                )
            check_reached(
                "mix", speedup, fraction_at(best), num_steps,
                f"compute fractions {floor:.3f}-1, in jumps (thresholds move whole steps on these traces)",
                "Ask for a target near the closest, or calibrate on more prompts (smoother traces)",
            )  # fmt: skip
            self._scales[key] = best
        return self._scales[key]


@register_policy(
    "mix",
    MixCache,
    level="mixed",
    needs_profile="optional",
    speedup_by="profile",
    cfg_inner=False,
    in_default_eval=True,
)
class MixPolicy(CFGPolicy):
    """The chooser on every branch, wrapped by CFG reuse when "cfg" is among the modes."""

    def __init__(self, config: MixCache, model: ModelContext) -> None:
        Policy.__init__(self, config, model)
        self.inner = MixChooser(config, model)
        self.decision_block = self.inner.decision_block
        self.uses_submodules = self.inner.uses_submodules
        self.total_units = sum(slot.units for slot in model.slots)
        order = model.spec.cfg_batch_order
        self.cond_index = order.index("cond") if "cond" in order else 1
        self.cfg_enabled = "cfg" in config.modes
        self.reset({})
        self.inner_name = "the mixture's step/token rule"
        self._said = set()
        self._intervals = {}

    def resolve_target(self, num_steps: int) -> None:
        pass  # the chooser resolves the mixture's speedup= on its first decision

    # FasterCache's frequency weights are not part of the mixture: the stored difference is applied as is.
    def weights(self, step: int, num_steps: int) -> tuple[float, float]:
        return 1.0, 1.0

    def reuses(self, call: CallInfo) -> bool:
        t = self.trajectory
        if call.step == 0 or call.step == call.last_step:
            return False
        if call.branch == "uncond":  # sequential: follow this step's conditional call
            return t.cond_decision is not None and t.cond_decision != COMPUTE
        return t.last_decision is not None and t.last_decision != COMPUTE
