"""Qwen-Image 2.1 (QwenImage21Transformer2DModel): text, condition-image and target tokens in one sequence through
`transformer_blocks` returning it; attention `attn`, MLP `img_mlp`; the blocks get one shared `modulation` computed
from the timestep (and a t = 0 row for the text and condition tokens). The pipeline passes t / 1000 and names its
CFG calls "cond" / "uncond"."""

from .spec import dit_like, temb_indicator
from .tokens import IMG_SHAPES

SPEC = dit_like("qwenimage21", ("QwenImage21Transformer2DModel",), "single-stream joint-sequence blocks",
                attention=("attn",), cross_attention=(), mlp=("img_mlp",), encoder_arg=None,
                indicator=temb_indicator("modulation"), indicator_doc="the shared timestep `modulation`",
                timestep_scale=1000.0, tokens=IMG_SHAPES)  # fmt: skip
