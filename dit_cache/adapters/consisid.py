"""ConsisID (ConsisIDTransformer3DModel): CogVideoX's blocks, returning (hidden, encoder); the identity features of
`perceiver_cross_attention` are added to the hidden states between blocks, outside them, so a reused step carries
them in the cached residual. The pipeline batches CFG as [uncond, cond]."""

from dataclasses import replace

from .cogvideox import SPEC as COGVIDEOX

SPEC = replace(COGVIDEOX, name="consisid", class_names=("ConsisIDTransformer3DModel",),
               notes="CogVideoX blocks; the face cross-attention between them is carried by the cached residual")  # fmt: skip
