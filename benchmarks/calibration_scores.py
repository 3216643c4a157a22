"""Score policy settings on a zoo model's CALIBRATION prompts only (the scored prompts and seeds of `dit-cache eval`
are never run here): the mean PSNR of the decoded output against the uncached one over the first `--jobs`
calibration prompts at `--seed`, and the compute fraction. For choosing a setting's knobs out of sample, as
benchmarks/video_schedule_search.py chooses a schedule:

    OMP_NUM_THREADS=1 python benchmarks/calibration_scores.py --model shapes-video \
        --policies "taylorseer:exact=True,order=1,speedup=3" "taylorseer:exact=True,order=1,speedup=3,coordinate=sigma" \
        --out benchmarks/results/video_forecast_coordinate.json
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
from dit_cache.config import config_class, parse_policy_spec  # noqa: E402
from dit_cache.eval import zoo  # noqa: E402
from dit_cache.eval.metrics import psnr  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="shapes-video")
    parser.add_argument("--policies", nargs="+", required=True, help="NAME[:key=value,...] specs")
    parser.add_argument("--jobs", type=int, default=8, help="calibration prompts (seed --seed)")
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    pipe, _, jobs, generate, references = calibration_references(args.model, args.jobs, args.seed)
    profile = Path(zoo.path(args.model)) / "dit_cache_profile.json"
    rows = []
    for spec in args.policies:
        name, options = parse_policy_spec(spec)
        if "profile" in config_class(name).__dataclass_fields__:
            options.setdefault("profile", str(profile))  # the shipped profile (calibrated on these prompts)
        started, scores, fractions = time.perf_counter(), [], []
        for job, reference in zip(jobs, references):
            with dit_cache.cached(pipe, name, **options):
                output = generate(*job)
                fractions.append(dit_cache.stats(pipe).compute_fraction)
            scores.append(psnr(reference, output))
        rows.append({"policy": spec, "psnr": float(np.mean(scores)), "psnr_per_job": scores,
                     "compute_fraction": float(np.mean(fractions)), "seconds": time.perf_counter() - started})  # fmt: skip
        print(f"{spec}: {rows[-1]['psnr']:.2f} dB at fraction {rows[-1]['compute_fraction']:.3f}", flush=True)
    if args.out:
        write_json(args.out, {"model": args.model, "jobs": jobs, "rows": rows, "command": " ".join(sys.argv)})


if __name__ == "__main__":
    main()
