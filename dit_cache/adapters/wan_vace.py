"""Wan VACE (WanVACETransformer3DModel): Wan's `blocks`; the control hints of `vace_blocks` are added to the hidden
states between blocks, outside them: a reused step keeps the hints of the cached residual and adds the last block's
fresh hint, and `vace_blocks` always run (they are not cached)."""

from .spec import wan_like

SPEC = wan_like("wan_vace", ("WanVACETransformer3DModel",), "Wan blocks; vace_blocks always computed")
