"""Lumina 2 (Lumina2Transformer2DModel): caption and image tokens, each refined apart, then one sequence through
`layers` of Lumina2TransformerBlock(hidden_states, attention_mask, image_rotary_emb, temb) returning it; attention
`attn`, MLP `feed_forward`. The pipeline passes the timestep reversed, 1 - t / num_train_timesteps (1000 in its
scheduler's config), and runs CFG as two calls per step without a cache_context (the second is branch "batch:2")."""

from .spec import dit_like


def _modulated(block, call):
    return block.norm1(call.hidden, call.get("temb"))[0]


SPEC = dit_like("lumina2", ("Lumina2Transformer2DModel",), "joint-sequence blocks", attr="layers",
                attention=("attn",), cross_attention=(), mlp=("feed_forward",), encoder_arg=None, indicator=_modulated,
                indicator_doc="layers[0].norm1(hidden_states, temb)[0]: the modulated input",
                timestep_scale=-1000.0, timestep_offset=1000.0)  # fmt: skip
