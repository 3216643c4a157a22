"""ChronoEdit (ChronoEditTransformer3DModel): Wan's block layout (image-conditioned through `attn2`'s added K/V)."""

from .spec import wan_like

SPEC = wan_like("chronoedit", ("ChronoEditTransformer3DModel",), "Wan-like blocks")
