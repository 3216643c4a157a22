"""Kandinsky 5 (Kandinsky5Transformer3DModel): text tokens through `text_transformer_blocks`, then the visual tokens
through `visual_transformer_blocks(visual_embed, text_embed, time_embed, ...)`, which return the visual tokens
(self-attention, cross-attention to the text, MLP). Only the visual blocks are cached."""

from .spec import dit_like

SPEC = dit_like("kandinsky5", ("Kandinsky5Transformer3DModel",), "visual blocks cached, text blocks uncached",
                attr="visual_transformer_blocks", attention=("self_attention",), cross_attention=("cross_attention",),
                mlp=("feed_forward",), hidden_arg="visual_embed", encoder_arg="text_embed", temb="time_embed",
                indicator_doc="the time embedding `time_embed`")  # fmt: skip
