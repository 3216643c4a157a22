"""Placing and removing the hooks, on diffusers' HookRegistry so that a pipeline's `cache_context` reaches us.

`remove` leaves each module exactly as `apply` found it: hooks gone, and the instance attributes the registry added
(`forward`, `_diffusers_hook`) deleted where they did not exist before.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager
from torch import nn

from .compiling import compiled, outside_graph, skip_registry_frame
from .engine import BlockSlot, CacheEngine

TRANSFORMER_HOOK = "dit_cache.transformer"
BLOCK_HOOK = "dit_cache.block"
SUBMODULE_HOOK = "dit_cache.submodule"
TAIL_HOOK = "dit_cache.tail"


class _ContextReceiver(StateManager):
    """diffusers hands the current `cache_context` to every StateManager of a stateful hook; we only keep it."""

    def __init__(self) -> None:
        super().__init__(BaseState)
        self.current = None

    def set_context(self, context) -> None:
        self.current = context

    def reset(self, *args, **kwargs) -> None:
        self.current = None


class TransformerHook(ModelHook):
    _is_stateful = True

    def __init__(self, engine: CacheEngine) -> None:
        super().__init__()
        self.engine = engine
        self.context = _ContextReceiver()
        self.blocks: list[tuple[nn.Module, BlockHook]] = []

    @outside_graph
    def new_forward(self, module: nn.Module, *args, **kwargs):
        for block, hook in self.blocks:  # regional compilation done after `apply`
            if block._compiled_call_impl is not None:
                hook.adopt_compiled_call(block)
        self.engine.begin_call(args, kwargs, self.context.current)
        try:
            output = self.engine.run_call(compiled(self.fn_ref.original_forward), args, kwargs)
        except BaseException:
            self.engine.reset()  # an interrupted call leaves nothing behind
            raise
        return self.engine.end_call(output)

    def reset_state(self, module: nn.Module) -> nn.Module:
        self.engine.reset()
        return module


class BlockHook(ModelHook):
    """Runs a block through the engine. A block compiled on its own (regional compilation:
    `transformer.compile_repeated_blocks()`, before or after `apply`) has its compiled call taken over while the hook
    is on: the engine's glue runs eagerly and calls the compiled call on the block's own forward, so the compiled
    region is the block alone (one graph per block class, `fullgraph=True` included, where the policy places no
    hooks inside the block). `remove` hands the compiled call back."""

    def __init__(self, engine: CacheEngine, slot: BlockSlot) -> None:
        super().__init__()
        self.engine, self.slot = engine, slot
        self.compiled_call = None

    @outside_graph
    def new_forward(self, module: nn.Module, *args, **kwargs):
        if self.compiled_call is None:
            forward = compiled(self.fn_ref.original_forward)
        else:
            forward = functools.partial(_call_unhooked, module, self.compiled_call, self.fn_ref.original_forward)
        return self.engine.run_block(self.slot, forward, args, kwargs)

    def adopt_compiled_call(self, module: nn.Module) -> None:
        compiled_call = getattr(module, "_compiled_call_impl", None)
        if compiled_call is not None and not _has_module_hooks(module):
            self.compiled_call, module._compiled_call_impl = compiled_call, None

    def initialize_hook(self, module: nn.Module) -> nn.Module:
        self.adopt_compiled_call(module)
        return module

    def deinitalize_hook(self, module: nn.Module) -> nn.Module:
        if self.compiled_call is not None and getattr(module, "_compiled_call_impl", None) is None:
            module._compiled_call_impl = self.compiled_call
        self.compiled_call = None
        return module


def _call_unhooked(module: nn.Module, compiled_call, original_forward, *args, **kwargs):
    """`module`'s compiled call with its forward set back to `original_forward` for the call. The class's own forward
    is exposed by dropping the instance attribute, so the compiled code guards on nothing specific to this block."""
    hooked = module.__dict__.pop("forward")
    if getattr(original_forward, "__func__", None) is not getattr(type(module), "forward", None):
        module.forward = original_forward  # another hook below ours: keep it
    try:
        return compiled_call(*args, **kwargs)
    finally:
        module.forward = hooked


def _has_module_hooks(module: nn.Module) -> bool:
    """torch hooks run by `_call_impl`: the eager call already ran them, a compiled `_call_impl` would run them again."""
    return bool(
        module._forward_hooks or module._forward_pre_hooks or module._backward_hooks or module._backward_pre_hooks
    )


class SubmoduleHook(ModelHook):
    def __init__(self, engine: CacheEngine, slot: BlockSlot, name: str) -> None:
        super().__init__()
        self.engine, self.slot, self.name = engine, slot, name

    @outside_graph
    def new_forward(self, module: nn.Module, *args, **kwargs):
        return self.engine.run_submodule(self.slot, self.name, compiled(self.fn_ref.original_forward), args, kwargs)


class TailHook(ModelHook):
    def __init__(self, engine: CacheEngine, slot: BlockSlot, unit: str) -> None:
        super().__init__()
        self.engine, self.slot, self.unit = engine, slot, unit

    @outside_graph
    def new_forward(self, module: nn.Module, *args, **kwargs):
        return self.engine.run_tail(self.slot, self.unit, compiled(self.fn_ref.original_forward), args, kwargs)


@dataclass
class _Placed:
    module: nn.Module
    hook_name: str
    had_registry: bool
    had_forward_attr: bool


class Installation:
    """The hooks of one engine, and how to take them off again."""

    def __init__(self, engine: CacheEngine) -> None:
        self.engine = engine
        self.placed: list[_Placed] = []

    def _place(self, module: nn.Module, hook: ModelHook, name: str) -> None:
        record = _Placed(module, name, hasattr(module, "_diffusers_hook"), "forward" in module.__dict__)
        HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, name)
        skip_registry_frame(module)
        self.placed.append(record)

    def install(self) -> None:
        engine = self.engine
        try:
            transformer_hook = TransformerHook(engine)
            self._place(engine.transformer, transformer_hook, TRANSFORMER_HOOK)
            for slot in engine.slots:
                block_hook = BlockHook(engine, slot)
                self._place(slot.module, block_hook, BLOCK_HOOK)
                transformer_hook.blocks.append((slot.module, block_hook))
                if engine.policy.uses_submodules:
                    for name, sub in slot.work.items():
                        self._place(sub, SubmoduleHook(engine, slot, name), SUBMODULE_HOOK)
                    for unit, tail in slot.tails.items():
                        self._place(tail, TailHook(engine, slot, unit), TAIL_HOOK)
        except Exception:
            self.uninstall()
            raise
        engine.transformer._diffusers_hook.invalidate_child_registries_cache()

    def uninstall(self) -> None:
        for record in reversed(self.placed):
            module = record.module
            registry = getattr(module, "_diffusers_hook", None)
            if registry is None:
                continue
            registry.remove_hook(record.hook_name, recurse=False)
            if registry.hooks:
                continue
            if not record.had_forward_attr and "forward" in module.__dict__:
                del module.forward
            if not record.had_registry:
                del module._diffusers_hook
        self.placed.clear()
        root = getattr(self.engine.transformer, "_diffusers_hook", None)
        if root is not None:
            root.invalidate_child_registries_cache()
