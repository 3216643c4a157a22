"""What finding the calling pipeline costs per transformer call (dit_cache.state.calling_pipeline: the stack walk
that lets pipelines sharing a patched transformer, e.g. made by `from_pipe`, each locate steps on their own
scheduler), measured from inside a real tiny pipeline call, plain and under model CPU offload (more frames).

    python benchmarks/locate_cost.py [--repeats 2000]

Prints the mean time of one walk in microseconds, with the cost of one `sys._getframe` for scale.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import table  # noqa: E402

import dit_cache  # noqa: E402
from dit_cache.state import calling_pipeline  # noqa: E402
from dit_cache.testing import run, tiny_pipeline  # noqa: E402


def measure(offload: bool, repeats: int) -> dict:
    pipe = tiny_pipeline("flux")
    if offload:
        pipe.enable_model_cpu_offload(device="cpu")
    dit_cache.apply(pipe, "teacache")
    result = {}

    def pre(module, args, kwargs):
        if result:
            return
        assert calling_pipeline(module) is pipe
        start = time.perf_counter()
        for _ in range(repeats):
            calling_pipeline(module)
        walk = (time.perf_counter() - start) / repeats
        start = time.perf_counter()
        for _ in range(repeats):
            sys._getframe(1)
        frame = (time.perf_counter() - start) / repeats
        result.update(
            setup="model offload" if offload else "plain", walk_us=f"{walk * 1e6:.1f}", getframe_us=f"{frame * 1e6:.2f}"
        )

    handle = pipe.transformer.register_forward_pre_hook(pre, with_kwargs=True)
    run(pipe, "flux", steps=2)
    handle.remove()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2000)
    args = parser.parse_args()
    rows = [measure(offload, args.repeats) for offload in (False, True)]
    print(table(rows, ["setup", "walk_us", "getframe_us"]))


if __name__ == "__main__":
    main()
