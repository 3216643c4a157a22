"""Wan-Animate (WanAnimateTransformer3DModel): Wan's `blocks`; the face adapter's output is added to the hidden
states between blocks, outside them (carried by a reused step's cached residual, like VACE's hints), and the
motion/face encoders run before the blocks (not cached)."""

from .spec import wan_like

SPEC = wan_like("wan_animate", ("WanAnimateTransformer3DModel",), "Wan blocks; face adapter between blocks")
