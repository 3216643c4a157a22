"""A dummy DiT with exact arithmetic, for asserting decisions and the reuse mechanism number by number.

Each block computes `h + gate(temb) * attn(h) + ff(h)` with attn(h) = h and ff(h) = 0, i.e. `h * (1 + temb)`, so a
stack of N blocks maps h to h * (1 + temb)^N. With powers of two everything is exact in float32.
"""

from __future__ import annotations

import torch
from torch import nn

import dit_cache
from dit_cache.adapters import BlockGroup, ModelSpec, temb_indicator


class Identity(nn.Module):
    def forward(self, x):
        return x


class Zero(nn.Module):
    def forward(self, x):
        return torch.zeros_like(x)


class DummyBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = Identity()
        self.ff = Zero()

    def forward(self, hidden_states, temb):
        return hidden_states + temb * self.attn(hidden_states) + self.ff(hidden_states)


class DummyDiT(nn.Module):
    def __init__(self, num_blocks: int = 4) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(DummyBlock() for _ in range(num_blocks))
        self.register_buffer("unused", torch.zeros(1))

    def forward(self, hidden_states, timestep, temb):
        for block in self.blocks:
            hidden_states = block(hidden_states, temb)
        return hidden_states


SPEC = ModelSpec(
    name="dummy",
    class_names=("DummyDiT",),
    groups=(BlockGroup("blocks", hidden_index=None, encoder_arg=None, attention=("attn",), mlp=("ff",)),),
    indicator=temb_indicator("temb"),
    indicator_doc="temb",
)
dit_cache.register_adapter(SPEC, replace=True)


class FakeScheduler:
    """Just what a pipeline's scheduler exposes: the timesteps and sigmas of the current trajectory."""

    def __init__(self, num_steps: int) -> None:
        self.set_timesteps(num_steps)

    def set_timesteps(self, num_steps: int) -> None:
        self.sigmas = torch.linspace(1.0, 1.0 / num_steps, num_steps).tolist() + [0.0]
        self.timesteps = torch.tensor([s * 1000 for s in self.sigmas[:-1]])


def drive(model: DummyDiT, scheduler: FakeScheduler, temb: list[float], hidden: list[torch.Tensor] | None = None):
    """One 'pipeline call': a model call per step with the given temb (indicator) values; returns the outputs."""
    outputs = []
    for i, t in enumerate(scheduler.timesteps):
        h = hidden[i] if hidden is not None else torch.ones(1, 4, 2)
        outputs.append(model(hidden_states=h, timestep=t.reshape(1), temb=torch.tensor(temb[i])))
    return outputs
