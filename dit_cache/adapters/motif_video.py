"""Motif-Video (MotifVideoTransformer3DModel): HunyuanVideo's layout, dual-stream `transformer_blocks` then
`single_transformer_blocks`, both returning (hidden, encoder)."""

from .spec import double_single, single_stream_blocks

SPEC = double_single("motif_video", ("MotifVideoTransformer3DModel",), "HunyuanVideo-like", hidden_index=0, encoder_index=1,
                     single=single_stream_blocks(hidden_index=0, encoder_index=1))  # fmt: skip
