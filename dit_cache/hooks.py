"""Placing and removing the hooks, on diffusers' HookRegistry so that a pipeline's `cache_context` reaches us.

`remove` leaves each module exactly as `apply` found it: hooks gone, and the instance attributes the registry added
(`forward`, `_diffusers_hook`) deleted where they did not exist before.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager
from torch import nn

from .compiling import compiled, outside_graph
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

    @outside_graph
    def new_forward(self, module: nn.Module, *args, **kwargs):
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
    def __init__(self, engine: CacheEngine, slot: BlockSlot) -> None:
        super().__init__()
        self.engine, self.slot = engine, slot

    @outside_graph
    def new_forward(self, module: nn.Module, *args, **kwargs):
        return self.engine.run_block(self.slot, compiled(self.fn_ref.original_forward), args, kwargs)


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
        self.placed.append(record)

    def install(self) -> None:
        engine = self.engine
        try:
            self._place(engine.transformer, TransformerHook(engine), TRANSFORMER_HOOK)
            for slot in engine.slots:
                self._place(slot.module, BlockHook(engine, slot), BLOCK_HOOK)
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
