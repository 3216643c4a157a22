"""Issue 13's `auto` and LeMiCa-with-forecast, out of sample on a zoo model: calibrate on prompts the scoring never
uses (with candidate runs and global LeMiCa edges measured with and without forecasting), then score, on the zoo's
evaluation prompts, PSNR of the decoded output against the uncached one for

- `auto` at each target, beside every candidate it chose from (the best fixed setting, per target, is the bar:
  `auto` should be within 0.5 dB of it);
- LeMiCa(forecast=1) solved on edges measured with the forecast against the same policy on plain-reuse edges.

    OMP_NUM_THREADS=1 python benchmarks/auto_and_forecast.py --model zoo:shapes-image --samples 8

Writes benchmarks/results/auto_<model>.json (with --out) and prints the tables.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import machine, table, write_json  # noqa: E402

import dit_cache  # noqa: E402
from dit_cache.auto import candidate_config, candidate_list, choose  # noqa: E402
from dit_cache.calibration import keys  # noqa: E402
from dit_cache.calibration.runner import CalibrationSettings, calibrate  # noqa: E402
from dit_cache.eval import zoo  # noqa: E402
from dit_cache.eval.metrics import psnr, to_frames  # noqa: E402


def calibration_prompts(name: str, count: int) -> list[str]:
    """Prompts of the zoo's grammar that are not among its scored prompts (out of sample)."""
    scored = set(zoo.prompts(name))
    motion = name.endswith("video")
    found = []
    for colour, shape, background in itertools.product(zoo.COLOURS, zoo.SHAPES, zoo.BACKGROUNDS):
        for direction in zoo.DIRECTIONS if motion else [None]:
            text = f"a {colour} {shape}" + (f" moving {direction}" if direction else "") + f" on {background}"
            if text not in scored:
                found.append(text)
    step = max(1, len(found) // count)
    # every step-th, shifted by one more each time: a plain found[::step] took one motion direction only on the video
    # model (step a multiple of the 4 directions: the 4 prompts of the first run all moved left)
    return [found[(k * step + k) % len(found)] for k in range(min(count, len(found)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="zoo:shapes-image")
    parser.add_argument("--samples", type=int, default=8, help="scored prompts (the zoo's evaluation prompts)")
    parser.add_argument("--calibration-prompts", type=int, default=4)
    parser.add_argument("--candidate-prompts", type=int, default=2)
    parser.add_argument("--lemica-prompts", type=int, default=1)
    parser.add_argument("--targets", type=float, nargs="+", default=[2.0, 3.0])
    parser.add_argument("--candidates", default="default")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    name = args.model.removeprefix("zoo:")
    pipe = zoo.load(name)
    pipe.set_progress_bar_config(disable=True)
    settings_kw = zoo.settings(name)
    steps = settings_kw.pop("num_inference_steps")
    calib = calibration_prompts(name, args.calibration_prompts)
    settings = CalibrationSettings(steps=steps, call_kwargs=settings_kw, lemica="global",
                                   lemica_prompts=args.lemica_prompts, lemica_forecast=(0, 1))  # fmt: skip
    started = time.perf_counter()
    saved = Path(f"runs/auto_{name}_profile.json")  # kept: a rerun resumes it instead of recalibrating
    saved.parent.mkdir(parents=True, exist_ok=True)
    profile = calibrate(pipe, calib, settings, saved, resume=saved.exists(), progress=False, candidates=args.candidates,
                        candidate_targets=sorted({1.5, 2.0, 2.5, 3.0, 4.0, *args.targets}),
                        candidate_prompts=args.candidate_prompts)  # fmt: skip
    calibration_s = time.perf_counter() - started
    scored = zoo.prompts(name)[: args.samples]
    assert not set(scored) & set(calib)

    def generate(prompt):
        out = pipe(prompt, generator=torch.Generator().manual_seed(0), num_inference_steps=steps, **settings_kw)
        return to_frames(out.images if hasattr(out, "images") else out.frames[0])

    references = [generate(p) for p in scored]

    def score(config) -> tuple[float, float]:
        values, fractions = [], []
        with dit_cache.cached(pipe, config):
            for prompt, reference in zip(scored, references):
                values.append(psnr(reference, generate(prompt)))
                fractions.append(dit_cache.stats(pipe).compute_fraction)
        return statistics.mean(values), statistics.mean(fractions)

    rows, lemica_rows = [], []
    for target in args.targets:
        choice = choose(profile, target)
        settings_psnr = {}
        for spec in candidate_list(args.candidates):
            try:
                config = candidate_config(spec, target, profile)
            except ValueError:
                continue
            value, fraction = score(config)
            if fraction <= 1 / target + 0.02:  # compared at the compute `auto` was asked for
                settings_psnr[spec] = (value, fraction)
        best = max(settings_psnr, key=lambda k: settings_psnr[k][0])
        auto_psnr, auto_fraction = score(choice.config)
        rows.append({"target": target, "auto picked": choice.candidate, "auto PSNR": auto_psnr,
                     "auto fraction": auto_fraction, "best setting": best, "best PSNR": settings_psnr[best][0],
                     "best fraction": settings_psnr[best][1], "auto - best (dB)": auto_psnr - settings_psnr[best][0],
                     "within 0.5 dB": auto_psnr >= settings_psnr[best][0] - 0.5,
                     "settings": {k: list(v) for k, v in settings_psnr.items()}})  # fmt: skip
        plain = profile.copy()
        plain.arrays.pop(keys.lemica_edges(1))
        measured, _ = score(dit_cache.LeMiCa(speedup=target, forecast=1, profile=profile))
        unmeasured, fraction = score(dit_cache.LeMiCa(speedup=target, forecast=1, profile=plain))
        lemica_rows.append({"target": target, "fraction": fraction, "edges with forecast": measured,
                            "edges without": unmeasured, "gain (dB)": measured - unmeasured})  # fmt: skip
    print(f"\n{args.model}: calibrated on {len(calib)} prompts disjoint from the {len(scored)} scored; "
          f"calibration {calibration_s:.0f} s; {machine()}\n")  # fmt: skip
    print(table(rows, [c for c in rows[0] if c != "settings"]))
    print()
    print(table(lemica_rows, list(lemica_rows[0])))
    if args.out:
        write_json(args.out, {"model": args.model, "calibration_prompts": calib, "scored_prompts": scored,
                              "calibration_s": calibration_s, "auto": rows,
                              "lemica_forecast": lemica_rows})  # fmt: skip


if __name__ == "__main__":
    main()
