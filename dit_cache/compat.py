"""Every import of diffusers internals, in one place.

dit_cache builds on parts of diffusers that are not its public API: the hook machinery under `diffusers.hooks.hooks`
(to stay innermost in a module's hook registry and receive the pipeline's `cache_context`), the private registry of
transformer block return layouts (`diffusers.hooks._helpers`), the attention and MLP classes that the generic adapter
recognises, `CacheMixin` and TaylorSeer's default module patterns (for the evaluation's peers). They are imported here
and nowhere else, so that a diffusers release that moves one of them breaks one file, with an error that names the
missing name and the diffusers versions dit_cache is tested with (`SUPPORTED_DIFFUSERS`, the pin of pyproject.toml).

Public diffusers API (`diffusers.hooks.FirstBlockCacheConfig`, pipelines, models) is imported where it is used.
"""

from __future__ import annotations

import importlib
from typing import Any

SUPPORTED_DIFFUSERS = ">=0.42,<0.43"  # the pin of pyproject.toml; tests/test_compat.py keeps the two equal


class DiffusersInternalError(ImportError):
    """A diffusers internal that dit_cache uses is missing from the installed diffusers."""


def diffusers_version() -> str:
    try:
        from importlib.metadata import version

        return version("diffusers")
    except Exception:  # not installed as a distribution (a source tree on sys.path)
        return "unknown"


def internal(module: str, name: str) -> Any:
    """`module.name` from diffusers, or DiffusersInternalError naming it, the installed and the supported versions."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise DiffusersInternalError(
            f"dit_cache needs {module}.{name}, which the installed diffusers {diffusers_version()} lacks ({e}); "
            f"dit_cache is tested with diffusers{SUPPORTED_DIFFUSERS}: pip install 'diffusers{SUPPORTED_DIFFUSERS}'"
        ) from e


# The hook machinery (dit_cache/hooks.py): needed to import dit_cache at all.
HookRegistry = internal("diffusers.hooks", "HookRegistry")
ModelHook = internal("diffusers.hooks", "ModelHook")
BaseState = internal("diffusers.hooks.hooks", "BaseState")
HookFunctionReference = internal("diffusers.hooks.hooks", "HookFunctionReference")
StateManager = internal("diffusers.hooks.hooks", "StateManager")


def transformer_block_registry() -> Any:
    """diffusers' private registry of transformer block return layouts (`TransformerBlockRegistry.get(cls)`)."""
    return internal("diffusers.hooks._helpers", "TransformerBlockRegistry")


def attention_classes() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(attention classes, MLP classes) of diffusers' blocks, as the generic adapter recognises them."""
    return (
        (internal("diffusers.models.attention_processor", "Attention"),
         internal("diffusers.models.attention", "AttentionModuleMixin")),
        (internal("diffusers.models.attention", "FeedForward"),),
    )  # fmt: skip


def cache_mixin() -> type:
    """diffusers' CacheMixin (`enable_cache` / `disable_cache` of its models)."""
    return internal("diffusers.models.cache_utils", "CacheMixin")


def taylorseer_default_identifiers() -> list[str]:
    """The module-name patterns diffusers' TaylorSeerCache caches when given none (a private module constant)."""
    return list(internal("diffusers.hooks.taylorseer_cache", "_TRANSFORMER_BLOCK_IDENTIFIERS"))
