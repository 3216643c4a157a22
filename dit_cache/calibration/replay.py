"""Replay of a recorded pipeline run: LeMiCa's global edge weights need one generation per cached segment (i, j),
and every one of them repeats the reference run exactly up to step i. Recording the transformer's outputs once and
returning them for the steps before i makes each of those generations cost only its steps from i on (about half the
work over all segments), with bitwise the same result: the latents entering step i are the reference's.

The transformer call of a step is known by the scheduler's `step_index` (None before the first `scheduler.step`);
a scheduler without one is not replayed (every generation then runs in full).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


def _step_of(scheduler: Any) -> int | None:
    if not hasattr(scheduler, "step_index"):
        return None
    index = scheduler.step_index
    return 0 if index is None else int(index)


def _clone(output: Any) -> Any:
    """A copy the pipeline may modify in place without touching the recording."""
    if isinstance(output, torch.Tensor):
        return output.clone()
    if isinstance(output, tuple):
        return tuple(_clone(x) for x in output)
    if isinstance(output, dict):  # diffusers' BaseOutput is an OrderedDict dataclass
        return type(output)(**{k: _clone(v) for k, v in output.items()})
    return output


class Replay:
    """Records the transformer outputs of one pipeline run per step; later runs get them back for steps < `until`."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.outputs: dict[int, list[Any]] = {}
        self.supported = _step_of(pipe.scheduler) is not None

    @contextmanager
    def recording(self) -> Iterator[None]:
        self.outputs.clear()

        def record(forward, *args, **kwargs):
            output = forward(*args, **kwargs)
            step = _step_of(self.pipe.scheduler)
            if step is not None:
                self.outputs.setdefault(step, []).append(_clone(output))
            return output

        with self._wrapped(record):
            yield

    @contextmanager
    def replaying(self, until: int) -> Iterator[None]:
        """Steps before `until` return the recorded outputs (in call order within a step, so CFG branches match)."""
        served: dict[int, int] = {}

        def replay(forward, *args, **kwargs):
            step = _step_of(self.pipe.scheduler)
            if step is None or step >= until or step not in self.outputs:
                return forward(*args, **kwargs)
            k = served.get(step, 0)
            served[step] = k + 1
            return _clone(self.outputs[step][k])

        if not self.supported or until <= 0:
            yield
            return
        with self._wrapped(replay):
            yield

    @contextmanager
    def _wrapped(self, around) -> Iterator[None]:
        # an instance attribute over whatever forward is installed now (dit_cache's hooks included), restored after
        module = self.pipe.transformer
        had_own = "forward" in module.__dict__
        previous = module.forward

        def forward(*args, **kwargs):
            return around(previous, *args, **kwargs)

        module.forward = forward
        try:
            yield
        finally:
            if had_own:
                module.forward = previous
            else:
                del module.forward
