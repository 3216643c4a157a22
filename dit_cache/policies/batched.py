"""The batched parts of a transformer call's nested arguments and outputs, found and replaced by one walk.

A batch is either the first dim of tensors (most pipelines) or a list of per-sample tensors (Z-Image passes its
latents and prompt embeddings as lists and returns a list). The walk goes through tuples, lists, dicts and diffusers
output objects, so that CFG reuse halves Bria FIBO's per-layer text features (a list of batched tensors) and
rebuilds both of LTX-2's outputs (video, audio) with the same code as a single output tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

# arguments with a leading dim that is not the batch (token positions, rotary tables)
NOT_BATCH = frozenset({"img_ids", "txt_ids", "image_rotary_emb", "rotary_emb", "freqs_cis"})


@dataclass(frozen=True)
class Batch:
    size: int
    as_list: bool = False  # samples are the items of lists (Z-Image), not the first dim of tensors

    def holds(self, value: Any) -> bool:
        """Whether `value` is a batch of this size: a tensor of `size` rows, or (list batches) a list of `size`
        tensors."""
        if isinstance(value, torch.Tensor):
            return value.dim() >= 1 and value.shape[0] == self.size
        return (
            self.as_list
            and isinstance(value, (list, tuple))
            and len(value) == self.size
            and all(isinstance(item, torch.Tensor) for item in value)
        )


def batch_of(hidden: Any) -> Batch | None:
    """The batch of a call's hidden states: a tensor's first dim, or the length of a list of tensors."""
    if isinstance(hidden, torch.Tensor):
        return Batch(hidden.shape[0]) if hidden.dim() >= 1 else None
    if isinstance(hidden, (list, tuple)) and hidden and all(isinstance(item, torch.Tensor) for item in hidden):
        return Batch(len(hidden), as_list=True)
    return None


def map_batched(value: Any, batch: Batch, fn: Callable[[Any], Any], name: str | None = None) -> Any:
    """`value` with every batch in it (see `Batch.holds`) replaced by fn(batch), walking nested containers."""
    if name in NOT_BATCH:
        return value
    if batch.holds(value):
        return fn(value)
    if isinstance(value, dict):  # diffusers outputs are dicts too (BaseOutput)
        items = {k: map_batched(v, batch, fn, k) for k, v in value.items()}
        return items if type(value) is dict else type(value)(**items)
    if isinstance(value, tuple):
        return tuple(map_batched(v, batch, fn) for v in value)
    if isinstance(value, list):
        return [map_batched(v, batch, fn) for v in value]
    return value


def batched_parts(value: Any, batch: Batch) -> list[Any]:
    """Every batch in `value`, in walk order."""
    parts: list[Any] = []
    map_batched(value, batch, lambda part: parts.append(part) or part)
    return parts


def stacked(part: Any) -> torch.Tensor:
    """A batch as one tensor (a list batch stacked: its samples have one shape within a pipeline call)."""
    return part if isinstance(part, torch.Tensor) else torch.stack(list(part))


def like(part: Any, tensor: torch.Tensor) -> Any:
    """`tensor` in the form of the batch `part` (a list of samples where `part` is one)."""
    return tensor if isinstance(part, torch.Tensor) else list(tensor.unbind(0))


def joined(first: Any, second: Any) -> Any:
    """Two batches of the same form, one after the other."""
    if isinstance(first, torch.Tensor):
        return torch.cat([first, second], dim=0)
    return [*first, *second]
