"""Placing and removing the hooks, on diffusers' HookRegistry so that a pipeline's `cache_context` reaches us.

`remove` leaves each module exactly as `apply` found it: hooks gone, and the instance attributes the registry added
(`forward`, `_diffusers_hook`) deleted where they did not exist before.

Offloading: our hooks always sit innermost, next to the module's own forward, whichever was placed first. Offload
hooks (accelerate's `CpuOffload` / `AlignDevicesHook` of `enable_model_cpu_offload` and
`enable_sequential_cpu_offload`, diffusers' group offloading) then run on every call, moving weights before we decide
and reuse on the device the block runs on, and a skipped block costs no forward but keeps their onload/offload
pairs balanced. accelerate keeps the forward it wraps in `module._old_forward` and restores exactly that when the
pipeline re-offloads after every call (`maybe_free_model_hooks`), so we place ourselves under `_old_forward`; in a
diffusers registry we insert ourselves below the hooks already there.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass

from torch import nn

from .compat import BaseState, HookFunctionReference, HookRegistry, ModelHook, StateManager
from .compiling import compiled, outside_graph, skip_registry_frame
from .engine import BlockSlot, CacheEngine, diffusers_cache_conflict

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
        except BaseException as error:
            self.engine.fail(error)  # an interrupted call leaves nothing behind (and its peers are told)
            raise
        return self.engine.end_call(output)

    def reset_state(self, module: nn.Module) -> nn.Module:
        self.engine.reset()
        return module


class _RefuseEnableCache:
    """Stands in for `transformer.enable_cache` while dit_cache is applied (an instance attribute; removed again)."""

    def __init__(self, engine: CacheEngine) -> None:
        self.engine = engine

    def __call__(self, config, *args, **kwargs):
        raise RuntimeError(diffusers_cache_conflict(self.engine.name, self.engine.policy.name, config))


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


@contextlib.contextmanager
def _under_accelerate(module: nn.Module) -> Iterator[None]:
    """While inside, `module.forward` is the forward that accelerate's hook wraps (if one does): what is placed on
    it then runs after accelerate's pre-forward, and stays in place when accelerate re-installs its hook."""
    outer = module.__dict__.get("forward")
    wrapped = module.__dict__.get("_hf_hook") is not None and "_old_forward" in module.__dict__ and outer is not None
    if not wrapped:
        yield
        return
    module.forward = module._old_forward
    try:
        yield
    finally:
        module._old_forward = module.forward
        module.forward = outer


def _is_class_forward(module: nn.Module) -> bool:
    """Whether `module.forward` is the class's own method (no instance attribute, or the bound method itself)."""
    forward = module.__dict__.get("forward")
    return forward is None or (
        getattr(forward, "__func__", None) is type(module).forward and getattr(forward, "__self__", None) is module
    )


def _register_innermost(registry: HookRegistry, hook: ModelHook, name: str) -> None:
    """`registry.register_hook`, but below the hooks already registered (diffusers only appends outermost)."""
    if not registry._fn_refs:
        registry.register_hook(hook, name)
        return
    module = registry._module_ref = hook.initialize_hook(registry._module_ref)
    first = registry._fn_refs[0]
    inner = first.original_forward if first.original_forward is not None else first.forward
    fn_ref = HookFunctionReference()
    fn_ref.pre_forward, fn_ref.post_forward, fn_ref.original_forward = hook.pre_forward, hook.post_forward, inner
    fn_ref.forward = functools.partial(hook.new_forward, module)

    def chained(*args, **kwargs):
        args, kwargs = fn_ref.pre_forward(module, *args, **kwargs)
        return fn_ref.post_forward(module, fn_ref.forward(*args, **kwargs))

    _point_at(first, functools.update_wrapper(chained, inner))
    hook.fn_ref = fn_ref
    registry.hooks[name] = hook
    registry._hook_order.insert(0, name)
    registry._fn_refs.insert(0, fn_ref)


def _point_at(fn_ref: HookFunctionReference, forward) -> None:
    """Make the hook of `fn_ref` call `forward` as the forward below it."""
    if fn_ref.original_forward is not None:  # a hook with its own new_forward calls original_forward
        fn_ref.original_forward = forward
    else:
        fn_ref.forward = forward


def _unregister(registry: HookRegistry, name: str) -> None:
    """`registry.remove_hook(name)`, also right when a hook with its own `new_forward` sits above (diffusers then
    overwrites that hook's forward with the one below)."""
    index = registry._hook_order.index(name)
    if index == len(registry._hook_order) - 1:
        registry.remove_hook(name, recurse=False)
        return
    fn_ref = registry._fn_refs[index]
    below = fn_ref.original_forward if fn_ref.original_forward is not None else fn_ref.forward
    _point_at(registry._fn_refs[index + 1], below)
    registry._module_ref = registry.hooks[name].deinitalize_hook(registry._module_ref)
    del registry.hooks[name]
    registry._hook_order.pop(index)
    registry._fn_refs.pop(index)


@dataclass
class _Placed:
    module: nn.Module
    hook_name: str
    had_registry: bool
    had_forward_attr: bool  # below accelerate's hook, if one wraps the module


class Installation:
    """The hooks of one engine, and how to take them off again."""

    def __init__(self, engine: CacheEngine) -> None:
        self.engine = engine
        self.placed: list[_Placed] = []

    def _place(self, module: nn.Module, hook: ModelHook, name: str) -> None:
        with _under_accelerate(module):
            record = _Placed(module, name, hasattr(module, "_diffusers_hook"), not _is_class_forward(module))
            _register_innermost(HookRegistry.check_if_exists_or_initialize(module), hook, name)
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
        if callable(getattr(type(engine.transformer), "enable_cache", None)):  # diffusers' CacheMixin
            engine.transformer.enable_cache = _RefuseEnableCache(engine)

    def uninstall(self) -> None:
        if isinstance(self.engine.transformer.__dict__.get("enable_cache"), _RefuseEnableCache):
            del self.engine.transformer.enable_cache
        for record in reversed(self.placed):
            module = record.module
            registry = getattr(module, "_diffusers_hook", None)
            if registry is None or record.hook_name not in registry.hooks:
                continue
            with _under_accelerate(module):
                _unregister(registry, record.hook_name)
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
