"""Issue 13's plots, drawn by the HTML report's plotting code (`dit_cache.eval.report.pareto_figure`): per zoo model,
PSNR against compute fraction with each method's Pareto frontier, from the committed out-of-sample sweep
(benchmarks/results/zoo_MODEL.json, written by zoo_benchmarks.py), and the wall speedup, with its run-to-run spread,
of the settings timed apart (every benchmarks/results/zoo_MODEL_timed*.jsonl, results files of `dit-cache eval`; the
sweeps ran with `--runs 0`). A setting timed in several of them gets the run pairs of all. Quality rows scored apart
on the sweep's samples (every benchmarks/results/zoo_MODEL_quality*.jsonl, checked to score the same prompts and
steps) are added; a method in one of them replaces the sweep's rows of that method (`auto` rerun on a re-recorded
profile).

    python benchmarks/plot_frontiers.py [--models shapes-image shapes-video shapes-pixart] [--out docs/images]

Rerun it after rows are added to a sweep (`zoo_benchmarks.py --collect` rewrites its JSON). Writes
OUT/pareto-MODEL.png.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dit_cache.eval.frontier import method_points  # noqa: E402
from dit_cache.eval.report import pareto_figure, summarize  # noqa: E402
from dit_cache.eval.runner import read_rows  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("shapes-image", "shapes-video", "shapes-pixart")
logger = logging.getLogger("plot_frontiers")


def complete_rows(rows: list[dict]) -> list[dict]:
    """The rows less the settings that do not have every scored sample (a sweep still running): the equal-compute
    table leaves them out, so the plot does too."""
    partial = {key for entry in method_points(rows).values() for key, why in entry["not_run"].items()
               if why.startswith("incomplete")}  # fmt: skip
    for key in sorted(partial):
        logger.warning("left out %s: %s", key, "not every sample scored")
    return [r for r in rows if r["method"] not in partial]


def timing_note(rows: list[dict], files: int) -> str:
    """What the speed panel shows, for the figure's title."""
    timed = [r for r in rows if r["method"] != "uncached" and r.get("seconds_runs")]
    if not timed:
        return "speed: not timed"
    settings = len({r["method"] for r in timed})
    runs = _span(len(r["seconds_runs"]) for r in timed)
    return (f"speed: {settings} setting(s) timed in {files} separate eval(s), {runs} runs per timed sample, each "
            "beside an uncached run, on a shared 2-core CPU")  # fmt: skip


def _span(counts) -> str:
    counts = sorted(set(counts))
    return f"{counts[0]}-{counts[-1]}" if len(counts) > 1 else str(counts[0])


def plot(model: str, out: Path) -> Path:
    sweep = json.loads((RESULTS / f"zoo_{model}.json").read_text())
    rows = complete_rows(sweep["rows"])
    for path in sorted(RESULTS.glob(f"zoo_{model}_quality*.jsonl")):
        header, extra = read_rows(path)
        if (header["prompts_sha"], header["steps"]) != (sweep["header"]["prompts_sha"], sweep["header"]["steps"]):
            raise SystemExit(f"{path} scores other prompts or steps than the sweep of {model}: not comparable")
        scored = {r["method"] for r in extra if r["method"] != "uncached"}
        rows = [r for r in rows if r["method"] not in scored] + [r for r in extra if r["method"] in scored]
    samples = len({r["sample"] for r in rows if r["method"] == "uncached"})
    timed_files = sorted(RESULTS.glob(f"zoo_{model}_timed*.jsonl"))
    timed_rows = [row for path in timed_files for row in read_rows(path)[1]]
    title = f"zoo:{model}: quality on {samples} samples out of sample\n{timing_note(timed_rows, len(timed_files))}"
    fig = pareto_figure(summarize(rows), title, speed_lines=summarize(timed_rows))
    path = out / f"pareto-{model}.png"
    fig.savefig(path)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--out", default="docs/images", help="folder for pareto-MODEL.png")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for model in args.models:
        logger.info("wrote %s", plot(model, out))


if __name__ == "__main__":
    main()
