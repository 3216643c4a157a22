"""CFG reuse in the style of FasterCache (Lv et al. 2024), as a wrapper around any inner policy.

Full steps (the first `warmup` share of the steps, then every `interval`-th) compute both guidance branches and
store d = unconditional - conditional output. Other steps compute only the conditional branch and rebuild the
unconditional one: u = c + w_high * d + (w_low - w_high) * low(d), low() the spatial low-pass of FasterCache's split
(so u = c + d exactly when both weights are 1). The weights are `alpha_low` / `alpha_high` inside their windows of
the trajectory and 1 outside.

How each pipeline runs CFG:
- sequential branches (Flux true-CFG, Wan, HunyuanVideo, Qwen-Image: `cache_context("cond")` then `("uncond")`;
  Chroma, Kandinsky 5... set none, and their branch is read from the pipeline's embeddings, see
  `state.sequential_cfg_branch`): the conditional call runs as usual and its output is kept; on a reuse step the
  unconditional call returns the rebuilt output without running the transformer (its step is located from its
  timestep first: one host read).
- batched CFG (SD3, PixArt, CogVideoX, LTX: one call on a doubled batch, halves in the adapter's `cfg_batch_order`):
  on a reuse step every batched part of the arguments is cut to the conditional half (`batched.py`: tensors of the
  doubled batch in nested lists and dicts, or Z-Image's lists of samples), the transformer runs on it and the other
  half of every batched output is rebuilt (LTX-2: video and audio, each with its own stored difference). Guidance counts as on when the batch is even
  and its two latent halves are equal (the pipeline's `cat([latents] * 2)`), read with the step in one host read.
  The inner policy keeps a separate state for those half calls (branch "cond"): its decisions there run on the
  sub-trajectory of reuse steps.
With guidance off (one branch, or a batch that is not a doubled latent) there is nothing to do: that is logged once
and the inner policy runs alone.

Stats: a rebuilt sequential unconditional call records "reused" with no work; a batched call on the conditional
half records two rows, "cond" (the inner decision, half of the call's units) and "uncond" ("reused", no work).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .. import kernels
from ..config import (
    PolicyConfig,
    _check_fraction,
    _check_int,
    _check_number,
    _check_speedup_below,
    make_config,
)
from ..schedulers.targets import check_ceiling, check_reached, floor_over_step_counts, nearest, span
from ..state import REUSE, CallInfo
from ..stats import StepRecord
from .base import Locate, ModelContext, Policy, policies_where, policy_class, register_policy
from .batched import Batch, batch_of, batched_parts, joined, like, map_batched, stacked
from .grid import low_pass
from .token import grid_of_call

logger = logging.getLogger(__name__)

DEFAULT_INTERVAL = 2


@dataclass(frozen=True)
class CFGCache(PolicyConfig):
    """CFG reuse in the style of FasterCache (Lv et al. 2024): every `interval`-th step computes both guidance
    branches and stores their difference (unconditional minus conditional output); the steps in between compute
    only the conditional branch and rebuild the unconditional one from it and the stored difference.

    warmup: share of the first steps that always compute both branches. alpha_low / alpha_high: weights of the low /
        high spatial-frequency part of the stored difference on rebuilt steps whose trajectory position (1 at the
        first step, 0 at the last) lies in low_range / high_range (FasterCache's timestep windows); 1 outside.
    step: an inner policy for everything else (a name, a config such as TeaCache(), or None): it runs on every
        computed branch, so CFG reuse combines with any step, block or token policy.
    speedup: picks the interval (at most 2x: only the unconditional half of the work can be saved).
    """

    interval: int | None = None
    warmup: float = 0.2
    alpha_low: float = 1.1
    alpha_high: float = 1.1
    low_range: tuple[float, float] = (0.1, 0.9)
    high_range: tuple[float, float] = (0.0, 0.3)
    step: Any = None
    speedup: float | None = None

    def __post_init__(self):
        _check_int("cfg", "interval", self.interval, low=1)
        _check_fraction("cfg", "warmup", self.warmup)
        for name in ("alpha_low", "alpha_high"):
            _check_number("cfg", name, getattr(self, name), allow_none=False)
        for name in ("low_range", "high_range"):
            value = tuple(getattr(self, name))
            object.__setattr__(self, name, value)
            if len(value) != 2 or not all(isinstance(v, (int, float)) for v in value) or not value[0] < value[1]:
                raise ValueError(
                    f"cfg: {name} must be (start, end) with start < end, positions of the trajectory from 1 (first "
                    f"step) to 0 (last step), got {value!r}"
                )
        _check_speedup_below("cfg", self.speedup, 2.0, "CFG reuse saves at most the unconditional half of the work")
        if self.speedup is not None and self.interval is not None:
            raise ValueError("cfg: give interval or speedup, not both (speedup picks the interval)")
        object.__setattr__(self, "step", _inner_config("cfg", self.step))


def _inner_config(policy: str, value: Any) -> PolicyConfig | None:
    """An inner policy given as a name, a config dict or a config; composites cannot nest."""
    if value is None:
        return None
    if isinstance(value, str):
        config = make_config(value)
    elif isinstance(value, dict):
        config = PolicyConfig.from_dict(value)
    elif isinstance(value, PolicyConfig):
        config = value
    else:
        raise TypeError(
            f"{policy}: step must be a policy name or config (e.g. dit_cache.TeaCache()), got {type(value).__name__}"
        )
    inner = policy_class(config)
    if not inner.cfg_inner or inner.internal:
        raise ValueError(
            f"{policy}: step={config.policy_name!r} cannot be an inner policy; give a step, block or token policy "
            f"({', '.join(policies_where(cfg_inner=True))})"
        )
    return config


def full_steps(num_steps: int, interval: int, warmup: float) -> list[int]:
    """The steps that compute both branches."""
    steps, last = [], None
    for step in range(num_steps):
        if step < warmup * num_steps or last is None or step - last >= interval:
            steps.append(step)
            last = step
    return steps


def interval_options(num_steps: int, warmup: float) -> dict[float, int]:
    """CFG compute fraction ((2 per full step + 1 per reuse step) / 2 per step) -> the smallest interval giving it."""
    options: dict[float, int] = {}
    for interval in range(1, num_steps + 1):
        full = len(full_steps(num_steps, interval, warmup))
        options.setdefault((2 * full + (num_steps - full)) / (2 * num_steps), interval)
    return options


def interval_for_speedup(num_steps: int, warmup: float, speedup: float) -> int:
    """The interval whose CFG compute fraction is closest to 1 / speedup (ties: the smaller)."""
    return nearest(interval_options(num_steps, warmup), 1.0 / speedup)[1]


@dataclass
class CFGTrajectory:
    """What CFG reuse keeps across the branches of one pipeline call."""

    last_full: int | None = None
    # sequential: (step, the conditional call's batched outputs, its batch, its output object)
    cond: tuple[int, list[torch.Tensor], Batch, Any] | None = None
    # unconditional - conditional output of the last full step, one tensor per batched output (LTX-2: video, audio)
    delta: list[torch.Tensor] | None = None
    delta_low: torch.Tensor | None = None  # the first output's low spatial frequencies (when the weights need it)
    grid: Any = None
    seen_uncond: bool = False
    cond_decision: str | None = None  # the inner decision of the last conditional call (sequential)
    last_decision: str | None = None  # the inner decision of the last call


@register_policy("cfg", CFGCache, level="cfg", speedup_by="schedule", cfg_inner=False, in_default_eval=True)
class CFGPolicy(Policy):
    intercepts_calls = True
    cfg_enabled = True  # a subclass may run without CFG reuse (the mixture without the "cfg" mode)

    def __init__(self, config: CFGCache, model: ModelContext) -> None:
        super().__init__(config, model)
        self.inner = self.make_inner(config, model)
        self.decision_block = self.inner.decision_block
        self.uses_submodules = self.inner.uses_submodules
        self.total_units = sum(slot.units for slot in model.slots)
        order = model.spec.cfg_batch_order
        self.cond_index = order.index("cond") if "cond" in order else 1
        self.trajectory = CFGTrajectory()
        self.inner_name = self.inner.name if type(self.inner) is not Policy else "the uncached model"
        self._said: set[str] = set()
        self._intervals: dict[int, int] = {}
        if config.speedup is not None and config.speedup > 1:
            check_ceiling(
                "cfg", config.speedup,
                floor_over_step_counts(lambda n: min(interval_options(n, config.warmup))),
                f"computing both branches on the first step and the warm-up (warmup={config.warmup:g} of the steps) "
                "and the conditional branch on every step",
                "Ask for less or lower warmup",
            )  # fmt: skip

    def make_inner(self, config: CFGCache, model: ModelContext) -> Policy:
        """The policy every computed branch runs (the base Policy computes everything)."""
        if config.step is None:
            return Policy(config, model)
        return policy_class(config.step)(config.step, model)

    # ------------------------------------------------------------------------------------------ delegation
    def new_state(self) -> Any:
        return self.inner.new_state()

    def reset(self, states: dict[str, Any]) -> None:
        self.inner.reset(states)
        self.trajectory = CFGTrajectory()

    def probe(self, call, state, slot, block):
        return self.inner.probe(call, state, slot, block)

    def decide(self, call, state, values):
        return self.inner.decide(call, state, values)

    def run_block(self, call, state, slot, forward, block):
        return self.inner.run_block(call, state, slot, forward, block)

    def run_submodule(self, call, state, slot, name, forward, args, kwargs):
        return self.inner.run_submodule(call, state, slot, name, forward, args, kwargs)

    # ------------------------------------------------------------------------------------------ the rule
    def interval(self, num_steps: int) -> int:
        if self.config.speedup is None:
            return self.config.interval if self.config.interval is not None else DEFAULT_INTERVAL
        if num_steps not in self._intervals:
            options = interval_options(num_steps, self.config.warmup)
            fraction, interval = nearest(options, 1.0 / self.config.speedup)
            check_reached(
                "cfg", self.config.speedup, fraction, num_steps, span(options),
                f"Both branches run on the warm-up (warmup={self.config.warmup:g} of the steps): ask for less, "
                "lower warmup, or run more steps",
            )  # fmt: skip
            self._intervals[num_steps] = interval
        return self._intervals[num_steps]

    def resolve_target(self, num_steps: int) -> None:
        """Resolve speedup= for this step count before any block runs: an unreachable target fails here."""
        self.interval(num_steps)

    def reuses(self, call: CallInfo) -> bool:
        """Whether the unconditional branch of `call`'s step is rebuilt (else both branches are computed). Called
        after `locate`, before the transformer runs; the stored difference exists."""
        step, num_steps = call.step, call.num_steps
        last = self.trajectory.last_full
        if step < self.config.warmup * num_steps or last is None:
            return False
        return step - last < self.interval(num_steps)

    def weights(self, step: int, num_steps: int) -> tuple[float, float]:
        position = 1.0 - step / (num_steps - 1) if num_steps > 1 else 1.0
        low, high = self.config.low_range, self.config.high_range
        w_low = self.config.alpha_low if low[0] < position < low[1] else 1.0
        w_high = self.config.alpha_high if high[0] < position < high[1] else 1.0
        return float(w_low), float(w_high)

    def rebuild(self, call: CallInfo, cond: list[torch.Tensor]) -> list[torch.Tensor]:
        """The unconditional outputs from the conditional ones and the stored differences. The frequency split is
        spatial: it weights the first output (the latent, whose token grid is known); the others (LTX-2's audio)
        get their difference as is."""
        t = self.trajectory
        w_low, w_high = self.weights(call.step, call.num_steps)
        uncond = [kernels.apply_residual(cond[0], t.delta[0], None if w_high == 1.0 else w_high)]
        if w_low != w_high:
            if t.delta_low is None:
                t.delta_low = low_pass(t.delta[0], t.grid).to(t.delta[0].dtype)
            uncond[0] = kernels.apply_residual(uncond[0], t.delta_low, w_low - w_high)
        return uncond + [kernels.apply_residual(c, d, None) for c, d in zip(cond[1:], t.delta[1:])]

    def store_delta(self, uncond: list[torch.Tensor], cond: list[torch.Tensor], step: int, grid: Any = None) -> None:
        t = self.trajectory
        buffers = t.delta if t.delta is not None and not torch.is_grad_enabled() else None
        if buffers is not None and [b.shape for b in buffers] != [u.shape for u in uncond]:
            buffers = None
        t.delta = [
            kernels.store_residual(u.detach(), c.detach(), None if buffers is None else buffers[i])
            for i, (u, c) in enumerate(zip(uncond, cond))
        ]
        t.delta_low = None
        t.last_full = step
        t.grid = grid

    def fits(self, parts: list[torch.Tensor]) -> bool:
        """Whether the stored differences can rebuild the unconditional counterparts of `parts`."""
        delta = self.trajectory.delta
        return delta is not None and [d.shape for d in delta] == [p.shape for p in parts]

    def _say_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._said:
            self._said.add(key)
            logger.info(message, *args)

    # ------------------------------------------------------------------------------------------ whole calls
    def intercept_call(self, call: CallInfo, args: tuple, kwargs: dict, forward: Callable, locate: Locate) -> Any:
        inner = self.inner

        def run(call: CallInfo, *a, **k):
            if inner.intercepts_calls:
                return inner.intercept_call(call, a, k, forward, locate)
            return forward(*a, **k)

        record = call.record
        record.grid, record.grid_read = grid_of_call(self.model, args, kwargs), True
        if not self.cfg_enabled:
            return run(call, *args, **kwargs)
        if call.branch == "cond":
            record.cfg = "cond"
            record.cfg_batch = batch_of(_hidden(args, kwargs))
            return run(call, *args, **kwargs)
        if call.branch == "uncond":
            return self._uncond(call, args, kwargs, run, locate)
        return self._batched(call, args, kwargs, run, locate)

    def _uncond(self, call: CallInfo, args: tuple, kwargs: dict, run: Callable, locate: Locate) -> Any:
        locate(call, None)
        self.resolve_target(call.num_steps)
        t = self.trajectory
        t.seen_uncond = True
        cond = t.cond
        fresh = cond is not None and cond[0] == call.step
        if fresh and self.fits(cond[1]) and self.reuses(call):
            call.record.prepared, call.record.decision = True, REUSE
            call.record.skipped_units = self.total_units
            call.record.cfg = "rebuilt"
            uncond = iter(self.rebuild(call, cond[1]))
            return map_batched(cond[3], cond[2], lambda part: like(part, next(uncond)))
        call.record.cfg = "uncond" if fresh else "uncond-alone"
        if not fresh:
            self._say_once(
                "order", "dit_cache cfg: the unconditional call of step %s came before its conditional call; "
                "it is computed (CFG reuse rebuilds it from the conditional output of the same step)", call.step
            )  # fmt: skip
        return run(call, *args, **kwargs)

    def _batched(self, call: CallInfo, args: tuple, kwargs: dict, run: Callable, locate: Locate) -> Any:
        batch = batch_of(_hidden(args, kwargs))
        differ = None
        if batch is not None and batch.size >= 2 and batch.size % 2 == 0:
            latents = stacked(_hidden(args, kwargs))
            half = batch.size // 2
            differ = (latents[:half] != latents[half:]).any().float().reshape(1)
        values = locate(call, differ)
        if differ is None or values[-1] != 0:
            self._say_once(
                "off-batched", "dit_cache cfg: guidance is off for this pipeline call (the batch is not a doubled latent): "
                "CFG reuse has nothing to do; %s runs alone", self.inner_name
            )  # fmt: skip
            call.record.cfg = "off"
            return run(call, *args, **kwargs)
        half = batch.size // 2
        t = self.trajectory
        self.resolve_target(call.num_steps)
        call.record.cfg_batch = batch
        if t.delta is not None and all(d.shape[0] == half for d in t.delta) and self.reuses(call):
            cond_half = slice(self.cond_index * half, (self.cond_index + 1) * half)
            cut = lambda part: part[cond_half]  # noqa: E731
            half_args = map_batched(args, batch, cut)
            half_kwargs = {name: map_batched(value, batch, cut, name) for name, value in kwargs.items()}
            call.record.cfg = "half"
            call.record.cfg_branch = call.branch
            call = locate.on_branch(call, "cond")  # the inner policy's state for the conditional-half calls
            output = run(call, *half_args, **half_kwargs)
            half_batch = Batch(half, batch.as_list)
            cond = batched_parts(output, half_batch)
            uncond = iter(self.rebuild(call, [stacked(part) for part in cond]))

            def both(part: Any) -> Any:
                other = like(part, next(uncond))
                return joined(other, part) if self.cond_index == 1 else joined(part, other)

            return map_batched(output, half_batch, both)
        call.record.cfg = "full"
        return run(call, *args, **kwargs)

    def finish(self, call: CallInfo, state: Any, output: Any) -> Any:
        output = self.inner.finish(call, state, output)
        kind = call.record.cfg
        t = self.trajectory
        t.last_decision = call.record.decision
        if kind == "cond":
            batch = call.record.cfg_batch or Batch(1)
            parts = [stacked(part).detach().clone() for part in batched_parts(output, batch)]
            t.cond = (call.step, parts, batch, output)
            t.cond_decision = call.record.decision
            if not t.seen_uncond and call.step > 0:
                self._say_once(
                    "off", "dit_cache cfg: only the conditional branch runs (guidance off): CFG reuse has nothing to "
                    "do; %s runs alone", self.inner_name
                )  # fmt: skip
        elif kind == "uncond":
            uncond = [stacked(part) for part in batched_parts(output, t.cond[2])]
            if [u.shape for u in uncond] == [c.shape for c in t.cond[1]]:
                self.store_delta(uncond, t.cond[1], call.step, call.record.grid)
        elif kind == "full":
            parts = [stacked(part) for part in batched_parts(output, call.record.cfg_batch)]
            half = call.record.cfg_batch.size // 2
            uncond_at, cond_at = (slice(0, half), slice(half, None))[:: 1 if self.cond_index == 1 else -1]
            self.store_delta([p[uncond_at] for p in parts], [p[cond_at] for p in parts], call.step,
                             call.record.grid)  # fmt: skip
        return output

    def split_record(self, call: CallInfo, record: StepRecord) -> list[StepRecord]:
        if call.record.cfg != "half":
            return [record]
        from dataclasses import replace

        half = record.total_units / 2
        return [
            replace(record, branch="cond", computed_units=record.computed_units / 2, total_units=half),
            replace(record, branch="uncond", decision=REUSE, indicator=None, computed_units=0.0, total_units=half),
        ]


def _hidden(args: tuple, kwargs: dict) -> Any:
    return args[0] if args else kwargs.get("hidden_states")
