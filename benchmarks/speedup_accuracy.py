"""Issue 3's speedup-accuracy check: on the calibration prompts, the compute fraction a threshold policy reaches with
`speedup=X` against the asked 1/X, for X in 1.5, 2, 3.

    python benchmarks/speedup_accuracy.py --model zoo:shapes-image [--prompts N] [--steps S] [--out runs/speedup.json]

Calibrates the model on its prompts (seed 0 each), then, per policy and target, generates every calibration prompt
with `apply(pipe, policy, speedup=X, profile=...)` and averages `stats().compute_fraction`. Pass: within 0.05.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from common import machine, table, write_json  # noqa: E402

import dit_cache  # noqa: E402
from dit_cache.calibration.runner import CalibrationSettings, calibrate  # noqa: E402
from dit_cache.cli import load_pipeline, model_settings  # noqa: E402

POLICIES = ("teacache", "magcache", "fbcache", "bwcache", "mix", "lemica")  # the threshold policies and LeMiCa
TARGETS = (1.5, 2.0, 3.0)


def model_and_prompts(model: str, count: int, steps: int | None, block_traces: bool = False):
    default_steps, call, prompts = model_settings(model, steps, {})
    pipe = load_pipeline(model, None)
    return pipe, prompts[:count], CalibrationSettings(steps=default_steps, call_kwargs=call, block_traces=block_traces)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="zoo:shapes-image")
    parser.add_argument("--prompts", type=int, default=8, help="number of the model's prompts to calibrate on")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--out", default="runs/speedup_accuracy.json")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: fastest for the tiny zoo models)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe, prompts, settings = model_and_prompts(args.model, args.prompts, args.steps, block_traces=True)
    started = time.perf_counter()
    profile = calibrate(pipe, prompts, settings, progress=False)
    print(f"calibrated {len(prompts)} prompts x {settings.steps} steps in {time.perf_counter() - started:.1f}s")
    rows = []
    for policy in POLICIES:
        for target in TARGETS:
            fractions = []
            try:
                dit_cache.apply(pipe, policy, speedup=target, profile=profile)
                for prompt in prompts:
                    pipe(**settings.pipeline_kwargs(prompt, settings.seeds[0]))
                    fractions.append(dit_cache.stats(pipe).compute_fraction)
                fraction = sum(fractions) / len(fractions)
                error = abs(fraction - 1 / target)
                rows.append({"policy": policy, "speedup": target, "asked_fraction": 1 / target,
                             "achieved_fraction": fraction, "error": error,
                             "within_0.05": "yes" if error <= 0.05 else "NO"})  # fmt: skip
            except ValueError as e:
                rows.append({"policy": policy, "speedup": target, "asked_fraction": 1 / target, "within_0.05": str(e)})
            finally:
                if dit_cache.is_applied(pipe):
                    dit_cache.remove(pipe)
            print(table([rows[-1]], list(rows[-1])), flush=True)
    print(f"\n{args.model}, {len(prompts)} calibration prompts, {settings.steps} steps; {machine()}\n")
    print(table(rows, ["policy", "speedup", "asked_fraction", "achieved_fraction", "error", "within_0.05"]))
    write_json(args.out, {"model": args.model, "steps": settings.steps, "prompts": len(prompts), "rows": rows})


if __name__ == "__main__":
    main()
