"""The kernel ops, one module each under `_ops/`; `OPS` lists them and the namespaces `dit_cache.kernels`,
`dit_cache.kernels.twins` and `dit_cache.kernels._triton` are built from it. The public functions are importable from
here too, as before the ops had a module each.

An op module (read `_ops/rel_l1_parts.py` first: the shortest) holds, for its op `NAME`:

* `twin`: the PyTorch twin, the fallback and the tests' oracle (`twins.<NAME>`);
* `check`: the argument checks, run on both backends, in the fake implementation and in the launcher;
* its `@triton_kernel` kernels and `launch`, the launcher: the twin's signature plus keyword-only tuning knobs
  (`_triton.<NAME>`);
* its custom op(s), made by `register_op`;
* `<NAME>`, the public function (`dit_cache.kernels.<NAME>`).

Adding an op: write its module after that pattern and list it here.
"""

from types import ModuleType

from ._ops import (
    apply_residual,
    magnitude_ratio,
    rel_l1_parts,
    store_residual,
    taylor_forecast,
    taylor_update,
    token_scatter_gate,
)

OPS: tuple[ModuleType, ...] = (
    rel_l1_parts,
    store_residual,
    apply_residual,
    magnitude_ratio,
    taylor_update,
    taylor_forecast,
    token_scatter_gate,
)

for _module in OPS:
    globals()[_module.NAME] = getattr(_module, _module.NAME)

__all__ = sorted(module.NAME for module in OPS)
