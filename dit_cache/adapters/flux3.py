"""FLUX.3 (Flux3Transformer2DModel): per-mode blocks (`txt_mode_blocks`, `mode_blocks[mode]`) that each attend within
one token mode, then `single_transformer_blocks` over text + image (+ reference) tokens that take the two streams
apart and return (encoder, hidden); attention `attn` and MLP `ff` run in parallel on the joint sequence. The cached
segment is the single blocks (most of the layers); the per-mode blocks always run. The transformer takes the
timestep in [0, 1] (t / 1000 of a flow-matching scheduler)."""

from .spec import BlockGroup, ModelSpec
from .tokens import IMG_IDS


def _modulated(block, call):
    shift, scale, _ = call.get("temb_mod").chunk(3, dim=-1)
    return (1 + scale) * block.norm(call.hidden) + shift


SPEC = ModelSpec(
    name="flux3",
    class_names=("Flux3Transformer2DModel",),
    groups=(BlockGroup("single_transformer_blocks", hidden_index=1, encoder_index=0, mlp=("ff",)),),
    indicator=_modulated,
    indicator_doc="single_transformer_blocks[0]'s image input, normalised and modulated by `temb_mod`",
    timestep_scale=1000.0,
    notes="single blocks only: the per-mode blocks run uncached",
    tokens=IMG_IDS,
)
