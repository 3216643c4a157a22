"""Issue 3's calibration cost: wall time of `calibrate` over plain uncached generation of the same prompts and
settings, without LeMiCa's replayed edge weights (the default: recorder only, proxy edges) and with them.

    python benchmarks/calibration_cost.py --model zoo:shapes-image [--prompts N] [--lemica-prompts M] [--span L]

Target: at most 1.15x without global edges. Generation is timed with output_type="latent", as calibration runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import machine, table, write_json  # noqa: E402
from speedup_accuracy import model_and_prompts  # noqa: E402

from dit_cache.calibration.runner import calibrate  # noqa: E402
from dit_cache.calibration.schedule_search import ScheduleSearch  # noqa: E402


def interleaved(first, second, repeats: int) -> tuple[float, float]:
    """Median wall times of two jobs, run alternately so that both see the same machine load."""
    a, b = [], []
    for _ in range(repeats):
        for fn, times in ((first, a), (second, b)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(a), statistics.median(b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="zoo:shapes-image")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--lemica-prompts", type=int, default=1, help="prompts for the (slow) global-edge run")
    parser.add_argument("--span", type=int, default=8, help="LeMiCa's longest cached segment")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--candidates", default="default", help="auto's candidates for the candidate-run row")
    parser.add_argument("--candidate-prompts", type=int, default=1, help="jobs the candidates run on")
    parser.add_argument("--search", type=float, default=3.0, help="speedup of the schedule-search row (0: no row)")
    parser.add_argument("--search-budget", type=float, default=900, help="seconds the search row may take")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--out", default="runs/calibration_cost.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe, prompts, settings = model_and_prompts(args.model, args.prompts, None)
    settings = dataclasses.replace(settings, lemica_max_span=args.span)

    def generate(subset):
        for p in subset:
            pipe(**settings.pipeline_kwargs(p, settings.seeds[0]))

    generate(prompts[:1])  # warm-up
    rows = []
    variants = [
        ("recorder (proxy LeMiCa edges)", settings, "<= 1.15x"),
        ("recorder + per-block traces", dataclasses.replace(settings, block_traces=True), "reported"),
    ]
    for label, variant, target in variants:
        plain, recorded = interleaved(
            lambda: generate(prompts), lambda v=variant: calibrate(pipe, prompts, v, progress=False), args.repeats
        )
        verdict = ("met" if recorded / plain <= 1.15 else "NOT met") if target.startswith("<=") else ""
        rows.append({"calibration": label, "prompts": len(prompts), "generation_s": plain, "calibration_s": recorded,
                     "ratio": recorded / plain, "target": f"{target} {verdict}".strip()})  # fmt: skip
    subset = prompts[: args.lemica_prompts]
    glob = dataclasses.replace(settings, lemica="global")
    plain_subset, replayed = interleaved(
        lambda: generate(subset), lambda: calibrate(pipe, subset, glob, progress=False), 1
    )
    rows.append({"calibration": f"+ global LeMiCa edges (span {args.span}, replayed)", "prompts": len(subset),
                 "generation_s": plain_subset, "calibration_s": replayed, "ratio": replayed / plain_subset,
                 "target": "extra cost, reported"})  # fmt: skip
    subset = prompts[: args.candidate_prompts]
    plain_subset, with_candidates = interleaved(
        lambda: generate(subset),
        lambda: calibrate(pipe, subset, settings, progress=False, candidates=args.candidates,
                          candidate_prompts=len(subset)),
        1,
    )  # fmt: skip
    rows.append({"calibration": f"+ auto candidates ({args.candidates}, 5 targets)", "prompts": len(subset),
                 "generation_s": plain_subset, "calibration_s": with_candidates,
                 "ratio": with_candidates / plain_subset, "target": "extra cost, reported"})  # fmt: skip
    if args.search:
        search = ScheduleSearch((args.search,), coordinate="sigma", prompts=len(subset), budget=args.search_budget)
        plain_subset, with_search = interleaved(
            lambda: generate(subset), lambda: calibrate(pipe, subset, settings, progress=False, search=search), 1
        )
        rows.append({"calibration": f"+ schedule search ({args.search:g}x, sigma, budget {args.search_budget:g} s)",
                     "prompts": len(subset), "generation_s": plain_subset, "calibration_s": with_search,
                     "ratio": with_search / plain_subset, "target": "extra cost, reported"})  # fmt: skip
    print(f"\n{args.model}, {settings.steps} steps; {machine()}\n")
    print(table(rows, list(rows[0])))
    write_json(args.out, {"model": args.model, "steps": settings.steps, "rows": rows})


if __name__ == "__main__":
    main()
