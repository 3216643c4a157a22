"""PixArt-alpha / sigma (PixArtTransformer2DModel): BasicTransformerBlocks returning the hidden tensor, with
self-attention `attn1`, cross-attention `attn2` and MLP `ff`; they receive the adaLN-single timestep embedding as
`timestep`. CFG batched as [uncond, cond], no cache_context."""

from .spec import dit_like

SPEC = dit_like("pixart", ("PixArtTransformer2DModel",), "DiT blocks with cross-attention", temb="timestep",
                indicator_doc="the adaLN-single timestep embedding passed to every block as `timestep`")  # fmt: skip
