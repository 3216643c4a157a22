"""Z-Image (ZImageTransformer2DModel): image and caption tokens, each refined apart, then one sequence through
`layers` of ZImageTransformerBlock(x, attn_mask, freqs_cis, adaln_input, ...) returning it; attention `attention`,
MLP `feed_forward`. The pipeline passes the timestep reversed, (1000 - t) / 1000, as the positional `t`, and batches
CFG conditional first."""

from .spec import dit_like


def _adaln(block, call):
    noisy = call.get("adaln_noisy")  # omni mode: per-token modulation, the noisy tokens' embedding
    return call.get("adaln_input") if noisy is None else noisy


SPEC = dit_like("z_image", ("ZImageTransformer2DModel",), "joint-sequence blocks", attr="layers",
                attention=("attention",), cross_attention=(), mlp=("feed_forward",), hidden_arg="x", encoder_arg=None,
                indicator=_adaln, indicator_doc="the timestep embedding `adaln_input`", timestep_arg="t",
                timestep_scale=-1000.0, timestep_offset=1000.0, cfg_batch_order=("cond", "uncond"))  # fmt: skip
