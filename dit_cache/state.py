"""Where a transformer call sits: its CFG branch and its denoising step, read from what the pipeline passes.

The branch comes from diffusers' `cache_context` ("cond", "uncond", "cond_uncond"...) or is "batch" when the pipeline
sets none (SD3, PixArt: CFG, if on, is batched into one call and decided as one). Sequential CFG that names
neither branch (Chroma, Kandinsky 5) is read from the pipeline's own data: a call given the calling pipeline's
`prompt_embeds` is "cond", one given its `negative_prompt_embeds` "uncond" (`sequential_cfg_branch`); where those
cannot be told, a second call of an already located step without a context is "batch:2". The
step comes from the context's `step_index` when the pipeline gives one (Wan), else from matching the `timestep`
argument against the pipeline scheduler's timesteps. Calls are never counted.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

COMPUTE, REUSE, FORECAST = "computed", "reused", "forecast"
PARTIAL = "partial"  # part of the work computed (some tokens, some blocks), the rest reused or forecast
NO_CONTEXT_BRANCH = "batch"
SECOND_CALL_BRANCH = "batch:2"  # a second call of one step without a context (sequential CFG that names neither)


@dataclass
class CallRecord:
    """What the policy writes about one transformer call (the engine books its decision here too): the decision
    and what it measured, what its probe hands to its decision, and notes of a call-intercepting policy."""

    decision: str = COMPUTE
    prepared: bool = False  # decided: the engine records stats for it
    indicator: float | None = None
    skipped_units: float = 0  # attention/MLP calls not computed; fractional for token subsets and half batches
    payload: Any = None  # what a policy's probe hands to its decision (a device tensor)
    stack_input: tuple | None = None  # (hidden, encoder) entering the first block
    segment_input: tuple | None = None  # (hidden, encoder) entering the cached segment
    # the call's token layout, as its adapter reads it (token caching, CFG reuse's frequency split)
    grid: Any = None
    grid_read: bool = False  # whether `grid` was read (None is a read value: a call whose grid cannot be told)
    positions: Any = None
    text_tokens: int = 0
    # CFG reuse: the call's role ("cond", "uncond", "rebuilt", "half", "full", "off"...), its batch, and the branch a
    # half call was located on
    cfg: str | None = None
    cfg_batch: Any = None
    cfg_branch: str | None = None


@dataclass
class CallInfo:
    """One transformer call as the engine knows it: its branch and its place in the trajectory. The engine and its
    step locator fill it in; once located it is sealed (read-only: a policy writes to `record`, its own).

    `on_branch` gives the call as run on another branch's state (CFG reuse's conditional half of a batched call)."""

    branch: str
    timestep: torch.Tensor | None
    step_index: int | None = None  # from the pipeline's cache_context, if it sets one
    num_steps: int | None = None
    sigma: float | None = None
    step: int | None = None
    sigmas: list[float] | None = None  # every step's sigma of this trajectory, when the scheduler tells
    # steps at which the pipeline hands the trajectory to another expert (Wan 2.2 A14B's boundary_ratio)
    expert_switches: tuple[int, ...] = ()
    record: CallRecord = field(default_factory=CallRecord, compare=False)

    def __setattr__(self, name: str, value: Any) -> None:
        if self.__dict__.get("located"):
            raise AttributeError(
                f"CallInfo.{name} is read-only once the call is located; a policy writes to call.record"
            )
        object.__setattr__(self, name, value)

    @property
    def located(self) -> bool:
        """Whether the step was read (the call is then sealed)."""
        return self.__dict__.get("located", False)

    def seal(self) -> CallInfo:
        self.__dict__["located"] = True
        return self

    def on_branch(self, branch: str) -> CallInfo:
        """This call, located, as run on `branch`'s state; it shares this call's record."""
        fields = {f: getattr(self, f) for f in self.__dataclass_fields__}
        return CallInfo(**{**fields, "branch": branch}).seal()

    @property
    def last_step(self) -> int:
        return self.num_steps - 1

    @property
    def expert_steps(self) -> range | None:
        """The steps of the expert this call runs on, where experts share the trajectory (None: one transformer
        runs every step). Step policies plan their speedup targets on these steps, each expert on its own, so the
        fraction over all the steps of both is the target too."""
        if not self.expert_switches:
            return None
        start = max((s for s in self.expert_switches if s <= self.step), default=0)
        end = min((s for s in self.expert_switches if s > self.step), default=self.num_steps)
        return range(start, end)


# diffusers' guiders (HunyuanVideo 1.5, Motif-Video) name their classifier-free guidance calls after the prediction
GUIDER_BRANCHES = {"pred_cond": "cond", "pred_uncond": "uncond"}


def branch_of(context: Any) -> tuple[str, dict]:
    """Branch name and step fields of a diffusers cache context (a CacheContext, a plain name, or None)."""
    if context is None:
        return NO_CONTEXT_BRANCH, {}
    if isinstance(context, str):
        return GUIDER_BRANCHES.get(context, context), {}
    fields = {
        "step_index": getattr(context, "step_index", None),
        "num_steps": getattr(context, "num_inference_steps", None),
        "sigma": getattr(context, "sigma", None),
    }
    name = str(getattr(context, "name", NO_CONTEXT_BRANCH))
    return GUIDER_BRANCHES.get(name, name), fields


_MAX_FRAMES = 64  # a pipeline's __call__ is a few frames above the transformer hook; hooks of others add some


def unwrap(module: Any) -> Any:
    """The module itself under a `torch.compile` wrapper (`pipe.transformer = torch.compile(pipe.transformer)`)."""
    return getattr(module, "_orig_mod", module)


def calling_pipeline(transformer: Any) -> Any:
    """The pipeline whose `__call__` is running `transformer` now, found on the Python stack, or None.

    Why the stack: a patched transformer can be shared by several pipelines (`Pipeline.from_pipe(pipe,
    scheduler=...)` shares every component it is not given), each stepping its own scheduler, and dit_cache never
    sees those pipelines before they call. The pipeline that is calling is the one frame up the stack whose `self`
    holds this transformer as a component (diffusers pipelines keep components as instance attributes), so each
    call is located on the scheduler that produced its timestep. One short walk per transformer call, in the same
    place as the step's host read.
    """
    return (calling_locals(transformer) or {}).get("self")


def calling_locals(transformer: Any) -> dict | None:
    """The local variables of the calling pipeline's `__call__` (see `calling_pipeline`), or None."""
    if torch.compiler.is_compiling():  # frames are not traceable: leave the graph for the walk
        return _calling_locals_eager(transformer)
    frame = sys._getframe(1)
    for _ in range(_MAX_FRAMES):
        if frame is None:
            return None
        if frame.f_code.co_name == "__call__" and frame.f_code.co_varnames[:1] == ("self",):
            owner = frame.f_locals.get("self")
            if any(unwrap(value) is transformer for value in getattr(owner, "__dict__", {}).values()):
                return frame.f_locals
        frame = frame.f_back
    return None


