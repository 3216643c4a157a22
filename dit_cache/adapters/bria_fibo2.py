"""Bria FIBO 2 (BriaFibo2Transformer2DModel): Z-Image-like `layers` of blocks (x, attn_mask, freqs_cis, ...) over
gist + image (+ edited image) tokens, returning the sequence; attention `attention`, MLP `feed_forward`, and in the
injection blocks a `cross_attention` to their own text-encoder bundle. The `noise_refiner` blocks before them run on
the image tokens alone (another layout) and always run. The pipeline passes t / 1000 and runs CFG as a second call
without a cache_context."""

from .spec import dit_like, temb_indicator

SPEC = dit_like("bria_fibo2", ("BriaFibo2Transformer2DModel",), "joint-sequence blocks, noise refiner uncached",
                attr="layers", attention=("attention",), cross_attention=("cross_attention",), mlp=("feed_forward",),
                hidden_arg="x", indicator=temb_indicator("adaln_noisy"),
                indicator_doc="the noisy tokens' timestep embedding `adaln_noisy`", timestep_scale=1000.0)  # fmt: skip
