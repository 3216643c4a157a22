"""The one-line patch: apply / remove / stats / cached."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from torch import nn

from . import policies  # noqa: F401  (registers the policies)
from .adapters import find_spec
from .config import PolicyConfig, make_config
from .engine import CacheEngine, build_slots
from .hooks import Installation
from .policies.base import ModelContext, policy_class
from .state import StepLocator
from .stats import Stats

logger = logging.getLogger(__name__)

_ATTR = "_dit_cache"


def _transformers(target: Any) -> list[tuple[str, nn.Module]]:
    """The denoising transformers of a pipeline (`transformer`, `transformer_2`, ...), or the module itself."""
    components = getattr(target, "components", None)
    if isinstance(components, dict):
        found = [
            (name, _compiled_inner(module))
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
        return [("transformer", _compiled_inner(target))]
    raise TypeError(f"apply() takes a diffusers pipeline or a transformer module, got {type(target).__name__}")


def _compiled_inner(module: nn.Module) -> nn.Module:
    """The module a `torch.compile(module)` wrapper compiles: patched in its place, it runs under the wrapper's
    compilation (see compiling.py)."""
    return getattr(module, "_orig_mod", module) if type(module).__name__ == "OptimizedModule" else module


class _Patch:
    """What `apply` put on one transformer."""

    def __init__(self, config: PolicyConfig, engine: CacheEngine, installation: Installation) -> None:
        self.config = config
        self.engine = engine
        self.installation = installation


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
    scheduler: for a bare transformer, the scheduler whose timesteps locate each call's step (a pipeline's own
        scheduler is used automatically).
    process_group: a torch.distributed group whose ranks must take identical decisions (context/sequence
        parallelism); value-dependent indicators are all-reduced over it.
    Returns `target`.
    """
    config = make_config(policy, **options)
    targets = _transformers(target)
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
    if scheduler is not None:
        scheduler_source = lambda: scheduler  # noqa: E731
    elif getattr(target, "components", None) is not None:
        scheduler_source = lambda: getattr(target, "scheduler", None)  # noqa: E731
    else:
        scheduler_source = None

    # Build everything first: a bad option or profile fails here, before any model is touched.
    patches = []
    for name, transformer in targets:
        spec = find_spec(transformer)
        slots = build_slots(transformer, spec)
        if not slots:
            raise TypeError(f"{name} ({type(transformer).__name__}) has no blocks under {spec.name}'s block lists")
        policy_obj = policy_class(config)(config, ModelContext(transformer, spec, slots))
        locator = StepLocator(scheduler_source, spec.timestep_scale)
        engine = CacheEngine(transformer, name, spec, slots, policy_obj, locator, process_group)
        patches.append((transformer, _Patch(config, engine, Installation(engine))))

    for transformer, _ in patches:
        if getattr(transformer, _ATTR, None) is not None:
            _remove_one(transformer)
    for transformer, patch in patches:
        patch.installation.install()
        setattr(transformer, _ATTR, patch)
    logger.info("dit_cache: %s applied to %s", config.policy_name, ", ".join(n for n, _ in targets))
    return target


def _remove_one(transformer: nn.Module) -> None:
    patch = getattr(transformer, _ATTR)
    patch.installation.uninstall()
    delattr(transformer, _ATTR)


def remove(target: Any) -> Any:
    """Take dit_cache off every transformer of `target`, leaving the exact original modules. Returns `target`."""
    patched = [(n, t) for n, t in _transformers(target) if getattr(t, _ATTR, None) is not None]
    if not patched:
        raise ValueError(f"no dit_cache policy is applied to this {type(target).__name__}; nothing to remove")
    for _, transformer in patched:
        _remove_one(transformer)
    return target


def is_applied(target: Any) -> bool:
    return any(getattr(t, _ATTR, None) is not None for _, t in _transformers(target))


def stats(target: Any) -> Stats:
    """What the last pipeline call computed and reused, per transformer, branch and step."""
    patches = [getattr(t, _ATTR, None) for _, t in _transformers(target)]
    patches = [p for p in patches if p is not None]
    if not patches:
        raise ValueError(f"no dit_cache policy is applied to this {type(target).__name__}; apply one first")
    records = [record for patch in patches for record in patch.engine.records]
    return Stats(records, policy=patches[0].config.policy_name)


@contextlib.contextmanager
def cached(target: Any, policy: str | PolicyConfig, **options: Any) -> Iterator[Any]:
    """`with dit_cache.cached(pipe, "teacache"):` applies the policy for the block and removes it afterwards."""
    apply(target, policy, **options)
    try:
        yield target
    finally:
        remove(target)
