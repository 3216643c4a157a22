"""The per-transformer runtime: it sees every transformer call, block call and work-submodule call through the hooks,
keeps the per-branch state, hands each place to the policy and records what happened.

A policy that acts on a whole transformer call (CFG reuse: skip the call, or run it on half the batch) sets
`intercepts_calls`; the engine then hands it the call with `forward` and a `locate` function that reads the step
before the transformer runs (the one host read of the call; the block-level probe later reads only its own values).

Reset rules: all state is dropped when a call's step does not advance past the last step seen for its branch (a new
pipeline call, or one restarted after an interruption), when the step count changes, and after an exception inside a
transformer call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .adapters import ArgReader, BlockCall, BlockGroup, ModelSpec
from .distributed import GroupSync
from .state import NO_CONTEXT_BRANCH, SECOND_CALL_BRANCH, CallInfo, StepLocator, branch_of, sequential_cfg_branch
from .stats import StepRecord

if TYPE_CHECKING:
    from .policies.base import Policy

logger = logging.getLogger(__name__)


@dataclass
class BlockSlot:
    """One block in execution order, with what the hooks need to read its arguments and count its work."""

    index: int
    group: BlockGroup
    module: nn.Module
    reader: ArgReader
    work: dict[str, nn.Module] = field(default_factory=dict)  # attention / MLP submodules present in this block
    tails: dict[str, nn.Module] = field(default_factory=dict)  # unit name -> the activation applied to its output
    feeds: dict[str, str] = field(default_factory=dict)  # unit name -> the one unit that reads its output

    @property
    def units(self) -> int:
        return len(self.work)


def build_slots(transformer: nn.Module, spec: ModelSpec) -> list[BlockSlot]:
    slots = []
    for group, _, block in spec.blocks(transformer):
        work = {}
        for name in group.work_modules:
            sub = getattr(block, name, None)
            if isinstance(sub, nn.Module):
                work[name] = sub
        tails = {unit: getattr(block, tail) for unit, tail in group.tails if unit in work and hasattr(block, tail)}
        feeds = {unit: consumer for unit, consumer in group.feeds if unit in work and consumer in work}
        slots.append(BlockSlot(len(slots), group, block, ArgReader(block.forward), work, tails=tails, feeds=feeds))
    return slots


class Locate:
    """What a call-intercepting policy may ask of the engine before the transformer runs (see `Policy.intercept_call`).

    `locate(call, extra)` reads the call's step, and `extra` (device values the policy needs, e.g. whether the two CFG
    halves share one latent) in the same host read, and returns those values; `locate.on_branch(call, branch)` runs
    the rest of the located call on another branch's state (CFG reuse's conditional half of a batched call) and
    returns the call as the policy then sees it."""

    __slots__ = ("engine",)

    def __init__(self, engine: CacheEngine) -> None:
        self.engine = engine

    def __call__(self, call: CallInfo, extra: torch.Tensor | None = None) -> list[float]:
        return self.engine.locate(call, extra)

    def on_branch(self, call: CallInfo, branch: str) -> CallInfo:
        moved = self.engine.call = call.on_branch(branch)
        return moved


def diffusers_cache_conflict(name: str, policy: str, cache: object) -> str:
    return (
        f"{name} has dit_cache's {policy!r} applied; diffusers' {type(cache).__name__} would cache the same blocks "
        f"with its own hooks and change the outputs dit_cache reports on. Use one: dit_cache.remove(pipe) before "
        f"{name}.enable_cache(...), or {name}.disable_cache() and keep dit_cache"
    )


class CacheEngine:
    def __init__(
        self,
        transformer: nn.Module,
        name: str,
        spec: ModelSpec,
        slots: list[BlockSlot],
        policy: Policy,
        locator: StepLocator,
        process_group: Any = None,
    ) -> None:
        self.transformer = transformer
        self.name = name
        self.spec = spec
        self.slots = slots
        self.policy = policy
        self.locator = locator
        self.process_group = process_group
        self.sync: GroupSync | None = None  # the group whose ranks decide together (see distributed.py)
        self.sync_resolved = False
        self.parallel_at_apply = getattr(transformer, "_parallel_config", None) is not None
        if process_group is not None:  # a group without this rank fails at apply
            self._resolve_sync()
        self.total_units = sum(slot.units for slot in slots)
        self.reader = ArgReader(transformer.forward)
        self.states: dict[str, Any] = {}
        self.last_step: dict[str, int] = {}
        self.batch_of: dict[str, tuple] = {}  # (batch, tokens) of each branch's hidden states, last seen
        self.num_steps: int | None = None
        self.records: list[StepRecord] = []
        self.call: CallInfo | None = None
        # (block index, unit) -> the unit's output of this call, already through its tail activation
        self.passed: dict[tuple[int, str], Any] = {}
        self.last_branch: str | None = None  # the branch the last call was located on
        self.layout_checked: set[str] = set()  # block lists whose real output matched the adapter's layout
        self.calls_since_reset = 0
        self.stale = False  # a pipeline call ended without passing through the hooks (its older records are dropped)

    # ---------------------------------------------------------------------------------------------- lifecycle
    def reset(self) -> None:
        """Drop all state (diffusers also calls this, through the hook, at the end of every pipeline call)."""
        if not self.calls_since_reset and self.records:  # a pipeline call ended that this transformer did not see
            self.records, self.stale = [], True
        self.calls_since_reset = 0
        self.policy.reset(self.states)
        self.states = {}
        self.last_step.clear()
        self.batch_of.clear()
        self.last_branch = None
        self.num_steps = None
        self.call = None

    def _resolve_sync(self) -> None:
        self.sync = GroupSync.resolve(self.transformer, self.process_group, self.name, self.parallel_at_apply)
        self.sync_resolved = True

    def fail(self, error: BaseException) -> None:
        """A transformer call raised: tell the group's peers (they may be waiting on this rank), drop all state."""
        if self.sync is not None:
            self.sync.post_failure(error)
        self.reset()

    def begin_call(self, args: tuple, kwargs: dict, context: Any) -> None:
        cache = getattr(self.transformer, "_cache_config", None)
        if cache is not None:  # diffusers' enable_cache reached past our guard (CacheMixin.enable_cache(t, ...))
            raise RuntimeError(diffusers_cache_conflict(self.name, self.policy.name, cache))
        if not self.sync_resolved:  # at the first call: diffusers' enable_parallelism may come after apply
            self._resolve_sync()
        if self.sync is not None and not self.sync.agreed:
            self.sync.agree(self.policy.config)
        self.calls_since_reset += 1
        self.stale = False
        branch, fields = branch_of(context)
        if branch == NO_CONTEXT_BRANCH:  # sequential CFG that sets no context: read from the pipeline's embeddings
            branch = sequential_cfg_branch(self.transformer, self.spec.cfg_embeds, args, kwargs) or branch
        timestep = self.reader.get(self.spec.timestep_arg, args, kwargs)
        self.call = CallInfo(branch=branch, timestep=timestep, **fields)

    def run_call(self, forward: Callable, args: tuple, kwargs: dict) -> Any:
        """The transformer's forward, or what a call-intercepting policy makes of it."""
        call = self.call
        if call is None or not self.policy.intercepts_calls:
            return forward(*args, **kwargs)
        return self.policy.intercept_call(call, args, kwargs, forward, Locate(self))

    def end_call(self, output: Any = None) -> Any:
        call, self.call = self.call, None
        self.passed.clear()
        if call is None or not call.record.prepared:
            return output
        output = self.policy.finish(call, self.states[call.branch], output)
        done = call.record
        record = StepRecord(
            transformer=self.name,
            branch=call.branch,
            step=call.step,
            sigma=call.sigma,
            decision=done.decision,
            indicator=done.indicator,
            computed_units=self.total_units - done.skipped_units,
            total_units=self.total_units,
        )
        self.records.extend(self.policy.split_record(call, record))
        return output

    # ---------------------------------------------------------------------------------------------- places
    def run_block(self, slot: BlockSlot, forward: Callable, args: tuple, kwargs: dict) -> Any:
        call = self.call
        if call is None:  # a block called outside the transformer's forward: nothing to decide
            return forward(*args, **kwargs)
        block_call = BlockCall(args, kwargs, slot.reader, slot.group)
        if not call.record.prepared and slot.index == self.policy.decision_block:
            self._prepare(call, slot, block_call)
        state = self.states.get(call.branch) if call.record.prepared else None
        output = self.policy.run_block(call, state, slot, forward, block_call)
        if slot.group.attr not in self.layout_checked:  # the first call computes every block: check the adapter once
            self._check_layout(slot, block_call, output)
        return output

    def _check_layout(self, slot: BlockSlot, block_call: BlockCall, output: Any) -> None:
        problem = slot.group.layout_problem(block_call, output)
        if problem is not None:
            raise TypeError(
                f"dit_cache: the {self.spec.name} adapter does not match what the {type(slot.module).__name__} blocks "
                f"of `{slot.group.attr}` in {self.name} return: {problem}. Caching with it would rebuild the wrong "
                "tensors; fix the BlockGroup's hidden_index / encoder_index / hidden_arg / encoder_arg and register "
                "the ModelSpec again (see docs/adapters.md)"
            )
        self.layout_checked.add(slot.group.attr)

    def run_submodule(self, slot: BlockSlot, name: str, forward: Callable, args: tuple, kwargs: dict) -> Any:
        tail = slot.tails.get(name)
        if tail is not None:  # the unit is the submodule and its activation: policies see, store and reuse both
            unit_forward = forward

            def forward(*args, **kwargs):
                return tail(unit_forward(*args, **kwargs))

        call = self.call
        if call is None or not call.record.prepared:
            output = forward(*args, **kwargs)
        else:
            output = self.policy.run_submodule(call, self.states[call.branch], slot, name, forward, args, kwargs)
        if tail is not None:
            self.passed[(slot.index, name)] = output
        return output

    def run_tail(self, slot: BlockSlot, unit: str, forward: Callable, args: tuple, kwargs: dict) -> Any:
        """The activation of a unit with a tail: what the unit returned has been through it already (computed or
        reused), so it passes through; any other input is computed."""
        passed = self.passed.pop((slot.index, unit), None)
        if passed is not None and len(args) == 1 and not kwargs and args[0] is passed:
            return passed
        return forward(*args, **kwargs)

    # ---------------------------------------------------------------------------------------------- decision
    def locate(self, call: CallInfo, extra: torch.Tensor | None = None) -> list[float]:
        """Locate `call`'s step before the transformer runs, reading `extra` (device values a call-intercepting
        policy needs, e.g. whether the two CFG halves share one latent) in the same host read. Returns them."""
        values = self._read(call, extra)
        self._locate(call, values)
        return values

    def _locate(self, call: CallInfo, values: list[float]) -> None:
        timestep_value = values.pop(0) if self.locator.needs_timestep(call) and call.timestep is not None else None
        self.locator.locate(call, timestep_value)
        if call.branch == NO_CONTEXT_BRANCH and self.last_step.get(NO_CONTEXT_BRANCH) == call.step:
            # A second call of the same step with no cache_context and no embeddings of the calling pipeline to
            # tell its branch (see state.sequential_cfg_branch). Same step, so not a restart: its own
            # state, or it would reuse the other branch's features. (A third call of the step is a restart.)
            call.branch = SECOND_CALL_BRANCH
        self._maybe_new_trajectory(call)
        self.last_branch = call.branch
        if call.branch not in self.states:
            self.states[call.branch] = self.policy.new_state()
        self.last_step[call.branch] = call.step
        call.seal()

    def _prepare(self, call: CallInfo, slot: BlockSlot, block_call: BlockCall) -> None:
        """Locate the step and take the policy's decision, with one host read for everything value-dependent."""
        probed_state = self.states.get(self._likely_branch(call))
        probe = self.policy.probe(call, probed_state, slot, block_call)
        if call.located:  # the step was read before the call; only the probe is left to read
            values = self._read(call, probe, timestep=False)
        else:
            values = self._read(call, probe)
            self._locate(call, values)
        state = self._batch_checked(call, self.states.get(call.branch), block_call)
        if state is not probed_state and probed_state is not None:
            # Locating found another state than the probe compared with (a new trajectory began with no end-of-call
            # reset, or a second call of the step got its own branch): probe again against the right one.
            values = self._read(call, self.policy.probe(call, state, slot, block_call), timestep=False)
        if state is None:  # a branch a policy named after locating (the conditional half of a batched CFG call)
            state = self.states[call.branch] = self.policy.new_state()
        call.record.decision = self.policy.decide(call, state, values)
        call.record.prepared = True

    def _likely_branch(self, call: CallInfo) -> str:
        """The branch `call` will be located on, guessed before its step is read so that the probe and the step
        share one host read: after a no-context call, a pipeline that has shown two calls per step makes its second.
        Locating verifies it; a wrong guess costs a second probe (see `_prepare`)."""
        if (
            call.branch == NO_CONTEXT_BRANCH
            and self.last_branch == NO_CONTEXT_BRANCH
            and SECOND_CALL_BRANCH in self.states
        ):
            return SECOND_CALL_BRANCH
        return call.branch

    def _batch_checked(self, call: CallInfo, state: Any, block_call: BlockCall) -> Any:
        """`call`'s state, fresh if the pipeline changed the branch's batch size or token count mid-trajectory
        (Z-Image's cfg_truncation drops the unconditional half of its batched CFG call; Qwen-Image 2.1's KV cache runs
        step 0 on the whole sequence and later steps on the target tokens only): the kept features no longer fit."""
        hidden = block_call.get(block_call.group.hidden_arg)
        batch = tuple(hidden.shape[:2]) if isinstance(hidden, torch.Tensor) and hidden.dim() >= 1 else None
        if state is not None and batch is not None and self.batch_of.get(call.branch, batch) != batch:
            self.policy.reset({call.branch: state})
            state = self.states[call.branch] = self.policy.new_state()
        self.batch_of[call.branch] = batch
        return state

    def _read(self, call: CallInfo, probe: torch.Tensor | None, *, timestep: bool = True) -> list[float]:
        parts = []
        if timestep and self.locator.needs_timestep(call) and call.timestep is not None:
            t = torch.as_tensor(call.timestep)
            parts.append(t.detach().float().max().reshape(1))
        if probe is not None:
            probe = probe.detach().float().reshape(-1)
            if self.sync is not None:  # every rank decides on the sums of the whole sequence
                probe = self.sync.all_reduce(probe)
            parts.append(probe)
        if not parts:
            return []
        device = parts[-1].device
        return torch.cat([p.to(device) for p in parts]).tolist()

    def _maybe_new_trajectory(self, call: CallInfo) -> None:
        previous = self.last_step.get(call.branch)
        restarted = previous is not None and call.step <= previous
        if restarted or (self.num_steps is not None and call.num_steps != self.num_steps):
            self.policy.reset(self.states)
            self.states = {}
            self.last_step.clear()
            self.batch_of.clear()
        if not self.last_step:  # first call of a pipeline call: stats describe this call from here on
            self.records = []
        self.num_steps = call.num_steps
