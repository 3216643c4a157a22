"""Issue 13: search the steps TaylorSeer computes, for a given count, on a zoo model's CALIBRATION prompts only (the
scored prompts and seeds of `dit-cache eval` are never run here). Start from `taylorseer:exact=True`'s steps; then
local moves (one computed step shifted by one step, step 0 kept), first improvement taken (the search of
`dit-cache calibrate --search-schedules`, dit_cache/calibration/schedule_search.py, which scores final latents), scored
here by the mean PSNR of the decoded output against the uncached one over the jobs (the 8 calibration prompts, seed 1000), until no move
improves or the time budget runs out. The schedule found is written to JSON with the `--policies` spec to evaluate it:

    OMP_NUM_THREADS=1 python benchmarks/video_schedule_search.py --model shapes-video --count 10 --order 1 \
        --out benchmarks/results/video_schedule_search.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import calibration_references, write_json  # noqa: E402

import dit_cache  # noqa: E402
from dit_cache.calibration.schedule_search import local_search  # noqa: E402
from dit_cache.config import TaylorSeer  # noqa: E402
from dit_cache.eval.metrics import psnr  # noqa: E402
from dit_cache.policies.forecast import exact_steps  # noqa: E402


def print_step(result: dict, trail: list) -> None:
    trail.append({"steps": result["steps"], "psnr": result["score"], "seconds": result["seconds"]})
    print(f"  {tuple(result['steps'])}: {result['score']:.2f} dB ({result['tried']} tried)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="shapes-video")
    parser.add_argument("--count", type=int, default=10, help="computed steps")
    parser.add_argument("--order", type=int, default=1)
    parser.add_argument("--coordinate", default="step", choices=("step", "sigma"), help="forecast axis")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up of the exact=True start")
    parser.add_argument("--start", default=None, help="comma-separated start schedule (default: exact=True's)")
    parser.add_argument("--jobs", type=int, default=8, help="calibration prompts (seed --seed)")
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--budget", type=float, default=900, help="seconds of search")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    pipe, settings, jobs, generate, references = calibration_references(args.model, args.jobs, args.seed)
    num_steps = settings["num_inference_steps"]

    def score(steps: tuple[int, ...]) -> float:
        scores = []
        for job, reference in zip(jobs, references):
            with dit_cache.cached(
                pipe, TaylorSeer(steps=steps, num_steps=num_steps, order=args.order, coordinate=args.coordinate)
            ):
                output = generate(*job)
                computed = sorted({r.step for r in dit_cache.stats(pipe).records if r.decision == "computed"})
            if tuple(computed) != steps:
                raise RuntimeError(f"asked for steps {steps}, computed {computed}")
            scores.append(psnr(reference, output))
        return float(np.mean(scores))

    if args.start:
        start = tuple(int(s) for s in args.start.split(","))
    else:
        start = tuple(sorted(exact_steps(num_steps, args.warmup, args.count)))
    trail = []
    result = local_search(score, start, num_steps, args.budget, on_improve=lambda r: print_step(r, trail))
    best, best_psnr, tried, converged = tuple(result["steps"]), result["score"], result["tried"], result["converged"]
    spec = f"taylorseer:steps=({','.join(map(str, best))}),num_steps={num_steps},order={args.order}"
    spec += f",coordinate={args.coordinate}" if args.coordinate != "step" else ""
    print(f"best {best}: {best_psnr:.2f} dB, {tried} schedules, converged: {converged}\n{spec}", flush=True)
    if args.out:
        write_json(
            args.out,
            {
                "model": args.model, "jobs": jobs, "count": args.count, "order": args.order, "coordinate": args.coordinate,
                "start": list(start), "steps": list(best),
                "psnr": best_psnr, "converged": converged, "schedules_tried": tried, "trail": trail, "spec": spec,
                "seconds": result["seconds"], "command": " ".join(sys.argv),
            },
        )  # fmt: skip


if __name__ == "__main__":
    main()