_calling_locals_eager = torch.compiler.disable(calling_locals)


def sequential_cfg_branch(
    transformer: Any, pairs: tuple[tuple[str, str], ...], args: tuple, kwargs: dict
) -> str | None:
    """ "cond" or "uncond": which of the calling pipeline's own prompt embeddings, positive or negative (the tensors its
    `__call__` holds under a pair of names in `pairs`, `ModelSpec.cfg_embeds`), a call without a cache_context got;
    None where that cannot be told.

    Pipelines that run CFG as two calls per step and name neither (Chroma, Kandinsky 5...) pass
    `encoder_hidden_states=prompt_embeds` then `negative_prompt_embeds`: the branch is read from which of their
    tensors the call got (by identity), never from the calls' order. A pair counts only where both are tensors of
    one batch size and not one object: a pipeline that batches CFG rebinds `prompt_embeds` to the concatenation of
    both (twice the batch of the negative), and one running without CFG has no negative embeddings.
    """
    if torch.compiler.is_compiling():  # identities of the pipeline's tensors are read outside the graph
        return _sequential_cfg_branch_eager(transformer, pairs, args, kwargs)
    names = calling_locals(transformer)
    if not names:
        return None
    passed = [value for value in (*args, *kwargs.values()) if isinstance(value, torch.Tensor)]
    found = set()
    for positive, negative in pairs:
        pos, neg = names.get(positive), names.get(negative)
        if not isinstance(pos, torch.Tensor) or not isinstance(neg, torch.Tensor) or pos is neg:
            continue
        if pos.shape[:1] != neg.shape[:1]:
            continue
        found.update("cond" if value is pos else "uncond" for value in passed if value is pos or value is neg)
    return found.pop() if len(found) == 1 else None


_sequential_cfg_branch_eager = torch.compiler.disable(sequential_cfg_branch)


def _version(tensor: Any) -> int | None:
    """The in-place write counter of a tensor, or None where there is none: not a tensor, or an inference tensor
    (made under `torch.inference_mode()`, which tracks no versions; reading `_version` raises). Schedulers make a
    new timesteps tensor on every `set_timesteps`, so identity alone still tells a new trajectory."""
    if not isinstance(tensor, torch.Tensor) or tensor.is_inference():
        return None
    return tensor._version


