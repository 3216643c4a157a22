"""Counting the attention and MLP work a run actually did, for methods that report nothing themselves (the peers).

Each attention/MLP submodule the adapter names is represented by its first inner `nn.Linear`: a cache that returns a
stored output from the submodule's forward (or skips the whole block) never reaches that Linear, so the count is the
work computed, in the same units as `dit_cache.stats().compute_fraction`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

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


class WorkCounter:
    """`with WorkCounter(pipe) as counter: pipe(...)`; `counter.calls` is the number of work units run."""

    def __init__(self, pipe) -> None:
        transformers = [m for n, m in pipe.components.items() if n.startswith("transformer") and m is not None]
        self.probes = [p for t in transformers for p in _probe_linears(t)]
        self.calls = 0
        self._handles = []

    def _count(self, *_):
        self.calls += 1

    def __enter__(self) -> WorkCounter:
        self.calls = 0
        self._handles = [p.register_forward_pre_hook(self._count) for p in self.probes]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


@contextlib.contextmanager
def counted(pipe) -> Iterator[WorkCounter]:
    with WorkCounter(pipe) as counter:
        yield counter
