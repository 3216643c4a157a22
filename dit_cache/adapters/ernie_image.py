"""ERNIE-Image (ErnieImageTransformer2DModel): one sequence of image and text tokens through `layers` of
ErnieImageSharedAdaLNBlock(x, rotary_pos_emb, temb, ...) returning it; attention `self_attention`, MLP `mlp`. The
blocks share one adaLN modulation, passed as the six tensors `temb`; the indicator is its attention scale."""

from .spec import dit_like


def _scale_msa(block, call):
    return call.get("temb")[1]


SPEC = dit_like("ernie_image", ("ErnieImageTransformer2DModel",), "joint-sequence blocks", attr="layers",
                attention=("self_attention",), cross_attention=(), mlp=("mlp",), hidden_arg="x", encoder_arg=None,
                indicator=_scale_msa, indicator_doc="the shared modulation's scale_msa (temb[1])")  # fmt: skip
