"""OmniGen (OmniGenTransformer2DModel): a Phi-3-like decoder: condition tokens, a time token and the image tokens in
one sequence through `layers` of OmniGenBlock(hidden_states, attention_mask, image_rotary_emb) returning it;
attention `self_attn`, MLP `mlp`. The blocks get no timestep embedding (the time token carries it), so TeaCache's
indicator is the first block's input. The pipeline passes the scheduler's timestep and batches CFG conditional
first ([cond, uncond] or [cond, uncond, image-cond])."""

from .spec import dit_like, temb_indicator

SPEC = dit_like("omnigen", ("OmniGenTransformer2DModel",), "decoder blocks over the joint sequence", attr="layers",
                attention=("self_attn",), cross_attention=(), mlp=("mlp",), encoder_arg=None,
                indicator=temb_indicator("hidden_states"),
                indicator_doc="the first block's input sequence (with its time token)",
                cfg_batch_order=("cond", "uncond"))  # fmt: skip
