"""Where a transformer call sits: its CFG branch and its denoising step, read from what the pipeline passes.

The branch comes from diffusers' `cache_context` ("cond", "uncond", "cond_uncond"...) or is "batch" when the pipeline
sets none (SD3, PixArt: CFG, if on, is batched into one call and decided as one); a second call of an already
located step without a context (sequential CFG that names neither branch: Chroma, Kandinsky 5) is "batch:2". The
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
class CallInfo:
    """One transformer call: its place in the trajectory and what the policy decided for it."""

    branch: str
    timestep: torch.Tensor | None
    step_index: int | None = None  # from the pipeline's cache_context, if it sets one
    num_steps: int | None = None
    sigma: float | None = None
    step: int | None = None
    sigmas: list[float] | None = None  # every step's sigma of this trajectory, when the scheduler tells
    prepared: bool = False
    located: bool = False  # step located before the transformer ran (a policy that intercepts whole calls)
    decision: str = COMPUTE
    indicator: float | None = None
    skipped_units: float = 0  # attention/MLP calls not computed; fractional for token subsets and half batches
    payload: Any = None  # what a policy's probe hands to its decision
    stack_input: tuple | None = None  # (hidden, encoder) entering the first block
    segment_input: tuple | None = None  # (hidden, encoder) entering the cached segment
    extra: dict = field(default_factory=dict)

    @property
    def last_step(self) -> int:
        return self.num_steps - 1


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
    if torch.compiler.is_compiling():  # frames are not traceable: leave the graph for the walk
        return _calling_pipeline_eager(transformer)
    frame = sys._getframe(1)
    for _ in range(_MAX_FRAMES):
        if frame is None:
            return None
        if frame.f_code.co_name == "__call__" and frame.f_code.co_varnames[:1] == ("self",):
            owner = frame.f_locals.get("self")
            if any(unwrap(value) is transformer for value in getattr(owner, "__dict__", {}).values()):
                return owner
        frame = frame.f_back
    return None


_calling_pipeline_eager = torch.compiler.disable(calling_pipeline)


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
        self, scheduler_source: Callable[[], Any] | None, timestep_scale: float = 1.0, timestep_offset: float = 0.0
    ) -> None:
        self._scheduler_source = scheduler_source
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
        return self._timesteps, self._sigmas

    def locate(self, call: CallInfo, timestep_value: float | None) -> None:
        tables = self._scheduler_tables()
        if tables is not None:
            timesteps, sigmas = tables
            call.sigmas = sigmas
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
