"""Issues 4 and 13's benchmark: the zoo models, dit_cache policies and peers at several speedup targets through
`dit-cache eval` (out of sample: the shipped profiles are calibrated on other prompts and seeds), then every method's
Pareto frontier of PSNR against measured compute fraction interpolated at fractions 0.5 and 0.33.

    OMP_NUM_THREADS=1 python benchmarks/zoo_benchmarks.py [--models shapes-image shapes-video] [--samples 16]

Each model's sweep resumes where it stopped (results are JSON lines). benchmarks/results/zoo_MODEL.json holds the
rows and the equal-compute table (key "equal_compute"); runs/zoo/benchmarks-tables.md is what docs/benchmarks.md
quotes. `--collect --merge` adds the methods of new parts (e.g. more peers run later, under another --out) to the
committed JSON without recomputing its rows: the plans must be the same, and a method run in both (rerun it in a new
part) must score sample for sample the same, which shows that both used the same uncached references.
"""

from __future__ import annotations

import argparse
import json
import math
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


def _plan(header: dict) -> dict:
    return {k: v for k, v in header.items() if k != "profile"}  # a part without profile readers has none


def collect(folder: Path) -> tuple[dict, list[dict]]:
    """The rows of every part of a model's sweep (each subfolder with results: `ours`, `peers`, more peers run as
        further processes), which must share one plan (model, prompts, steps, call arguments, calibration jobs; the
        profile provenance comes from the parts that read a profile); the uncached rows of the first part only; a method
    rerun in a later part (by name order) replaces its earlier rows."""
    header, rows = None, []
    for part in sorted(p.parent for p in folder.glob(f"*/{RESULTS}")):
        part_header, part_rows = read_rows(part / RESULTS)
        if header is not None and _plan(part_header) != _plan(header):
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


def _same(a: float | None, b: float | None) -> bool:
    return a == b or (a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9))


def merge(committed: dict, header: dict, rows: list[dict]) -> tuple[dict, list[dict]]:
    """The rows of a committed zoo_MODEL.json plus the methods of `rows` it lacks. Refused when the plans differ, the
    uncached rows score other prompts or seeds, or no method ran in both with the same result on every sample (the
    check that the new rows' uncached references are the committed ones: the references themselves are not kept)."""
    if _plan(committed["header"]) != _plan(header):
        raise SystemExit(f"the new parts evaluated another plan: {header} vs {committed['header']}")
    old = committed["rows"]

    def references(rows):
        return {(r["sample"], r["prompt"], r["seed"]) for r in rows if r["method"] == "uncached"}

    if references(rows) != references(old):
        raise SystemExit("the new parts' uncached rows score other samples (prompt, seed) than the committed ones")

    def scores(rows, method):
        return {r["sample"]: (r.get("psnr"), r.get("compute_fraction")) for r in rows if r["method"] == method}

    shared = ({r["method"] for r in old} & {r["method"] for r in rows}) - {"uncached"}
    for method in sorted(shared):
        new, was = scores(rows, method), scores(old, method)
        if new.keys() != was.keys() or not all(_same(a, b) for s in new for a, b in zip(new[s], was[s])):
            raise SystemExit(f"{method} scores differently in the new parts: other references, not mergeable")
    if not any(scores(old, m) and all(v[0] is not None for v in scores(old, m).values()) for m in shared):
        raise SystemExit(
            "no method with scores ran in both the committed sweep and the new parts, so nothing shows that their "
            "uncached references are the same outputs: rerun one of the committed methods in a new part"
        )
    added = [r for r in rows if r["method"] not in shared | {"uncached"}]
    return {**committed["header"], **{k: v for k, v in header.items() if k not in committed["header"]}}, old + added


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
    parser.add_argument(
        "--merge", action="store_true", help="add the parts' new methods to the committed results/zoo_MODEL.json"
    )
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
        results = Path(args.results)
        target, earlier = results / f"zoo_{model}.json", []
        if args.merge:
            committed = json.loads(target.read_text())
            header, rows = merge(committed, header, rows)
            earlier = [*committed.get("earlier_commands", []), committed["command"]]
        table = {"header": header, **equal_compute(rows)}
        results.mkdir(parents=True, exist_ok=True)
        document = {"command": " ".join(sys.argv), **({"earlier_commands": earlier} if earlier else {})}
        document.update(header=header, equal_compute=table, rows=rows)
        target.write_text(json.dumps(document, indent=1, default=str))
        lines = summarize(rows)
        sections += [f"### {model} ({header['steps']} steps, {args.samples} samples)", "", markdown_table(lines), ""]
        sections += ["Equal compute (interpolated Pareto frontiers):", "", *equal_compute_lines(table), ""]
    (out / "benchmarks-tables.md").write_text("\n".join(sections))
    print("\n".join(sections))


if __name__ == "__main__":
    main()
