"""Model knowledge as data: where a transformer's blocks are, what they take and return, which submodules do the
attention and MLP work, and how to read TeaCache's cheap indicator.

A `ModelSpec` describes one family; `BlockGroup` one `nn.ModuleList` of blocks. Nothing here re-implements a model's
forward: the hooks only need to find the blocks, read two or three of their arguments and rebuild their return value.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .tokens import LATENT, TokenLayout


class ArgReader:
    """Reads a named argument of a call from `args`/`kwargs`, by the callee's signature (computed once)."""

    def __init__(self, fn: Callable) -> None:
        params = list(inspect.signature(fn).parameters.values())
        self._positions = {
            p.name: i
            for i, p in enumerate(params)
            if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        }

    def get(self, name: str | None, args: tuple, kwargs: dict, default: Any = None) -> Any:
        if name is None:
            return default
        if name in kwargs:
            return kwargs[name]
        pos = self._positions.get(name)
        if pos is not None and pos < len(args):
            return args[pos]
        return default


@dataclass(frozen=True)
class BlockGroup:
    """One list of blocks, e.g. Flux's `single_transformer_blocks` (`attr`; see `block_list` for wrapped blocks).

    `hidden_index` / `encoder_index`: where the image stream and the text (encoder) stream sit in the tuple a block
    returns; `hidden_index=None` means the block returns the hidden tensor itself. `attention`, `cross_attention` and
    `mlp` name the block's submodules whose calls are the block's work (missing ones, like SD3's last `ff_context`,
    are ignored block by block). `tails`: (unit, activation) pairs where the block applies the activation
    submodule directly to the unit's output (Flux's `act_mlp(proj_mlp(x))`): the unit's output is then taken after
    the activation, so a reused unit skips its activation too; the activation is not counted as a unit of its own.
    `feeds`: (unit, consumer) pairs where the unit's output is read only by the consumer unit (Flux's single blocks
    project cat(attention, MLP) with `proj_out`): when a policy reuses the consumer's output it need not keep or
    produce the unit's (see `FORAPolicy`).
    """

    attr: str
    hidden_index: int | None
    encoder_index: int | None = None
    attention: tuple[str, ...] = ("attn",)
    cross_attention: tuple[str, ...] = ()
    mlp: tuple[str, ...] = ("ff",)
    hidden_arg: str = "hidden_states"
    encoder_arg: str | None = "encoder_hidden_states"
    tails: tuple[tuple[str, str], ...] = ()
    feeds: tuple[tuple[str, str], ...] = ()

    @property
    def work_modules(self) -> tuple[str, ...]:
        return self.attention + self.cross_attention + self.mlp

    def split_output(self, output: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(hidden, encoder) of a block's return value."""
        if self.hidden_index is None or isinstance(output, torch.Tensor):
            return output, None
        encoder = output[self.encoder_index] if self.encoder_index is not None else None
        return output[self.hidden_index], encoder

    def layout_problem(self, block: BlockCall, output: Any) -> str | None:
        """What is wrong with this group's return layout for a block's real output, or None: the hidden (and encoder)
        stream it names must be tensors of the shapes the block was given, or reuse would rebuild the wrong ones."""
        if self.hidden_index is None and not isinstance(output, torch.Tensor):
            return f"it returns a {type(output).__name__}, where the adapter expects the hidden tensor alone (hidden_index=None)"
        if self.hidden_index is not None and not isinstance(output, (torch.Tensor, tuple, list)):
            return f"it returns a {type(output).__name__}, where the adapter expects a tuple"
        if isinstance(output, (tuple, list)):
            needed = max(self.hidden_index, self.encoder_index if self.encoder_index is not None else 0)
            if len(output) <= needed:
                return f"it returns {len(output)} values, where the adapter reads index {needed}"
        hidden, encoder = self.split_output(output)
        for stream, index, value, given in (
            ("hidden", self.hidden_index, hidden, block.get(self.hidden_arg)),
            ("encoder", self.encoder_index, encoder, block.get(self.encoder_arg) if self.encoder_arg else None),
        ):
            where = f"index {index}" if index is not None else "its return value"
            if value is not None and not isinstance(value, torch.Tensor):
                return f"its {where} (read as the {stream} stream) is a {type(value).__name__}, not a tensor"
            if isinstance(value, torch.Tensor) and isinstance(given, torch.Tensor) and value.shape != given.shape:
                return (
                    f"its {where} (read as the {stream} stream) has shape {tuple(value.shape)}, but the block was "
                    f"given `{self.hidden_arg if stream == 'hidden' else self.encoder_arg}` of shape {tuple(given.shape)}"
                )
        return None

    def make_output(self, hidden: torch.Tensor, encoder: torch.Tensor | None) -> Any:
        """A return value in this block's layout."""
        if self.hidden_index is None:
            return hidden
        size = 1 + max(self.hidden_index, self.encoder_index if self.encoder_index is not None else 0)
        out: list[Any] = [None] * size
        out[self.hidden_index] = hidden
        if self.encoder_index is not None:
            out[self.encoder_index] = encoder
        return tuple(out)


def single_stream_blocks(hidden_index: int | None, encoder_index: int | None = None, **kw: Any) -> BlockGroup:
    """Flux-style `single_transformer_blocks`: `proj_out(cat(attn(x), act_mlp(proj_mlp(x))))`, gated. The MLP unit
    ends with its activation, and attention and MLP feed only `proj_out`. `hidden_index=None`: blocks that take and
    return the text and image tokens as one sequence (Chroma). `kw` overrides any field (Ovis-Image gates half of
    `proj_mlp`'s output with the other half: `tails=(), feeds=()`)."""
    fields: dict[str, Any] = dict(
        mlp=("proj_mlp", "proj_out"),
        tails=(("proj_mlp", "act_mlp"),),
        feeds=(("attn", "proj_out"), ("proj_mlp", "proj_out")),
    )
    fields.update(kw)
    return BlockGroup("single_transformer_blocks", hidden_index=hidden_index, encoder_index=encoder_index, **fields)


# indicator(first_block, call) -> a tensor whose change between steps predicts the change of the output (TeaCache).
IndicatorFn = Callable[[nn.Module, "BlockCall"], torch.Tensor]


@dataclass
class BlockCall:
    """The arguments of one block call, read lazily by name."""

    args: tuple
    kwargs: dict
    reader: ArgReader
    group: BlockGroup

    def get(self, name: str | None, default: Any = None) -> Any:
        return self.reader.get(name, self.args, self.kwargs, default)

    @property
    def hidden(self) -> torch.Tensor:
        hidden = self.get(self.group.hidden_arg)
        if not isinstance(hidden, torch.Tensor):
            raise TypeError(
                f"dit_cache: a block of `{self.group.attr}` was called without a tensor in its "
                f"`{self.group.hidden_arg}` argument (got {type(hidden).__name__}), which the adapter reads as the "
                "hidden states; register a ModelSpec whose BlockGroup names the right hidden_arg (see docs/adapters.md)"
            )
        return hidden

    @property
    def encoder(self) -> torch.Tensor | None:
        return self.get(self.group.encoder_arg)


# what sequential-CFG pipelines call their prompt embeddings (Kandinsky 5: the Qwen ones go to the blocks)
CFG_EMBEDS = (("prompt_embeds", "negative_prompt_embeds"), ("prompt_embeds_qwen", "negative_prompt_embeds_qwen"))


@dataclass(frozen=True)
class ModelSpec:
    """What dit_cache knows about one transformer family.

    `timestep_scale`, `timestep_offset`: the pipeline's scheduler timestep is `timestep_offset + timestep_scale *`
    the transformer's timestep argument (Flux and Qwen-Image pipelines pass `t / 1000`: scale 1000; Z-Image and
    Lumina 2 pass it reversed, `(1000 - t) / 1000`: scale -1000, offset 1000). `cfg_batch_order`: the order of
    the two halves of a batch when the pipeline batches classifier-free guidance (diffusers concatenates negative
    first). `cfg_embeds`: (positive, negative) names of the prompt embeddings in a pipeline's `__call__` that runs
    CFG as two calls per step without a cache_context: a call given the positive tensor is "cond", the negative
    "uncond" (`state.sequential_cfg_branch`).
    """

    name: str
    class_names: tuple[str, ...]
    groups: tuple[BlockGroup, ...]
    indicator: IndicatorFn
    indicator_doc: str
    timestep_scale: float = 1.0
    timestep_offset: float = 0.0
    timestep_arg: str = "timestep"
    cfg_batch_order: tuple[str, str] = ("uncond", "cond")
    cfg_embeds: tuple[tuple[str, str], ...] = CFG_EMBEDS
    tokens: TokenLayout = LATENT  # where a call's image tokens sit in space (ToCa's cells, CFG reuse's low-pass)
    notes: str = ""
    extra: dict = field(default_factory=dict)

    def blocks(self, transformer: nn.Module) -> list[tuple[BlockGroup, int, nn.Module]]:
        """(group, index in group, block) in execution order."""
        found = []
        for group in self.groups:
            modules = block_list(transformer, group.attr)
            if modules is None:
                continue
            found.extend((group, i, block) for i, block in enumerate(modules))
        return found


def block_list(transformer: nn.Module, attr: str) -> Any:
    """The blocks named by a group's `attr`: an attribute (`"blocks"`), or `"outer.*.inner"` for blocks wrapped in
    another module each (HiDream's `single_stream_blocks[i].block`)."""
    if ".*." not in attr:
        return getattr(transformer, attr, None)
    outer, inner = attr.split(".*.", 1)
    wrappers = getattr(transformer, outer, None)
    return None if wrappers is None else [wrapper.get_submodule(inner) for wrapper in wrappers]


def temb_indicator(arg: str = "temb") -> IndicatorFn:
    """Indicator = a block argument that only depends on the timestep (e.g. Wan's projected timestep embedding)."""

    def read(block: nn.Module, call: BlockCall) -> torch.Tensor:
        return call.get(arg)

    return read


def adanorm_indicator(norm: str = "norm1") -> IndicatorFn:
    """Indicator = the first block's timestep-modulated image input, `block.<norm>(hidden, emb=temb)[0]`."""

    def read(block: nn.Module, call: BlockCall) -> torch.Tensor:
        return getattr(block, norm)(call.hidden, emb=call.get("temb"))[0]

    return read


# ---------------------------------------------------------------------------------------------------- shared shapes
def wan_like(name: str, class_names: tuple[str, ...], doc: str, **kw: Any) -> ModelSpec:
    """Wan-style video DiT: one list `blocks` returning the hidden tensor, self-attention `attn1`, cross-attention
    `attn2`, MLP `ffn`; TeaCache's indicator is the projected timestep embedding the blocks get as `temb`."""
    group = BlockGroup("blocks", hidden_index=None, attention=("attn1",), cross_attention=("attn2",), mlp=("ffn",))
    return ModelSpec(
        name,
        class_names,
        (group,),
        temb_indicator("temb"),
        "the projected timestep embedding `temb` (TeaCache's e0)",
        notes=doc,
        **kw,
    )


def dit_like(
    name: str,
    class_names: tuple[str, ...],
    doc: str,
    *,
    attr: str = "transformer_blocks",
    attention: tuple[str, ...] = ("attn1",),
    cross_attention: tuple[str, ...] = ("attn2",),
    mlp: tuple[str, ...] = ("ff",),
    temb: str = "temb",
    encoder_arg: str | None = "encoder_hidden_states",
    hidden_arg: str = "hidden_states",
    indicator: IndicatorFn | None = None,
    indicator_doc: str | None = None,
    **kw: Any,
) -> ModelSpec:
    """DiT / PixArt-style model: one block list returning the hidden tensor, text (if any) by cross-attention;
    TeaCache's indicator is the timestep embedding the blocks get as `temb` unless `indicator` is given."""
    group = BlockGroup(
        attr,
        hidden_index=None,
        attention=attention,
        cross_attention=cross_attention,
        mlp=mlp,
        hidden_arg=hidden_arg,
        encoder_arg=encoder_arg,
    )
    doc_of_indicator = indicator_doc or f"the timestep embedding `{temb}`"
    return ModelSpec(name, class_names, (group,), indicator or temb_indicator(temb), doc_of_indicator, notes=doc, **kw)


def double_single(
    name: str,
    class_names: tuple[str, ...],
    doc: str,
    *,
    hidden_index: int,
    encoder_index: int,
    attention: tuple[str, ...] = ("attn",),
    mlp: tuple[str, ...] = ("ff", "ff_context"),
    single: BlockGroup | None = None,
    indicator: IndicatorFn | None = None,
    indicator_doc: str = "transformer_blocks[0].norm1(hidden_states, emb=temb): the modulated image input",
    **kw: Any,
) -> ModelSpec:
    """Flux-style model: dual-stream `transformer_blocks` (joint attention `attn`, MLPs on both streams) returning
    (hidden, encoder) at the given indices, then (optionally) single-stream blocks that keep the two streams apart."""
    groups = (
        BlockGroup(
            "transformer_blocks", hidden_index=hidden_index, encoder_index=encoder_index, attention=attention, mlp=mlp
        ),
    )
    if single is not None:
        groups += (single,)
    return ModelSpec(name, class_names, groups, indicator or adanorm_indicator("norm1"), indicator_doc, notes=doc, **kw)
