"""What a policy costs per transformer call, timed call by call inside one cached pipeline run: a finer and less
noisy view than the wall speedup of benchmarks/step_policies.py, whose runs a shared machine slows by up to 30%.

    python benchmarks/call_times.py [--models wan flux] [--policies fora magcache cfg+teacache] [--threads 1]

For each policy on the mid-size models of step_policies.py (20 steps, CFG), one uncached and one cached pipeline
call, each after a warm-up, with every transformer call timed. Columns:
  computed_ms   median time of a call that computed (cached run)
  uncached_ms   median time of a call of the uncached run
  reused_ms     median time of a call whose work was all reused (or rebuilt, for CFG reuse)
  reuse_cost    reused_ms / computed_ms: both from the same run, so a slow machine scales both alike
  bound         the efficiency (speedup x compute fraction) these call costs allow when computed calls cost what
                uncached ones do: 1 / (1 + reuse_cost x reused calls / computed calls) at the run's fractions
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import machine, table, write_json  # noqa: E402
from step_policies import MODELS  # noqa: E402

import dit_cache  # noqa: E402
from dit_cache.calibration.runner import CalibrationSettings, calibrate  # noqa: E402

POLICIES = {
    "fora": lambda steps, profile: dit_cache.FORA(interval=2),
    "magcache": lambda steps, profile: dit_cache.MagCache(speedup=2.0, profile=profile),
    "teacache": lambda steps, profile: dit_cache.TeaCache(speedup=2.0, profile=profile),
    "teacache+forecast": lambda steps, profile: dit_cache.TeaCache(speedup=2.0, profile=profile, forecast=1),
    "schedule": lambda steps, profile: dit_cache.Schedule(steps=tuple(range(0, steps, 2))),
    "cfg+teacache": lambda steps, profile: dit_cache.CFGCache(
        interval=2, warmup=0.0, step=dit_cache.TeaCache(speedup=1.5, profile=profile)
    ),
}


class CallClock:
    """Times every call of a module (forward pre/post hooks, outside any hook dit_cache places on its forward)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.times: list[float] = []
        self._start = 0.0
        self._handles = [
            module.register_forward_pre_hook(self._pre),
            module.register_forward_hook(self._post),
        ]

    def _pre(self, *_) -> None:
        self._start = time.perf_counter()

    def _post(self, *_) -> None:
        self.times.append(time.perf_counter() - self._start)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def run_model(name: str, steps: int, policies: list[str]) -> list[dict]:
    pipe, call = MODELS[name]()
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(call, num_inference_steps=steps, output_type="latent")

    def generate() -> None:
        pipe(**kwargs, generator=torch.Generator().manual_seed(0))

    profile = calibrate(pipe, [call], CalibrationSettings(steps=steps), progress=False)
    clock = CallClock(pipe.transformer)
    rows = []
    for policy in policies:
        generate()  # warm-up
        clock.times.clear()
        generate()
        uncached = list(clock.times)
        with dit_cache.cached(pipe, POLICIES[policy](steps, profile)):
            generate()  # warm-up (speedup targets are tuned on the first call)
            clock.times.clear()
            generate()
            stats = dit_cache.stats(pipe)
            cached = list(clock.times)
        if len(stats.records) != len(cached):
            raise RuntimeError(f"{len(cached)} transformer calls but {len(stats.records)} stats records")
        computed = [t for t, r in zip(cached, stats.records) if r.computed_units > 0]
        reused = [t for t, r in zip(cached, stats.records) if r.computed_units == 0]
        row = {
            "model": name,
            "policy": policy,
            "compute_fraction": stats.compute_fraction,
            "uncached_ms": 1000 * statistics.median(uncached),
            "computed_ms": 1000 * statistics.median(computed),
            "reused_ms": 1000 * statistics.median(reused) if reused else None,
        }
        row["reuse_cost"] = row["reused_ms"] / row["computed_ms"] if reused else 0.0
        row["bound"] = 1.0 / (1.0 + row["reuse_cost"] * len(reused) / len(computed))
        row["calls_ms"] = {"uncached": [1000 * t for t in uncached], "cached": [1000 * t for t in cached]}
        rows.append(row)
        print(table([row], COLUMNS), flush=True)
    clock.remove()
    return rows


COLUMNS = ["model", "policy", "compute_fraction", "uncached_ms", "computed_ms", "reused_ms", "reuse_cost", "bound"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--policies", nargs="+", default=["fora", "magcache", "cfg+teacache"], choices=list(POLICIES))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", default="runs/call_times.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        rows += run_model(name, args.steps, args.policies)
    print(f"\n{machine()}; {args.steps} steps\n")
    print(table(rows, COLUMNS))
    write_json(args.out, {"machine": machine(), "steps": args.steps, "rows": rows})


if __name__ == "__main__":
    main()
