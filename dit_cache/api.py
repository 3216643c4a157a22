"""The one-line patch: apply / remove / stats / cached."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from torch import nn

from . import policies  # noqa: F401  (registers the policies)
from .adapters import find_spec
from .auto import Auto, Choice
from .auto import resolve as resolve_auto
from .calibration.builtin import note_experts
from .config import PolicyConfig, make_config
from .engine import CacheEngine, build_slots
from .hooks import Installation
from .policies.base import ModelContext, policy_class
from .state import StepLocator, calling_pipeline, unwrap
from .stats import Stats

logger = logging.getLogger(__name__)

_ATTR = "_dit_cache"


def _transformers(target: Any) -> list[tuple[str, nn.Module]]:
    """The denoising transformers of a pipeline (`transformer`, `transformer_2`, ...), or the module itself."""
    components = getattr(target, "components", None)
    if isinstance(components, dict):
        found = [
            (name, unwrap(module))
            for name, module in components.items()
            if name.startswith("transformer") and isinstance(module, nn.Module)
        ]
        if not found:
            raise ValueError(
                f"{type(target).__name__} has no transformer to cache (components: "
                f"{', '.join(k for k, v in components.items() if v is not None)}). dit_cache patches the diffusion "
                "transformer of DiT pipelines (Flux, Wan, HunyuanVideo, CogVideoX, LTX, SD3, PixArt, Qwen-Image...)"
            )
        return found
    if isinstance(target, nn.Module):
        return [("transformer", unwrap(target))]
    raise TypeError(f"apply() takes a diffusers pipeline or a transformer module, got {type(target).__name__}")


# Hook-name prefixes of diffusers' caches (diffusers/hooks/*.py), which `apply_first_block_cache(...)` and its kin
# place without going through `enable_cache` (so `is_cache_enabled` stays False).
_DIFFUSERS_CACHE_HOOKS = (
    "faster_cache", "fbc_", "mag_cache", "pyramid_attention_broadcast", "sea_cache", "taylorseer_cache", "text_kv_cache",
)  # fmt: skip


def _diffusers_cache_hook(transformer: nn.Module) -> str | None:
    """'<hook> on <module>' for the first diffusers cache hook found on `transformer` or its submodules, or None."""
    for path, module in transformer.named_modules():
        registry = getattr(module, "_diffusers_hook", None)
        for hook_name in getattr(registry, "hooks", {}):
            if hook_name.startswith(_DIFFUSERS_CACHE_HOOKS):
                return f"{hook_name!r} on {path or 'the transformer'}"
    return None


class _Patch:
    """What `apply` put on one transformer."""

    def __init__(
        self, config: PolicyConfig, engine: CacheEngine, installation: Installation, choice: Choice | None = None
    ) -> None:
        self.config = config
        self.engine = engine
        self.installation = installation
        self.choice = choice  # what `auto` picked, if the policy was "auto"


def apply(
    target: Any,
    policy: str | PolicyConfig,
    *,
    replace: bool = False,
    scheduler: Any = None,
    process_group: Any = None,
    **options: Any,
) -> Any:
    """Patch every transformer of `target` (a diffusers pipeline or a bare transformer) with a caching policy.

    policy: a name ("teacache", "magcache", "fbcache", "fora", "schedule", ...) or a config object such as
        `dit_cache.TeaCache(threshold=0.3)`; `options` are the config's fields (`threshold=`, `profile=`...).
    replace: if a policy is already applied, replace it (otherwise that is an error).
    scheduler: the scheduler whose timesteps locate each call's step. Without it, each call is located on the
        scheduler of the pipeline that calls (also one made by `from_pipe`, or any pipeline holding a transformer
        patched on its own), else on `target`'s.
    process_group: a torch.distributed group whose ranks must take identical decisions (context/sequence
        parallelism); value-dependent indicators are all-reduced over it. Without it, the group of diffusers'
        context parallelism (`transformer.enable_parallelism(...)`) is found at the first call. See
        docs/distributed.md.
    Returns `target`.
    """
    config = make_config(policy, **options)
    targets = _transformers(target)
    note_experts([t for _, t in targets])  # experts (Wan 2.2 A14B) get no built-in profile of a single model
    choice = None
    if isinstance(config, Auto):  # one pick for the pipeline, from the (first) transformer's profile
        choice = resolve_auto(config, targets[0][1])
        config = choice.config
    for name, transformer in targets:
        if getattr(transformer, _ATTR, None) is not None and not replace:
            raise RuntimeError(
                f"dit_cache policy {getattr(transformer, _ATTR).config.policy_name!r} is already applied to {name}; "
                "call dit_cache.remove(...) first or pass replace=True"
            )
        if getattr(transformer, "is_cache_enabled", False):
            raise RuntimeError(
                f"{name} has a diffusers cache enabled ({type(transformer._cache_config).__name__}); "
                f"call {name}.disable_cache() before applying dit_cache"
            )
        foreign = _diffusers_cache_hook(transformer)
        if foreign is not None:
            raise RuntimeError(
                f"{name} has diffusers cache hooks ({foreign}), placed by diffusers.hooks.apply_...; take them off "
                "(module._diffusers_hook.remove_hook(name)) before applying dit_cache: both would cache the same blocks"
            )
    pipeline = target if getattr(target, "components", None) is not None else None

    # Build everything first: a bad option or profile fails here, before any model is touched.
    patches = []
    for name, transformer in targets:
        spec = find_spec(transformer)
        slots = build_slots(transformer, spec)
        if not slots:
            raise TypeError(f"{name} ({type(transformer).__name__}) has no blocks under {spec.name}'s block lists")
        policy_obj = policy_class(config)(config, ModelContext(transformer, spec, slots))
        source = _scheduler_source(transformer, scheduler, pipeline)
        locator = StepLocator(
            source, spec.timestep_scale, spec.timestep_offset, _expert_boundary(transformer, pipeline)
        )
        engine = CacheEngine(transformer, name, spec, slots, policy_obj, locator, process_group)
        patches.append((transformer, _Patch(config, engine, Installation(engine), choice)))

    if pipeline is not None:
        _take_off_replaced(pipeline, "apply")
    for transformer, _ in patches:
        if getattr(transformer, _ATTR, None) is not None:
            _remove_one(transformer)
    for transformer, patch in patches:
        patch.installation.install()
        setattr(transformer, _ATTR, patch)
    if pipeline is not None:  # remembered, so that a component replaced later is noticed (see _replaced)
        pipeline._dit_cache_patched = dict(targets)
    logger.info(
        "dit_cache: %s applied to %s",
        config.policy_name if choice is None else f"auto ({choice.candidate})",
        ", ".join(n for n, _ in targets),
    )
    return target


def _scheduler_source(transformer: nn.Module, scheduler: Any, pipeline: Any) -> Callable[[], Any]:
    """Where a call's step is located: the scheduler passed to `apply`, else the scheduler of the pipeline that is
    calling (several may share the transformer, see `calling_pipeline`), else that of the pipeline applied to."""
    if scheduler is not None:
        return lambda: scheduler
    if pipeline is None:
        return lambda: getattr(calling_pipeline(transformer), "scheduler", None)

    def source():
        caller = calling_pipeline(transformer)
        return getattr(caller if caller is not None else pipeline, "scheduler", None)

    return source


def _expert_boundary(transformer: nn.Module, pipeline: Any) -> Callable[[], float | None]:
    """Where the calling two-expert pipeline switches from `transformer` to `transformer_2`, as a scheduler timestep:
    its config's `boundary_ratio` x its scheduler's `num_train_timesteps` (Wan 2.2 A14B's rule); None where it
    has no boundary_ratio (one transformer runs every step). Read when the scheduler's timesteps change, from the
    pipeline that is calling (also for an expert applied on its own)."""

    def source() -> float | None:
        caller = calling_pipeline(transformer) or pipeline
        ratio = (getattr(caller, "config", None) or {}).get("boundary_ratio")
        scheduler_config = getattr(getattr(caller, "scheduler", None), "config", None) or {}
        train = scheduler_config.get("num_train_timesteps")
        return None if ratio is None or train is None else float(ratio) * float(train)

    return source


def _replaced(pipeline: Any) -> list[tuple[str, nn.Module]]:
    """(name, module) of the transformers `apply` patched on `pipeline` that are no longer its components
    (`pipe.transformer = other` after apply) and still carry the patch."""
    remembered = getattr(pipeline, "_dit_cache_patched", None) or {}
    components = getattr(pipeline, "components", {})
    return [
        (name, module)
        for name, module in remembered.items()
        if unwrap(components.get(name)) is not module and getattr(module, _ATTR, None) is not None
    ]


def _replacement_message(pipeline: Any, replaced: list[tuple[str, nn.Module]]) -> str:
    components = getattr(pipeline, "components", {})
    names = ", ".join(
        f"pipe.{name} (patched {type(old).__name__} at {id(old):#x}, now {type(components.get(name)).__name__}"
        + ("" if components.get(name) is None else f" at {id(components.get(name)):#x}")
        + ")"
        for name, old in replaced
    )
    return f"{names} was replaced after dit_cache.apply: the new module runs uncached"


def _take_off_replaced(pipeline: Any, action: str) -> None:
    """Never leave a patched orphan: the patch of a replaced transformer comes off (with a warning)."""
    replaced = _replaced(pipeline)
    if not replaced:
        return
    warnings.warn(
        f"{_replacement_message(pipeline, replaced)}; dit_cache.{action} takes the patch off the replaced module",
        RuntimeWarning,
        stacklevel=3,
    )
    for _, module in replaced:
        _remove_one(module)
    pipeline._dit_cache_patched = {}


def _remove_one(transformer: nn.Module) -> None:
    patch = getattr(transformer, _ATTR)
    patch.installation.uninstall()
    delattr(transformer, _ATTR)


def remove(target: Any) -> Any:
    """Take dit_cache off every transformer of `target`, leaving the exact original modules. Returns `target`."""
    replaced = _replaced(target) if getattr(target, "components", None) is not None else []
    if replaced:
        _take_off_replaced(target, "remove")
    patched = [(n, t) for n, t in _transformers(target) if getattr(t, _ATTR, None) is not None]
    if not patched and replaced:
        target.__dict__.pop("_dit_cache_patched", None)
        return target
    if not patched:
        raise ValueError(f"no dit_cache policy is applied to this {type(target).__name__}; nothing to remove")
    for _, transformer in patched:
        _remove_one(transformer)
    getattr(target, "__dict__", {}).pop("_dit_cache_patched", None)
    return target


def is_applied(target: Any) -> bool:
    """Whether `target`'s transformers are patched now (a replaced one is not; that is warned about)."""
    if getattr(target, "components", None) is not None and _replaced(target):
        message = _replacement_message(target, _replaced(target))
        warnings.warn(
            f"{message}; call dit_cache.remove(pipe) to take the patch off the replaced module",
            RuntimeWarning,
            stacklevel=2,
        )
    return any(getattr(t, _ATTR, None) is not None for _, t in _transformers(target))


def stats(target: Any) -> Stats:
    """What the last pipeline call computed and reused, per transformer, branch and step."""
    if getattr(target, "components", None) is not None and _replaced(target):
        raise RuntimeError(
            f"{_replacement_message(target, _replaced(target))} and has no stats; call dit_cache.remove(pipe) (it "
            "takes the patch off the replaced module) and apply again"
        )
    patches = [getattr(t, _ATTR, None) for _, t in _transformers(target)]
    patches = [p for p in patches if p is not None]
    if not patches:
        raise ValueError(f"no dit_cache policy is applied to this {type(target).__name__}; apply one first")
    # A transformer the last pipeline call did not run (Wan 2.2's second one, on few steps) has no records; if none
    # ran, the call went around the hooks and nothing describes it.
    if all(patch.engine.stale for patch in patches):
        names = ", ".join(patch.engine.name for patch in patches)
        raise RuntimeError(
            f"dit_cache: the last pipeline call ran {names} without dit_cache's hooks (a forward was replaced after "
            "apply), so it was not cached and has no stats; apply again with dit_cache.apply(..., replace=True)"
        )
    records = [record for patch in patches for record in patch.engine.records]
    choice = patches[0].choice
    return Stats(records, policy=patches[0].config.policy_name, auto=None if choice is None else choice.to_dict())


def cache_engine(target: Any, component: str | None = None) -> CacheEngine:
    """The engine `apply` put on a transformer of `target` (a pipeline or a bare transformer): its `policy`, the
    per-branch policy state of the current pipeline call (`states`, branch name -> state), the `records` of the last
    call and the group `sync` of context parallelism. For inspection and tools (calibration, benchmarks); a policy's
    state is read, not changed.

    component: which transformer of a pipeline ("transformer", "transformer_2"); needed only when several are patched.
    """
    patched = [(name, t) for name, t in _transformers(target) if getattr(t, _ATTR, None) is not None]
    if component is not None:
        patched = [(name, t) for name, t in patched if name == component]
    if not patched:
        where = f" on its {component!r}" if component is not None else ""
        raise ValueError(f"no dit_cache policy is applied to this {type(target).__name__}{where}; apply one first")
    if len(patched) > 1:
        names = ", ".join(repr(name) for name, _ in patched)
        raise ValueError(f"{type(target).__name__} has several patched transformers ({names}); pass component=...")
    return getattr(patched[0][1], _ATTR).engine


def recorded_traces(target: Any, component: str | None = None) -> dict[str, dict[str, Any]]:
    """What the calibration recorder (`dit_cache.calibration.recorder.Recorder`, applied as the policy) saw in the
    last pipeline call, per CFG branch: per-step lists ("steps", "sigma", "x", "y", "mag_ratio", pair and per-block
    traces, see `calibration.recorder.collect`), reduced over the context-parallel group where there is one."""
    from .calibration.recorder import RecorderPolicy, collect

    engine = cache_engine(target, component)
    if not isinstance(engine.policy, RecorderPolicy):
        raise ValueError(
            f"recorded_traces reads the calibration recorder; {engine.name} runs {engine.policy.name!r}. Apply "
            "dit_cache.calibration.recorder.Recorder() first (dit-cache calibrate does)"
        )
    return collect(engine.states or engine.policy.finished, engine.sync)


@contextlib.contextmanager
def cached(target: Any, policy: str | PolicyConfig, **options: Any) -> Iterator[Any]:
    """`with dit_cache.cached(pipe, "teacache"):` applies the policy for the block and removes it afterwards."""
    apply(target, policy, **options)
    try:
        yield target
    finally:
        remove(target)
