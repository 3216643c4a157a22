"""CFG reuse in the style of FasterCache (Lv et al. 2024), as a wrapper around any inner policy.

Full steps (the first `warmup` share of the steps, then every `interval`-th) compute both guidance branches and
store d = unconditional - conditional output. Other steps compute only the conditional branch and rebuild the
unconditional one: u = c + w_high * d + (w_low - w_high) * low(d), low() the spatial low-pass of FasterCache's split
(so u = c + d exactly when both weights are 1). The weights are `alpha_low` / `alpha_high` inside their windows of
the trajectory and 1 outside.

How each pipeline runs CFG:
- sequential branches (Flux true-CFG, Wan, HunyuanVideo, Qwen-Image: `cache_context("cond")` then `("uncond")`):
  the conditional call runs as usual and its output is kept; on a reuse step the unconditional call returns the
  rebuilt output without running the transformer (its step is located from its timestep first: one host read).
- batched CFG (SD3, PixArt, CogVideoX, LTX: one call on a doubled batch, halves in the adapter's `cfg_batch_order`):
  on a reuse step every tensor argument whose first dim is the doubled batch is cut to the conditional half, the
  transformer runs on it and the other half of the output is rebuilt. Guidance counts as on when the batch is even
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
from ..config import CFGCache
from ..schedulers.targets import check_ceiling, check_reached, floor_over_step_counts, nearest, span
from ..state import REUSE, CallInfo
from ..stats import StepRecord
from .base import Locate, ModelContext, Policy, policy_class, policy_for
from .grid import low_pass
from .token import grid_of_call

logger = logging.getLogger(__name__)

_NOT_BATCH = frozenset({"img_ids", "txt_ids", "image_rotary_emb", "rotary_emb", "freqs_cis"})
DEFAULT_INTERVAL = 2


def output_tensor(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return output[0]
    return output.sample


def with_tensor(output: Any, tensor: torch.Tensor) -> Any:
    """`output` (a tensor, a tuple or a diffusers output object) with its first tensor replaced."""
    if isinstance(output, torch.Tensor):
        return tensor
    if isinstance(output, tuple):
        return (tensor, *output[1:])
    if isinstance(output, list):
        return [tensor, *output[1:]]
    return type(output)(**{**dict(output), "sample": tensor})


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
    cond: tuple[int, torch.Tensor, Any] | None = None  # (step, conditional output, output object) — sequential
    delta: torch.Tensor | None = None  # unconditional - conditional output of the last full step
    delta_low: torch.Tensor | None = None  # its low spatial frequencies (computed when the weights need it)
    grid: Any = None
    seen_uncond: bool = False
    cond_decision: str | None = None  # the inner decision of the last conditional call (sequential)
    last_decision: str | None = None  # the inner decision of the last call


def slice_batch(args: tuple, kwargs: dict, batch: int, half: slice) -> tuple[tuple, dict]:
    """Cut every tensor argument (and tensor value of a dict argument) whose first dim is `batch` to `half`."""

    def cut(value: Any, name: str | None = None) -> Any:
        if name in _NOT_BATCH:
            return value
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == batch:
            return value[half]
        if isinstance(value, dict):
            return {k: cut(v, k) for k, v in value.items()}
        return value

    return tuple(cut(a) for a in args), {k: cut(v, k) for k, v in kwargs.items()}


@policy_for(CFGCache)
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

    def rebuild(self, call: CallInfo, cond: torch.Tensor) -> torch.Tensor:
        t = self.trajectory
        w_low, w_high = self.weights(call.step, call.num_steps)
        uncond = kernels.apply_residual(cond, t.delta, None if w_high == 1.0 else w_high)
        if w_low != w_high:
            if t.delta_low is None:
                t.delta_low = low_pass(t.delta, t.grid).to(t.delta.dtype)
            uncond = kernels.apply_residual(uncond, t.delta_low, w_low - w_high)
        return uncond

    def store_delta(self, uncond: torch.Tensor, cond: torch.Tensor, step: int, grid: Any = None) -> None:
        t = self.trajectory
        buffer = t.delta if t.delta is not None and not torch.is_grad_enabled() else None
        t.delta = kernels.store_residual(uncond.detach(), cond.detach(), buffer)
        t.delta_low = None
        t.last_full = step
        t.grid = grid

    def _say_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._said:
            self._said.add(key)
            logger.info(message, *args)

    # ------------------------------------------------------------------------------------------ whole calls
    def intercept_call(self, call: CallInfo, args: tuple, kwargs: dict, forward: Callable, locate: Locate) -> Any:
        inner = self.inner

        def run(*a, **k):
            if inner.intercepts_calls:
                return inner.intercept_call(call, a, k, forward, locate)
            return forward(*a, **k)

        call.extra["grid"] = grid_of_call(self.model, args, kwargs)
        if not self.cfg_enabled:
            return run(*args, **kwargs)
        if call.branch == "cond":
            call.extra["cfg"] = "cond"
            return run(*args, **kwargs)
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
        if fresh and t.delta is not None and t.delta.shape == cond[1].shape and self.reuses(call):
            call.prepared, call.decision = True, REUSE
            call.skipped_units = self.total_units
            call.extra["cfg"] = "rebuilt"
            return with_tensor(cond[2], self.rebuild(call, cond[1]))
        call.extra["cfg"] = "uncond" if fresh else "uncond-alone"
        if not fresh:
            self._say_once(
                "order", "dit_cache cfg: the unconditional call of step %s came before its conditional call; "
                "it is computed (CFG reuse rebuilds it from the conditional output of the same step)", call.step
            )  # fmt: skip
        return run(*args, **kwargs)

    def _batched(self, call: CallInfo, args: tuple, kwargs: dict, run: Callable, locate: Locate) -> Any:
        hidden = args[0] if args else kwargs.get("hidden_states")
        batch = hidden.shape[0] if isinstance(hidden, torch.Tensor) and hidden.dim() >= 1 else 0
        differ = None
        if batch >= 2 and batch % 2 == 0:
            half = batch // 2
            differ = (hidden[:half] != hidden[half:]).any().float().reshape(1)
        values = locate(call, differ)
        if differ is None or values[-1] != 0:
            self._say_once(
                "off-batched", "dit_cache cfg: guidance is off for this pipeline call (the batch is not a doubled latent): "
                "CFG reuse has nothing to do; %s runs alone", self.inner_name
            )  # fmt: skip
            call.extra["cfg"] = "off"
            return run(*args, **kwargs)
        half = batch // 2
        t = self.trajectory
        self.resolve_target(call.num_steps)
        if t.delta is not None and t.delta.shape[0] == half and self.reuses(call):
            cond_half = slice(self.cond_index * half, (self.cond_index + 1) * half)
            half_args, half_kwargs = slice_batch(args, kwargs, batch, cond_half)
            call.extra["cfg"] = "half"
            call.extra["cfg_branch"] = call.branch
            call.branch = "cond"  # the inner policy's state for the conditional-half calls
            output = run(*half_args, **half_kwargs)
            cond = output_tensor(output)
            uncond = self.rebuild(call, cond)
            both = (uncond, cond) if self.cond_index == 1 else (cond, uncond)
            return with_tensor(output, torch.cat(both, dim=0))
        call.extra["cfg"] = "full"
        return run(*args, **kwargs)

    def finish(self, call: CallInfo, state: Any, output: Any) -> Any:
        output = self.inner.finish(call, state, output)
        kind = call.extra.get("cfg")
        t = self.trajectory
        t.last_decision = call.decision
        if kind == "cond":
            tensor = output_tensor(output)
            t.cond = (call.step, tensor.detach().clone(), output)
            t.cond_decision = call.decision
            if not t.seen_uncond and call.step > 0:
                self._say_once(
                    "off", "dit_cache cfg: only the conditional branch runs (guidance off): CFG reuse has nothing to "
                    "do; %s runs alone", self.inner_name
                )  # fmt: skip
        elif kind == "uncond":
            self.store_delta(output_tensor(output), t.cond[1], call.step, call.extra.get("grid"))
        elif kind == "full":
            tensor = output_tensor(output)
            half = tensor.shape[0] // 2
            parts = (tensor[:half], tensor[half:])
            self.store_delta(parts[1 - self.cond_index], parts[self.cond_index], call.step, call.extra.get("grid"))
        return output

    def split_record(self, call: CallInfo, record: StepRecord) -> list[StepRecord]:
        if call.extra.get("cfg") != "half":
            return [record]
        from dataclasses import replace

        half = record.total_units / 2
        return [
            replace(record, branch="cond", computed_units=record.computed_units / 2, total_units=half),
            replace(record, branch="uncond", decision=REUSE, indicator=None, computed_units=0.0, total_units=half),
        ]
