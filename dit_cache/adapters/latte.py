"""Latte (LatteTransformer3DModel): spatial `transformer_blocks` (tokens of one frame) interleaved with
`temporal_transformer_blocks` (tokens of one position across frames). Both are BasicTransformerBlocks, but the two
layouts differ, so the cached segment is the spatial blocks; the temporal blocks between them always run, and the
cached residual from the first spatial block's input to the last one's output carries their effect."""

from .spec import dit_like

SPEC = dit_like("latte", ("LatteTransformer3DModel",), "spatial blocks cached; temporal blocks always run",
                temb="timestep")  # fmt: skip
