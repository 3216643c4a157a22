"""Issues 4 and 13's benchmark: the zoo models, dit_cache policies and peers at several speedup targets through
`dit-cache eval` (out of sample: the shipped profiles are calibrated on other prompts and seeds), then every method's
Pareto frontier of PSNR against measured compute fraction interpolated at fractions 0.5 and 0.33.

    OMP_NUM_THREADS=1 python benchmarks/zoo_benchmarks.py [--models shapes-image shapes-video] [--samples 16]

Each model's sweep resumes where it stopped (results are JSON lines). benchmarks/results/zoo_MODEL.json holds the
rows and the equal-compute table (key "equal_compute"); runs/zoo/benchmarks-tables.md is what docs/benchmarks.md
quotes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dit_cache.eval.frontier import equal_compute  # noqa: E402
from dit_cache.eval.report import markdown_table, summarize  # noqa: E402
from dit_cache.eval.runner import RESULTS, read_rows  # noqa: E402


def equal_compute_lines(table: dict) -> list[str]:
    """The Markdown table of `equal_compute.json`: every method's PSNR at fractions 0.5 and 0.33 on its interpolated
    Pareto frontier (or 'not reached', with the span its settings covered), then the verdict per fraction."""
    fractions = [f"{f:g}" for f in table["fractions"]]
    lines = ["| method | family | settings | fraction span | " + " | ".join(f"PSNR at {f}" for f in fractions) + " |",
             "|---|---|---|---|" + "---|" * len(fractions)]  # fmt: skip
    for m in sorted(table["methods"], key=lambda m: (m["family"], m["method"])):
        span = "-" if m["span"] is None else f"{m['span'][0]:.3f}-{m['span'][1]:.3f}"
        cells = []
        for f in fractions:
            value = m["at"][f]["psnr"]
            cells.append("not reached" if value is None else f"{value:.2f}")
        note = f" ({len(m['not_run'])} not run: {next(iter(m['not_run'].values()))[:80]})" if m["not_run"] else ""
        lines.append(f"| {m['method']} | {m['family']} | {len(m['settings'])}{note} | {span} | {' | '.join(cells)} |")
    lines.append("")
    for f in fractions:
        best = table["best"][f]
        ours, rival, margin = best["best_dit_cache"], best["best_peer"], best["margin_db"]
        verdict = "no comparison" if margin is None else ("met" if margin >= 3 else "NOT met")
        lines.append(
            f"- fraction {f}: best dit-cache {_name(ours)}, best peer {_name(rival)}, margin "
            f"{'-' if margin is None else f'{margin:+.2f} dB'} (+3 dB target: {verdict})"
        )
    return lines


def _name(entry: dict | None) -> str:
    return "none reaches it" if entry is None else f"{entry['method']} {entry['psnr']:.2f} dB"


def collect(folder: Path) -> tuple[dict, list[dict]]:
    """The rows of every part of a model's sweep (each subfolder with results: `ours`, `peers`, more peers run as
        further processes), which must share one plan (model, prompts, steps, call arguments, calibration jobs; the
        profile provenance comes from the parts that read a profile); the uncached rows of the first part only; a method
    rerun in a later part (by name order) replaces its earlier rows."""
    header, rows = None, []
    for part in sorted(p.parent for p in folder.glob(f"*/{RESULTS}")):
        part_header, part_rows = read_rows(part / RESULTS)
        plan = {k: v for k, v in part_header.items() if k != "profile"}  # a part without profile readers has none
        if header is not None and plan != {k: v for k, v in header.items() if k != "profile"}:
            raise SystemExit(f"{part} evaluated another plan: {part_header} vs {header}")
        redone = {r["method"] for r in part_rows}  # a later part that reruns a method replaces its rows
        rows = [r for r in rows if r["method"] not in redone or r["method"] == "uncached"]
        for row in part_rows:  # rows of a crash written before crashes were also marked skipped (the report's key)
            if "error" in row:
                row.setdefault("skipped", f"crashed: {row['error']}")
        rows += [r for r in part_rows if r["method"] != "uncached" or header is None]
        header = {**part_header, **(header or {})}
    if header is None:
        raise SystemExit(f"no results under {folder}")
    return header, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["shapes-image", "shapes-video"])
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--runs", type=int, default=0, help="timed runs (0: quality and compute only)")
    parser.add_argument("--targets", nargs="+", default=["1.5", "2", "3", "4"])
    parser.add_argument("--policies", nargs="*", default=None, help="default: every dit_cache policy with a target")
    parser.add_argument("--peers", nargs="*", default=["all"])
    parser.add_argument("--out", default="runs/zoo")
    parser.add_argument("--results", default="benchmarks/results", help="where the JSON behind the docs goes")
    parser.add_argument("--collect", action="store_true", help="only merge the parts already run under --out")
    args = parser.parse_args()
    out = Path(args.out)
    sections = []
    for model in args.models:
        base = ["eval", "--model", f"zoo:{model}", "--samples", str(args.samples), "--runs", str(args.runs),
                "--targets", *args.targets, "--no-progress"]  # fmt: skip
        policies = [] if args.policies is None else ["--policies", *args.policies]
        # two processes, ours and the peers, each resumable: on a shared machine the pair gets twice the CPU share
        parts = {"ours": [*base, *policies, "--peers", "none"], "peers": [*base, "--policies", "--peers", *args.peers]}
        if not args.collect:
            procs = {
                part: subprocess.Popen(
                    [sys.executable, "-m", "dit_cache.cli", *command, "--out", str(out / model / part)]
                )
                for part, command in parts.items()
            }
            for part, proc in procs.items():
                if proc.wait() != 0:
                    raise SystemExit(f"eval of {model} ({part}) failed")
        header, rows = collect(out / model)
        table = {"header": header, **equal_compute(rows)}
        results = Path(args.results)
        results.mkdir(parents=True, exist_ok=True)
        (results / f"zoo_{model}.json").write_text(
            json.dumps(
                {"command": " ".join(sys.argv), "header": header, "equal_compute": table, "rows": rows},
                indent=1,
                default=str,
            )  # fmt: skip
        )
        lines = summarize(rows)
        sections += [f"### {model} ({header['steps']} steps, {args.samples} samples)", "", markdown_table(lines), ""]
        sections += ["Equal compute (interpolated Pareto frontiers):", "", *equal_compute_lines(table), ""]
    (out / "benchmarks-tables.md").write_text("\n".join(sections))
    print("\n".join(sections))


if __name__ == "__main__":
    main()
