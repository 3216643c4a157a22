"""PyTorch twins of the kernel ops: the fallback on machines without Triton/CUDA and the oracle of the tests.

`twins.<name>` is the `twin` of the op module `_ops/<name>.py`, with the same signature and semantics as its Triton
launcher (`_triton.<name>`). Shapes use `(..., C)`: any number of leading dims (batch, tokens) and channels last.
The ops call their twin through this namespace, at call time.
"""

from .ops import OPS

for _module in OPS:
    globals()[_module.NAME] = _module.twin

__all__ = [module.NAME for module in OPS]
