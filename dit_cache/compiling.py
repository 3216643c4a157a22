"""torch.compile: the policies' Python (decisions, bookkeeping, host reads) runs outside every compiled graph, the
model's own compute inside whatever compilation the user set up (`torch.compile(transformer)`,
`transformer.compile()`, `transformer.compile_repeated_blocks()`), in either order with `apply`.

How: each hook's forward is a frame dynamo does not trace (a graph break where a compiled region calls it). On entry
it switches dynamo's frame callback off and parks it; `compiled(forward)` hands it back around the model's own
forward, so that forward's frames are compiled by the user's compiler (same backend and options), once per code
object and guard set: a block class compiles once for all its instances, whatever the policy decided.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

import torch

try:  # the hook dynamo itself uses to switch compilation on and off around a frame (DisableContext, compile wrappers)
    from torch._C._dynamo.eval_frame import set_eval_frame
except ImportError:  # a torch without dynamo: nothing is ever compiled
    set_eval_frame = None

_parked = threading.local()

FULLGRAPH_REASON = (
    "dit_cache takes its caching decisions outside compiled graphs, so a graph that calls a patched module breaks "
    "there. fullgraph=True works with regional compilation (transformer.compile_repeated_blocks(fullgraph=True)) "
    "and a policy that decides per step or block (teacache, magcache, fbcache, schedule, lemica...); otherwise "
    "compile with fullgraph=False"
)


def outside_graph(fn: Callable) -> Callable:
    """`fn` (a hook's forward) run eagerly even where a compiled region calls it; the compile callback active at the
    call is parked for `compiled`."""
    if set_eval_frame is None:
        return fn

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        callback = set_eval_frame(None)
        outer = getattr(_parked, "callback", None)
        _parked.callback = callback
        try:
            return fn(*args, **kwargs)
        finally:
            _parked.callback = outer
            set_eval_frame(callback)

    return torch.compiler.disable(run, recursive=False, reason=FULLGRAPH_REASON)


def compiled(forward: Callable) -> Callable:
    """`forward` run under the compile callback parked by the enclosing `outside_graph` call (as is, if none)."""
    callback = getattr(_parked, "callback", None)
    if callback is None:
        return forward

    def run(*args: Any, **kwargs: Any) -> Any:
        set_eval_frame(callback)
        try:
            return forward(*args, **kwargs)
        finally:
            set_eval_frame(None)

    return run


def skip_registry_frame(module: torch.nn.Module) -> None:
    """diffusers' HookRegistry wraps a hooked module's forward in a small function (one code object for every hook).
    Where a compiled region calls the module, dynamo would compile that wrapper as a frame of its own, once per
    module type and argument layout, and hit its recompile limit on a large model: mark it as a frame dynamo skips
    (its callees, our hook and through it the module's own forward, are still handled as above)."""
    wrapper = getattr(module.forward, "func", None)
    if set_eval_frame is not None and getattr(wrapper, "__code__", None) is not None:
        from torch._dynamo.decorators import skip

        skip(wrapper)
        wrapper._torchdynamo_disable_msg = FULLGRAPH_REASON  # what fullgraph=True's error says