class StepLocator:
    """Turns a call's timestep into (step, num_steps, sigma) using the pipeline's scheduler.

    `scheduler_source` returns the scheduler of the pipeline that is calling (it may be swapped after `apply`, or
    the transformer shared by another pipeline). The scheduler's timesteps are copied to the host once per
    `set_timesteps` (a new tensor each time). The transformer's timestep argument maps to the scheduler's timestep
    affinely: `timestep_offset + timestep_scale * timestep` (Flux passes t / 1000: scale 1000; Z-Image passes
    (1000 - t) / 1000: scale -1000, offset 1000).
    """

    def __init__(
        self,
        scheduler_source: Callable[[], Any] | None,
        timestep_scale: float = 1.0,
        timestep_offset: float = 0.0,
        boundary_source: Callable[[], float | None] | None = None,
    ) -> None:
        self._scheduler_source = scheduler_source
        # the scheduler timestep at which a two-expert pipeline switches transformers (None: one transformer)
        self._boundary_source = boundary_source
        self._switches: tuple[int, ...] = ()
        self._scale, self._offset = timestep_scale, timestep_offset
        # the (timesteps, sigmas) tensors read last (held, so that a new tensor is never mistaken for them) and
        # their in-place write counters
        self._tables_of: tuple = (None, None)
        self._versions: tuple = (None, None)
        self._timesteps: list[float] = []
        self._sigmas: list[float] | None = None

    def scheduler_timestep(self, timestep_value: float) -> float:
        """The scheduler timestep of the transformer's timestep argument (the adapter's affine map)."""
        return self._offset + self._scale * timestep_value

    def needs_timestep(self, call: CallInfo) -> bool:
        return call.step_index is None or call.num_steps is None or call.sigma is None

    def _scheduler_tables(self) -> tuple[list[float], list[float] | None] | None:
        scheduler = self._scheduler_source() if self._scheduler_source else None
        timesteps = getattr(scheduler, "timesteps", None)
        if timesteps is None or len(timesteps) == 0:
            return None
        sigmas = getattr(scheduler, "sigmas", None)
        versions = (_version(timesteps), _version(sigmas))
        if self._tables_of[0] is not timesteps or self._tables_of[1] is not sigmas or versions != self._versions:
            self._timesteps = [float(t) for t in torch.as_tensor(timesteps).flatten().tolist()]
            self._sigmas = None
            if sigmas is not None and len(sigmas) >= len(self._timesteps):
                self._sigmas = [float(s) for s in torch.as_tensor(sigmas).flatten().tolist()][: len(self._timesteps)]
            self._tables_of, self._versions = (timesteps, sigmas), versions
            self._switches = expert_switches(
                self._timesteps, self._boundary_source() if self._boundary_source else None
            )
        return self._timesteps, self._sigmas

    def locate(self, call: CallInfo, timestep_value: float | None) -> None:
        tables = self._scheduler_tables()
        if tables is not None:
            timesteps, sigmas = tables
            call.sigmas = sigmas
            call.expert_switches = self._switches
        if call.step_index is not None and call.num_steps is not None:
            call.step = call.step_index
        elif tables is not None and timestep_value is not None:
            t = self.scheduler_timestep(timestep_value)
            call.step = min(range(len(timesteps)), key=lambda i: abs(timesteps[i] - t))
            call.num_steps = len(timesteps)
        else:
            raise RuntimeError(
                "dit_cache cannot tell which denoising step this transformer call is: the pipeline set no "
                "cache_context with step_index and no scheduler is known. Apply dit_cache to the pipeline "
                "(dit_cache.apply(pipe, ...)) or pass scheduler=pipe.scheduler when applying to a bare transformer."
            )
        if call.sigma is None:
            if call.sigmas is not None and call.step < len(call.sigmas):
                call.sigma = call.sigmas[call.step]
            elif timestep_value is not None:
                call.sigma = self.scheduler_timestep(timestep_value) / 1000.0


def expert_switches(timesteps: list[float], boundary: float | None) -> tuple[int, ...]:
    """The steps whose timestep crosses `boundary`: where Wan 2.2 A14B's pipeline hands the trajectory from
    `transformer` (timesteps >= boundary) to `transformer_2`."""
    if boundary is None:
        return ()
    return tuple(i for i in range(1, len(timesteps)) if (timesteps[i - 1] >= boundary) != (timesteps[i] >= boundary))
