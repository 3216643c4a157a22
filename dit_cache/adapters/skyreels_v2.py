"""SkyReels-V2 (SkyReelsV2Transformer3DModel): Wan's block layout; with diffusion forcing the blocks get a per-frame
`temb`, which the indicator reads whole."""

from .spec import wan_like

SPEC = wan_like("skyreels_v2", ("SkyReelsV2Transformer3DModel",), "Wan-like blocks")
