"""Adapters: one `ModelSpec` per transformer family, looked up by class name, plus a generic fallback that finds
block lists the way diffusers does. Register a new family with `dit_cache.register_adapter(spec)`."""

from __future__ import annotations

import difflib
import inspect
import logging

from torch import nn

from .. import compat
from . import catalog, cogvideox, flux, hunyuan_video, ltx, pixart, qwenimage, sd3, wan
from .spec import ArgReader, BlockCall, BlockGroup, ModelSpec, adanorm_indicator, temb_indicator

logger = logging.getLogger(__name__)

_REGISTRY: dict[str, ModelSpec] = {}

# Attribute names diffusers transformers use for their block lists, in the order they run when several exist.
BLOCK_LIST_NAMES = (
    "transformer_blocks",
    "single_transformer_blocks",
    "blocks",
    "layers",
    "visual_transformer_blocks",
)
_TEMB_ARG_NAMES = ("temb", "timestep", "emb")


def register_adapter(spec: ModelSpec, *, replace: bool = False) -> None:
    """Make `spec` the adapter of every class named in `spec.class_names`."""
    for name in spec.class_names:
        if name in _REGISTRY and not replace and _REGISTRY[name] is not spec:
            raise ValueError(
                f"an adapter for {name} is already registered ({_REGISTRY[name].name!r}); "
                "pass replace=True to override it"
            )
        _REGISTRY[name] = spec


def supported_classes() -> list[str]:
    return sorted(_REGISTRY)


def nearest_classes(name: str) -> str:
    """A sentence naming the supported classes closest to `name`."""
    close = difflib.get_close_matches(name, supported_classes(), n=3, cutoff=0.4)
    return f"Nearest supported classes: {', '.join(close)}. " if close else ""


def find_spec(transformer: nn.Module) -> ModelSpec:
    """The registered spec of `transformer`'s class (or a base class), else a generic one, else a clear error."""
    for cls in type(transformer).__mro__:
        if cls.__name__ in _REGISTRY:
            return _REGISTRY[cls.__name__]
    refused = catalog.REFUSED.get(type(transformer).__name__)
    if refused is not None:
        raise TypeError(f"dit_cache cannot cache {type(transformer).__name__}: {refused}")
    spec = _generic_spec(transformer)
    if spec is None:
        raise TypeError(
            f"dit_cache cannot cache {type(transformer).__name__}: no adapter is registered for it and it has no "
            f"block list (looked for nn.ModuleList attributes {', '.join(BLOCK_LIST_NAMES)}). "
            f"{nearest_classes(type(transformer).__name__)}Supported classes: {', '.join(supported_classes())}. "
            "To add one, describe its blocks with dit_cache.adapters.ModelSpec "
            "and call dit_cache.register_adapter(spec) (see docs/adapters.md)."
        )
    logger.info("dit_cache: no adapter for %s, using the generic block-list adapter", type(transformer).__name__)
    return spec


def _generic_spec(transformer: nn.Module) -> ModelSpec | None:
    groups = []
    for attr in BLOCK_LIST_NAMES:
        blocks = getattr(transformer, attr, None)
        if isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
            groups.append(_generic_group(attr, blocks[0]))
    if not groups:
        return None
    if not any(group.work_modules for group in groups):
        first = getattr(transformer, groups[0].attr)[0]
        raise TypeError(
            f"dit_cache's generic adapter finds no attention or MLP submodules (diffusers Attention / FeedForward) in "
            f"the {type(first).__name__} blocks of {type(transformer).__name__}.{groups[0].attr}, so it can neither "
            "count nor reuse their work; register a ModelSpec whose BlockGroup names them (attention=..., mlp=...) "
            "with dit_cache.register_adapter(spec) (see docs/adapters.md)"
        )
    params = inspect.signature(getattr(transformer, groups[0].attr)[0].forward).parameters
    temb = next((n for n in _TEMB_ARG_NAMES if n in params), None)
    indicator = temb_indicator(temb) if temb else temb_indicator(groups[0].hidden_arg)
    return ModelSpec(
        name=f"generic:{type(transformer).__name__}",
        class_names=(type(transformer).__name__,),
        groups=tuple(groups),
        indicator=indicator,
        indicator_doc=f"first block's `{temb or groups[0].hidden_arg}` argument (generic adapter)",
        notes="generic adapter: block order and return layout inferred; register a ModelSpec for certainty",
    )


def _generic_group(attr: str, block: nn.Module) -> BlockGroup:
    hidden_index, encoder_index = None, None
    try:  # diffusers' own record of which tuple slot holds which stream
        meta = compat.transformer_block_registry().get(type(block))
        if meta.return_encoder_hidden_states_index is not None:
            hidden_index = meta.return_hidden_states_index
            encoder_index = meta.return_encoder_hidden_states_index
    except Exception:  # not registered there, or a diffusers without that private registry
        pass
    attention, mlp = [], []
    try:
        attention_classes, mlp_classes = compat.attention_classes()
        for name, child in block.named_children():
            if isinstance(child, attention_classes):
                attention.append(name)
            elif isinstance(child, mlp_classes):
                mlp.append(name)
    except ImportError:
        pass
    params = inspect.signature(block.forward).parameters
    return BlockGroup(
        attr,
        hidden_index=hidden_index,
        encoder_index=encoder_index,
        attention=tuple(attention),
        mlp=tuple(mlp),
        hidden_arg=_hidden_arg(attr, block, params),
        encoder_arg="encoder_hidden_states" if "encoder_hidden_states" in params else None,
    )


def _hidden_arg(attr: str, block: nn.Module, params) -> str:
    """The block argument that carries the hidden states: diffusers' `hidden_states`, else the first positional
    parameter (a plain `nn.Linear` block takes `input`)."""
    if "hidden_states" in params:
        return "hidden_states"
    positional = [
        name
        for name, p in params.items()
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    if not positional:
        raise TypeError(
            f"dit_cache's generic adapter cannot tell which argument of {type(block).__name__}.forward (in `{attr}`) "
            f"carries the hidden states (parameters: {', '.join(params) or 'none'}); register a ModelSpec whose "
            "BlockGroup names it with hidden_arg=... (see docs/adapters.md)"
        )
    return positional[0]


for _spec in (*(m.SPEC for m in (flux, wan, hunyuan_video, cogvideox, ltx, sd3, pixart, qwenimage)), *catalog.SPECS):
    register_adapter(_spec)

__all__ = [
    "ArgReader",
    "BLOCK_LIST_NAMES",
    "BlockCall",
    "BlockGroup",
    "ModelSpec",
    "adanorm_indicator",
    "find_spec",
    "register_adapter",
    "supported_classes",
    "temb_indicator",
]
