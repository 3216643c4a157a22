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


# ---------------------------------------------------------------------------------------------- token / CFG / blocks
class Double(nn.Module):
    """A token-wise 'MLP': 2x."""

    def forward(self, x):
        return 2 * x


class TokenBlock(nn.Module):
    """`h + temb * attn(h) + ff(h)` with attn(h) = h and ff(h) = 2h: every token's output depends on that token only."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = Identity()
        self.ff = Double()

    def forward(self, hidden_states, temb):
        return hidden_states + temb * self.attn(hidden_states) + self.ff(hidden_states)


class TokenDiT(DummyDiT):
    def __init__(self, num_blocks: int = 2) -> None:
        super().__init__(num_blocks)
        self.blocks = nn.ModuleList(TokenBlock() for _ in range(num_blocks))


class CondDiT(DummyDiT):
    """DummyDiT whose output adds the condition `encoder_hidden_states` (B, 1, 1): the unconditional output minus the
    conditional one is the constant e_uncond - e_cond at every step. Returns a tuple, like return_dict=False."""

    def forward(self, hidden_states, timestep, temb, encoder_hidden_states):
        for block in self.blocks:
            hidden_states = block(hidden_states, temb)
        return (hidden_states + encoder_hidden_states,)


class PerBlockDiT(DummyDiT):
    """DummyDiT whose block i gets its own gate temb[i] (temb: a tensor of one value per block)."""

    def forward(self, hidden_states, timestep, temb):
        for i, block in enumerate(self.blocks):
            hidden_states = block(hidden_states, temb[i])
        return hidden_states


class ListDiT(DummyDiT):
    """CondDiT with Z-Image's call shape: the batch is a list of per-sample latents and one of per-sample
    conditions (1, 1), and the output a list of samples."""

    def forward(self, hidden_states, timestep, temb, encoder_hidden_states):
        hidden = torch.stack(hidden_states)
        for block in self.blocks:
            hidden = block(hidden, temb)
        return (list((hidden + torch.stack(encoder_hidden_states)).unbind(0)),)


class LayersDiT(DummyDiT):
    """CondDiT with Bria FIBO's and LTX-2's call shapes: the condition comes as a list of per-layer (B, 1, 1) tensors
    (their sum is added), and the transformer returns two outputs, (video, audio), each with its own condition."""

    def forward(self, hidden_states, timestep, temb, encoder_hidden_states):
        for block in self.blocks:
            hidden_states = block(hidden_states, temb)
        condition = sum(encoder_hidden_states)
        return hidden_states + condition, hidden_states[:, :1] * 0.5 - 2 * condition


for _cls in ("TokenDiT", "CondDiT", "PerBlockDiT", "ListDiT", "LayersDiT"):
    dit_cache.register_adapter(
        ModelSpec(
            name=_cls.lower(),
            class_names=(_cls,),
            groups=SPEC.groups,
            indicator=temb_indicator("temb"),
            indicator_doc="temb",
        ),
        replace=True,
    )


def in_context(model: nn.Module, name: str):
    """Run the next calls of `model` inside diffusers' cache_context `name` (None: outside any), as a pipeline does."""
    from diffusers.hooks.hooks import CacheContext, _set_cache_context

    _set_cache_context(model, CacheContext(name) if name else None)
