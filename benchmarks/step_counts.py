"""Issue 10's step-count check: one profile, calibrated at the model's step count, drives every policy that takes
`speedup=` at other step counts; each cell is the compute fraction reached on a calibration prompt, or the refusal.

    python benchmarks/step_counts.py --model zoo:shapes-image [--prompts 2] [--policies lemica ...] [--out runs/step_counts.json]

Every target is planned within 0.05 of 1 / speedup or refused (saying what is reachable). Schedules (lemica,
taylorseer, toca's plan) run as planned; threshold policies plan on the profile's traces resampled to the step count,
and a run may drift from that plan, the more the further its step count is from the calibrated one ("OFF": more than
0.05 away; the evaluation flags such rows with `off_target`).
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
from speedup_accuracy import model_and_prompts  # noqa: E402

import dit_cache  # noqa: E402
from dit_cache.calibration.runner import calibrate  # noqa: E402
from dit_cache.schedulers.targets import SpeedupError, within  # noqa: E402

POLICIES = ("lemica", "teacache", "magcache", "fbcache", "bwcache", "mix", "taylorseer", "toca")
PROFILED = {"lemica", "teacache", "magcache", "fbcache", "bwcache", "mix"}
STEPS = (8, 10, 20, 30, 50)
TARGETS = (1.5, 2.0, 3.0, 4.0)


def cell(pipe, settings, prompts, policy, steps, target, profile) -> dict:
    options = {"profile": profile} if policy in PROFILED else {}
    row = {"policy": policy, "steps": steps, "speedup": target}
    try:
        with dit_cache.cached(pipe, policy, speedup=target, **options):
            fractions = []
            for prompt in prompts:
                kwargs = settings.pipeline_kwargs(prompt, settings.seeds[0])
                pipe(**{**kwargs, "num_inference_steps": steps})
                fractions.append(dit_cache.stats(pipe).compute_fraction)
        fraction = sum(fractions) / len(fractions)
        row.update(fraction=fraction, result="ok" if within(fraction, target) else "OFF TARGET")
    except SpeedupError as e:
        row.update(result="refused", message=str(e))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="zoo:shapes-image")
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--out", default="runs/step_counts.json")
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    args = parser.parse_args()
    torch.set_num_threads(1)
    pipe, prompts, settings = model_and_prompts(args.model, args.prompts, None, block_traces=True)
    started = time.perf_counter()
    profile = calibrate(pipe, prompts, settings, progress=False)
    print(f"calibrated {len(prompts)} prompts x {settings.steps} steps in {time.perf_counter() - started:.1f}s")
    rows = []
    for policy in args.policies:
        for target in TARGETS:
            for steps in STEPS:
                rows.append(cell(pipe, settings, prompts, policy, steps, target, profile))
        grid = [
            {"speedup": t, **{f"{s} steps": _short(r) for s in STEPS for r in rows
                              if r["policy"] == policy and r["speedup"] == t and r["steps"] == s}}
            for t in TARGETS
        ]  # fmt: skip
        print(f"\n{policy} (profile calibrated at {settings.steps} steps)")
        print(table(grid, ["speedup", *(f"{s} steps" for s in STEPS)]), flush=True)
    print(f"\n{args.model}, {len(prompts)} calibration prompts; {machine()}")
    write_json(args.out, {"model": args.model, "calibrated_steps": settings.steps, "rows": rows})


def _short(row: dict) -> str:
    if row["result"] == "refused":
        return "refused"
    return f"{row['fraction']:.3f}" + ("" if row["result"] == "ok" else " OFF")


if __name__ == "__main__":
    main()
