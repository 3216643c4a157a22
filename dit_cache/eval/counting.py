"""Counting the attention and MLP work a run actually did, for methods that report nothing themselves (the peers).

Each attention/MLP submodule the adapter names is represented by its first inner `nn.Linear` (or itself, if it is
one), counted where its weight enters `F.linear`: a cache that returns a stored output from the submodule's forward
(or skips the whole block) never reaches that matmul, so the count is the work computed, in the same units as
`dit_cache.stats().compute_fraction`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from ..adapters import find_spec
from ..engine import build_slots


def _probe_linears(transformer: nn.Module) -> list[nn.Module]:
    probes = []
    for slot in build_slots(transformer, find_spec(transformer)):
        for module in slot.work.values():
            linear = (
                module
                if isinstance(module, nn.Linear)
                else next((m for m in module.modules() if isinstance(m, nn.Linear)), None)
            )
            if linear is not None:
                probes.append(linear)
    return probes


class _LinearCalls(TorchFunctionMode):
    """Counts `F.linear` calls on the probes' weights: the matmul itself, so a unit that is a Linear and whose
    `forward` a cache replaced (diffusers' TaylorSeer on Flux's `proj_mlp` / `proj_out`) counts only when its
    weight is really used. A forward pre-hook on the module would fire either way."""

    def __init__(self, weights: set[int], counter: WorkCounter) -> None:
        super().__init__()
        self.weights, self.counter = weights, counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            weight = args[1] if len(args) > 1 else kwargs.get("weight")
            if id(weight) in self.weights:
                self.counter.calls += 1
        return func(*args, **kwargs)


class WorkCounter:
    """`with WorkCounter(pipe) as counter: pipe(...)`; `counter.calls` is the number of work units run."""

    def __init__(self, pipe) -> None:
        transformers = [m for n, m in pipe.components.items() if n.startswith("transformer") and m is not None]
        self.probes = [p for t in transformers for p in _probe_linears(t)]
        self.calls = 0
        self._mode: _LinearCalls | None = None

    def __enter__(self) -> WorkCounter:
        self.calls = 0
        self._mode = _LinearCalls({id(p.weight) for p in self.probes}, self)
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._mode is not None:
            self._mode.__exit__(*exc)
            self._mode = None


@contextlib.contextmanager
def counted(pipe) -> Iterator[WorkCounter]:
    with WorkCounter(pipe) as counter:
        yield counter
