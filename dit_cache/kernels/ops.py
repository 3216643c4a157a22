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

Adding an op: write its module after that pattern; `OPS` finds every module of `_ops/`.
"""

import importlib
import pkgutil
from types import ModuleType

from . import _ops

# Every module of `_ops/` is an op: found here, so adding one touches that module only. Sorted by name: the
# registration order of the custom ops does not matter, a stable one keeps `OPS` reproducible.
OPS: tuple[ModuleType, ...] = tuple(
    importlib.import_module(f"{_ops.__name__}.{info.name}")
    for info in sorted(pkgutil.iter_modules(_ops.__path__), key=lambda info: info.name)
    if not info.name.startswith("_")
)

for _module in OPS:
    globals()[_module.NAME] = getattr(_module, _module.NAME)

__all__ = sorted(module.NAME for module in OPS)
