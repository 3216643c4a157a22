"""Issue 13: which computed steps make a TaylorSeer forecast good on a zoo model, measured on the zoo's CALIBRATION
prompts (never on the scored ones): every attention and MLP output forecast (dit_cache's `taylorseer` units, the same
units as diffusers' TaylorSeer with `_work_identifiers`) on the steps a schedule does not compute, order 1 or 2, PSNR
of the decoded output against the uncached one, mean over the jobs (the 8 calibration prompts, seed 1000).

    OMP_NUM_THREADS=1 python benchmarks/video_schedules.py --model shapes-video --order 2 \
        --steps 0,2,4,6,8,10,12,14,16,18,20,22,24,26,28 0,1,3,5,7,9,11,13,16,19,21,23,25,27,29 --out X.json

`--steps` lists explicit schedules (the script sets TaylorSeer's plan to them, with warmup=0: the same computation as
the library's `taylorseer:steps=(...)`, added later); `--exact 2 3` adds `taylorseer:exact=True` at those speedups.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import calibration_references, write_json  # noqa: E402

import dit_cache  # noqa: E402
from dit_cache.config import TaylorSeer  # noqa: E402
from dit_cache.eval.metrics import psnr  # noqa: E402
from dit_cache.policies import forecast  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="shapes-video")
    parser.add_argument("--order", type=int, nargs="+", default=[1])
    parser.add_argument("--steps", nargs="*", default=[], help="schedules: comma-separated computed steps")
    parser.add_argument("--exact", type=float, nargs="*", default=[], help="taylorseer:exact=True at these speedups")
    parser.add_argument("--jobs", type=int, default=8, help="calibration prompts (seed --seed)")
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    pipe, settings, jobs, generate, references = calibration_references(args.model, args.jobs, args.seed)
    plan = forecast.TaylorSeerPolicy.plan
    rows = []
    settings_list = [(o, [int(s) for s in steps.split(",")], None) for steps in args.steps for o in args.order]
    settings_list += [(o, None, x) for x in args.exact for o in args.order]
    for order, steps, speedup in settings_list:
        if steps is not None:  # this schedule instead of TaylorSeer's plan: (interval 0, the computed steps)
            forecast.TaylorSeerPolicy.plan = lambda self, n, s=frozenset(steps): (0, s)
            config = TaylorSeer(interval=1, order=order, warmup=0)
        else:
            forecast.TaylorSeerPolicy.plan = plan
            config = TaylorSeer(speedup=speedup, order=order, exact=True)
        started, scores, fractions, computed = time.perf_counter(), [], [], None
        try:
            for job, reference in zip(jobs, references):
                with dit_cache.cached(pipe, config):
                    output = generate(*job)
                    stats = dit_cache.stats(pipe)
                fractions.append(stats.compute_fraction)
                computed = sorted({r.step for r in stats.records if r.decision == "computed"})
                scores.append(psnr(reference, output))
        finally:
            forecast.TaylorSeerPolicy.plan = plan
        row = {"order": order, "speedup": speedup, "steps": computed, "computed": len(computed),
               "fraction": float(np.mean(fractions)), "psnr": float(np.mean(scores)), "psnr_per_job": scores,
               "seconds": time.perf_counter() - started}  # fmt: skip
        rows.append(row)
        print(f"order {order} {len(computed):2d} steps (fraction {row['fraction']:.3f}): PSNR {row['psnr']:.2f} dB  "
              f"{computed}", flush=True)  # fmt: skip
    if args.out:
        write_json(args.out, {"model": args.model, "jobs": jobs, "rows": rows, "command": " ".join(sys.argv)})


if __name__ == "__main__":
    main()
