"""HunyuanVideo (HunyuanVideoTransformer3DModel): double-stream `transformer_blocks` then single-stream
`single_transformer_blocks`, both returning (hidden, encoder)."""

from .spec import double_single, single_stream_blocks

SPEC = double_single("hunyuan_video", ("HunyuanVideoTransformer3DModel",), "dual-stream then single-stream blocks",
                     hidden_index=0, encoder_index=1, single=single_stream_blocks(hidden_index=0, encoder_index=1))  # fmt: skip
