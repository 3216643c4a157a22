"""Issue 13's paper policies on the zoo models: EasyCache, ERTACache and HyCa against dit_cache's own forecasting and
reuse settings, PSNR of the final output against the uncached one at compute fractions near 0.5 and 0.33.

    OMP_NUM_THREADS=1 python benchmarks/paper_policies.py [--models shapes-image shapes-video] [--samples 4]
        [--calibration 4] [--calibration-seeds 100] [--methods easycache hyca taylorseer:order=2 ...]
        [--hyca-prompts 4] [--out benchmarks/results/paper_policies.json]

Out of sample: the profile every calibrated method uses (MagCache ratios, ERTACache's residual-error table, HyCa's
unit trajectories: `--block-traces`; HyCa's solver per unit searched on the final output at its speedups:
`--hyca-targets`, on the first `--hyca-prompts` calibration jobs) is recorded here on prompts and seeds disjoint from
the scored ones (the zoo's first `--samples` evaluation prompts, seeds 0..). `--methods` runs only the named methods
(names as in the JSON's summary); the HyCa search runs only when a `hyca` method does. Each method runs at a few settings; its compute fraction is the
one `stats()` reports (block linear work actually run). `at_0.5` / `at_0.333` interpolate each method's PSNR
linearly along its settings' (fraction, mean PSNR) points sorted by fraction (None outside the range it reached).
PSNR is the mean over samples of the per-sample PSNR of the decoded output (pixels in [0, 1]); a setting under which
some sample never reused (identical output, infinite PSNR) reports the mean of the others, `identical_samples`, and
is left out of the interpolation. HyCa rows also count the solvers it chose (per unit and CFG branch), ERTACache rows
with `adjust_timestep=True` list the step-size factor of every step (`step_sizes`). Rows run at a speedup target also
give the fraction it asks for (`target_fraction`, 1 / speedup) and each sample's (`fraction_per_sample`): how close a
target calibrated on other prompts lands. A method name is `policy[:option=value,...][#label]`.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import machine, write_json  # noqa: E402

import dit_cache  # noqa: E402
from dit_cache.calibration.runner import CalibrationSettings, calibrate  # noqa: E402
from dit_cache.eval import zoo  # noqa: E402
from dit_cache.eval.metrics import psnr, to_frames  # noqa: E402

HYCA_SPEEDUPS = (2.0, 3.0, 3.5)


def methods(profile, steps: int) -> dict[str, list[dict]]:
    """Method name -> its settings (apply() options)."""

    def uniform(k: int) -> dict:
        return dict(__policy__=dit_cache.Schedule(steps=tuple(range(0, steps, k))))

    return {
        "easycache": [dict(tolerance=t) for t in (0.05, 0.1, 0.2, 0.4, 0.8)],
        "easycache#speedup": [dict(speedup=s, profile=profile) for s in (1.5, 2.0, 3.0)],
        "ertacache": [dict(speedup=s, profile=profile) for s in (2.0, 3.0)],
        "ertacache:rectify=False": [dict(speedup=s, rectify=False, profile=profile) for s in (2.0, 3.0)],
        "ertacache:adjust_timestep=True": [dict(speedup=s, profile=profile) for s in (2.0, 3.0)],
        "ertacache:rectify=False,adjust_timestep=True": [dict(speedup=s, profile=profile) for s in (2.0, 3.0)],
        "hyca": [dict(speedup=s, profile=profile) for s in HYCA_SPEEDUPS],
        "hyca:choose=trajectories": [dict(speedup=s, profile=profile) for s in HYCA_SPEEDUPS],
        "taylorseer:order=1": [dict(speedup=s, order=1) for s in (2.0, 3.0, 3.5)],
        "taylorseer:order=2": [dict(speedup=s, order=2) for s in (2.0, 3.0, 3.5)],
        "fora:forecast=1": [dict(interval=k, forecast=1) for k in (2, 3)],
        "magcache": [dict(speedup=s, profile=profile) for s in (2.0, 3.0)],
        "uniform": [uniform(2), uniform(3)],
    }


def calibration_prompts(name: str, count: int) -> list[str]:
    """Prompts of the zoo's grammar that are not among its evaluation prompts."""
    scored = set(zoo.prompts(name))
    if name == "shapes-video":
        grammar = itertools.product(zoo.COLOURS, zoo.SHAPES, zoo.DIRECTIONS, zoo.BACKGROUNDS)
        candidates = [f"a {c} {s} moving {d} on {b}" for c, s, d, b in grammar]
    else:
        candidates = [f"a {c} {s} on {b}" for c, s, b in itertools.product(zoo.COLOURS, zoo.SHAPES, zoo.BACKGROUNDS)]
    fresh = [p for p in candidates if p not in scored]
    stride = max(1, len(fresh) // count)
    return fresh[::stride][:count]


def generate(pipe, name: str, prompt: str, seed: int) -> np.ndarray:
    out = pipe(prompt, generator=torch.Generator().manual_seed(seed), output_type="np", **zoo.settings(name))
    value = out.frames[0] if hasattr(out, "frames") else out.images[0]
    return to_frames(np.asarray(value))


def interpolate(points: list[tuple[float, float]], fraction: float) -> float | None:
    points = sorted(p for p in points if math.isfinite(p[1]))
    for (f0, p0), (f1, p1) in zip(points, points[1:]):
        if f0 - 1e-6 <= fraction <= f1 + 1e-6:
            return p0 if f1 == f0 else p0 + (p1 - p0) * (fraction - f0) / (f1 - f0)
    if any(abs(f - fraction) < 1e-6 for f, _ in points):
        return next(p for f, p in points if abs(f - fraction) < 1e-6)
    return None


def run_model(
    name: str, samples: int, calibration: int, only: list[str] | None, hyca_prompts: int, seeds: tuple[int, ...]
) -> dict:
    pipe = zoo.load(name)
    pipe.set_progress_bar_config(disable=True)
    settings = zoo.settings(name)
    steps = settings.pop("num_inference_steps")
    started = time.perf_counter()
    calib = calibration_prompts(name, calibration)
    search = only is None or any(m.startswith("hyca") for m in only)
    profile = calibrate(
        pipe, calib, CalibrationSettings(steps=steps, call_kwargs=settings, seeds=seeds, block_traces=True),
        progress=False, **(dict(hyca_targets=HYCA_SPEEDUPS, hyca_prompts=hyca_prompts) if search else {}),
    )  # fmt: skip
    calibration_s = time.perf_counter() - started
    hyca = profile.policies.get("hyca", {})
    scored = [(p, i) for i, p in enumerate(zoo.prompts(name)[:samples])]
    references = [generate(pipe, name, p, s) for p, s in scored]
    rows, summary = [], {}
    for method, options_list in methods(profile, steps).items():
        if only is not None and method not in only:
            continue
        policy, _, extra = method.split("#")[0].partition(":")
        fixed = dict(item.split("=") for item in filter(None, extra.split(",")))
        fixed = {k: {"True": True, "False": False}.get(v, int(v) if v.isdigit() else v) for k, v in fixed.items()}
        points = []
        for options in options_list:
            options = {**fixed, **options}
            config = options.pop("__policy__", None)
            label = {k: v for k, v in options.items() if k != "profile"}
            try:
                values, fractions, solvers, sources, step_sizes = [], [], {}, set(), None
                for (prompt, seed), reference in zip(scored, references):
                    if config is not None:
                        dit_cache.apply(pipe, config)
                    else:
                        dit_cache.apply(pipe, policy, **options)
                    try:
                        out = generate(pipe, name, prompt, seed)
                        fractions.append(dit_cache.stats(pipe).compute_fraction)
                        running = dit_cache.cache_engine(pipe).policy
                        sources |= set(getattr(running, "sources", {}).values())
                        tuned = getattr(running, "_tuned", {})
                        step_sizes = next((v for k, v in tuned.items() if k[0] == "ertacache-steps"), step_sizes)
                        for choice in getattr(running, "_solvers", {}).values():
                            for order in choice.values():
                                solvers[order] = solvers.get(order, 0) + 1
                    finally:
                        dit_cache.remove(pipe)
                    values.append(psnr(reference, out))
                finite = [v for v in values if math.isfinite(v)]  # a sample that never reused is identical
                row = dict(method=method, options=label if config is None else {"steps": list(config.steps)},
                           compute_fraction=float(np.mean(fractions)),
                           psnr=float(np.mean(finite)) if finite else None, identical_samples=len(values) - len(finite),
                           psnr_per_sample=[v if math.isfinite(v) else None for v in values])  # fmt: skip
                if "speedup" in options:
                    row["target_fraction"] = 1.0 / options["speedup"]
                    row["fraction_per_sample"] = fractions
                if step_sizes is not None:  # ERTACache's fitted step-size factors (1 on computed steps)
                    row["step_sizes"] = [round(float(v), 5) for v in step_sizes]
                if solvers:
                    row["solver_counts"] = {f"order {k}": v // len(scored) for k, v in sorted(solvers.items())}
                    row["solvers_from"] = sorted(sources)
                if not row["identical_samples"]:  # a mean over fewer samples is not a point of the frontier
                    points.append((row["compute_fraction"], row["psnr"]))
            except Exception as e:  # a setting out of reach is a row with its error
                row = dict(method=method, options=label, error=f"{type(e).__name__}: {e}")
            rows.append(row)
            print(name, row.get("method"), row.get("options"), row.get("compute_fraction"), row.get("psnr"),
                  row.get("error", ""), flush=True)  # fmt: skip
        summary[method] = {"at_0.5": interpolate(points, 0.5), "at_0.333": interpolate(points, 1 / 3)}
    return dict(
        model=name, steps=steps, scored=[f"{p} (seed {s})" for p, s in scored],
        calibration_prompts=calib, calibration_seeds=list(seeds), calibration_s=calibration_s, rows=rows, summary=summary,
        hyca_search=hyca,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["shapes-image", "shapes-video"])
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--calibration", type=int, default=4)
    parser.add_argument("--methods", nargs="+", help="only these methods (names as in the JSON); default: all")
    parser.add_argument(
        "--calibration-seeds", type=int, nargs="+", default=[100], help="each calibration prompt runs once per seed"
    )
    parser.add_argument("--hyca-prompts", type=int, default=4, help="calibration jobs HyCa's search scores on")
    parser.add_argument("--out", default="benchmarks/results/paper_policies.json")
    args = parser.parse_args()
    known = list(methods(None, 30))
    unknown = [m for m in args.methods or [] if m not in known]
    if unknown:
        parser.error(f"unknown --methods {unknown}; known: {', '.join(known)}")
    torch.set_num_threads(1)
    results = {"machine": machine(), "command": " ".join(sys.argv), "models": []}
    for name in args.models:
        results["models"].append(
            run_model(
                name, args.samples, args.calibration, args.methods, args.hyca_prompts, tuple(args.calibration_seeds)
            )
        )
        write_json(args.out, results)
    for model in results["models"]:
        print(f"\n{model['model']}: PSNR (dB) at compute fraction 0.5 / 0.333")
        for method, at in model["summary"].items():
            cells = [f"{v:.2f}" if v is not None else "-" for v in (at["at_0.5"], at["at_0.333"])]
            print(f"  {method:28s} {cells[0]:>7s} {cells[1]:>7s}")


if __name__ == "__main__":
    main()
