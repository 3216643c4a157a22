"""Compare the methods of one `dit-cache eval` run (mean PSNR over its samples, each at the compute fraction it
measured) with the frontiers of a committed sweep (benchmarks/results/zoo_*.json, same model, prompts and samples),
read at each new method's own fraction: no interpolation on the new side, the sweep's frontiers linearly interpolated.

    OMP_NUM_THREADS=1 python benchmarks/compare_at_fraction.py --run runs/i13search runs/i13search2 \
        --sweep benchmarks/results/zoo_shapes-video.json --out benchmarks/results/video_searched_schedule.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_json  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", nargs="+", required=True, help="dit-cache eval --out folders")
    parser.add_argument("--sweep", required=True)
    parser.add_argument(
        "--extra", nargs="*", default=[], help="JSON files to embed (e.g. the search that found a schedule)"
    )
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    sweep, rows, headers = json.load(open(args.sweep)), [], []
    for run in args.run:
        lines = [json.loads(line) for line in open(Path(run) / "results.jsonl")]
        header = next(line["header"] for line in lines if "header" in line)
        if sweep["header"]["prompts_sha"] != header["prompts_sha"] or sweep["header"]["steps"] != header["steps"]:
            raise SystemExit(f"{run} and the sweep score different prompts or step counts: not comparable")
        rows += [line for line in lines if "method" in line]
        headers.append(header)
    methods = {}
    for row in rows:
        if row["family"] == "reference" or row.get("psnr") is None:
            continue
        methods.setdefault(row["method"], []).append(row)
    compared = []
    for method, samples in methods.items():
        fraction = float(np.mean([s["compute_fraction"] for s in samples]))
        entry = {
            "method": method, "samples": len(samples), "seeds": sorted({s["seed"] for s in samples}),
            "compute_fraction": fraction, "psnr": float(np.mean([s["psnr"] for s in samples])),
            "psnr_per_sample": [s["psnr"] for s in samples], "sweep_at_same_fraction": {},
        }  # fmt: skip
        for other in sweep["equal_compute"]["methods"]:
            x = [p["compute_fraction"] for p in other["frontier"]]
            y = [p["psnr"] for p in other["frontier"]]
            if x and x[0] - 1e-9 <= fraction <= x[-1] + 1e-9:
                entry["sweep_at_same_fraction"][other["method"]] = {
                    "family": other["family"],
                    "psnr": float(np.interp(fraction, x, y)),
                }
        best = {}
        for family in ("dit_cache", "peer"):
            scores = {k: v["psnr"] for k, v in entry["sweep_at_same_fraction"].items() if v["family"] == family}
            if scores:
                name = max(scores, key=scores.get)
                best[family] = {"method": name, "psnr": scores[name], "margin_db": entry["psnr"] - scores[name]}
        entry["best_in_sweep"] = best
        compared.append(entry)
        print(f"{method}: fraction {fraction:.4f}, PSNR {entry['psnr']:.2f} dB; "
              + "; ".join(f"best {f} in sweep {b['method']} {b['psnr']:.2f} ({b['margin_db']:+.2f})"
                          for f, b in best.items()))  # fmt: skip
    write_json(
        args.out,
        {
            "command": " ".join(sys.argv), "run_headers": headers, "sweep": args.sweep,
            "sweep_command": sweep["command"], "methods": compared,
            "extra": {path: json.load(open(path)) for path in args.extra},
        },
    )  # fmt: skip


if __name__ == "__main__":
    main()
