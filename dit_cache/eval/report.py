"""`dit-cache report DIR...`: Markdown and a self-contained HTML page (images embedded) from evaluation results:
per model a plot (PSNR against compute fraction with each method's Pareto frontier; wall speedup with its
run-to-run spread), a table with the uncached reference and the definition of every column, the prompts, and
side-by-side samples."""

from __future__ import annotations

import base64
import html
import math
import os
import textwrap
from collections import defaultdict
from pathlib import Path

import numpy as np

from .frontier import method_name, pareto_frontier
from .runner import RESULTS, _file_key, check_output_dir, read_rows

PSNR_CAP = 100.0  # the summary's PSNR when every sample is identical to the uncached output (infinite PSNR)
COLUMNS = ("method", "target", "compute_fraction", "off_target", "seconds", "uncached_seconds", "speedup",
           "speedup_range", "transformer_seconds", "transformer_speedup", "efficiency", "transformer_efficiency", "psnr",
           "ssim", "lpips", "temporal_psnr", "peak_memory_mb", "samples")  # fmt: skip
DEFINITIONS = {
    "method": "dit_cache policy (or peer:NAME, a peer library's cache) @ its speedup target; uncached is the "
    "reference every other row is measured against",
    "target": "requested speedup; the method is set up to run 1 / target of the block work",
    "compute_fraction": "fraction of the transformer's block work actually run (attention and MLP calls, as "
    "dit_cache.stats counts them), mean over samples; 1 for the uncached pipeline",
    "off_target": "whether a sample's compute fraction landed more than 0.05 from 1 / target (yes (k/n): k of n)",
    "seconds": "median wall time of one pipeline call in seconds (text encoding, denoising, decoding), mean over "
    "the timed samples; for uncached, the median of every uncached run timed beside a method",
    "uncached_seconds": "median wall time of the uncached call in the runs timed alternately with this method's "
    "(the load the method saw; mean over the timed samples)",
    "transformer_seconds": "median time spent inside the transformer's calls in seconds (the part caching can "
    "shorten); on CUDA each clock read waits for the device",
    "speedup": "uncached seconds / method seconds, the two timed alternately run by run on the same sample: the "
    "median over every timed run pair (results without per-run times: the ratio of the medians)",
    "speedup_range": "lowest - highest speedup of a single run pair (uncached run i over cached run i) over every "
    "timed run of every timed sample: the run-to-run spread",
    "transformer_speedup": "the same for transformer_seconds",
    "efficiency": "speedup x compute_fraction: 1 when the wall time falls as fast as the work, below 1 when hooks, "
    "decisions and copies eat part of the savings",
    "transformer_efficiency": "transformer_speedup x compute_fraction",
    "psnr": "PSNR in dB of the decoded output against the uncached output of the same prompt and seed, mean over "
    "the samples that differ from it; 'identical' when every sample is bit-identical (infinite PSNR)",
    "ssim": "structural similarity against the uncached output (1 = identical), mean over samples",
    "lpips": "LPIPS (AlexNet) distance against the uncached output (the column is left out where LPIPS is "
    "unavailable; the reason is under the table)",
    "temporal_psnr": "videos only: PSNR between the frame-to-frame differences of the two videos (does it move alike)",
    "peak_memory_mb": "peak memory of one timed call in MiB, absolute (see the memory line above the table for how "
    "it was measured)",
    "samples": "prompts (with their seeds) scored",
}
MEMORY_SOURCES = {
    "cuda-allocator": "CUDA allocator peak (torch.cuda.max_memory_allocated after reset_peak_memory_stats): tensors "
    "only, weights included",
    "cpu-rss": "the process's peak resident set size (VmHWM, reset before each call, freed heap returned to the "
    "system first): the whole process, weights and interpreter included",
    "cpu-rss-sampled": "the process's resident set size sampled every millisecond: the whole process",
}
# one (marker, filled) per method name; filled markers first, then the same shapes hollow
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "p", "h", "d", "8", "H")
_STYLES = [(m, True) for m in _MARKERS] + [(m, False) for m in _MARKERS]
_LINESTYLES = {"dit_cache": "-", "peer": "--"}


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(values)) if values else None


def _finite_mean(values) -> tuple[float | None, int]:
    """(mean of the finite values, how many were infinite: outputs identical to the reference)."""
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    finite = [v for v in values if math.isfinite(v)]
    return (float(np.mean(finite)) if finite else None), len(values) - len(finite)


def summarize(rows: list[dict]) -> list[dict]:
    """One line per method: means over samples; speedup the median over the timed run pairs (uncached / method
    seconds; results without per-run times: the ratio of the medians); PSNR over the samples that differ from the
    uncached output, `identical` counting the others (PSNR_CAP when none differs)."""
    reference = {r["sample"]: r for r in rows if r["method"] == "uncached"}
    by_method: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        if row["method"] != "uncached":
            by_method[row["method"]].append(row)
    lines = []
    for key, items in by_method.items():
        first = items[0]
        if "skipped" in first:
            lines.append({"method": key, "family": first["family"], "name": first["name"], "group": _group(first),
                          "target": first["target"], "skipped": first["skipped"]})  # fmt: skip
            continue
        fraction = _mean(r["compute_fraction"] for r in items)
        pairs, inside_pairs = _run_ratios(items, "seconds"), _run_ratios(items, "transformer_seconds")
        speedup = float(np.median(pairs)) if pairs else _ratio(reference, items, "seconds")
        inside = float(np.median(inside_pairs)) if inside_pairs else _ratio(reference, items, "transformer_seconds")
        psnr, identical = _finite_mean(r["psnr"] for r in items)
        temporal, _ = _finite_mean(r.get("temporal_psnr") for r in items)
        lines.append(
            {
                "method": key, "family": first["family"], "name": first["name"], "group": _group(first),
                "target": first["target"], "compute_fraction": fraction, "off_target": _off_target(items),
                "seconds": _mean(r.get("seconds") for r in items),
                "uncached_seconds": _mean(r.get("uncached_seconds") for r in items),
                "transformer_seconds": _mean(r.get("transformer_seconds") for r in items),
                "speedup": speedup, "transformer_speedup": inside,
                "speedup_low": min(pairs) if pairs else None, "speedup_high": max(pairs) if pairs else None,
                "timed_pairs": len(pairs),
                "efficiency": speedup * fraction if speedup and fraction else None,
                "transformer_efficiency": inside * fraction if inside and fraction else None,
                "psnr": psnr if psnr is not None else PSNR_CAP, "identical": identical,
                "ssim": _mean(r["ssim"] for r in items), "lpips": _mean(r.get("lpips") for r in items),
                "temporal_psnr": temporal, "peak_memory_mb": _mean(r.get("peak_memory_mb") for r in items),
                "samples": len(items), "lpips_unavailable": first.get("lpips_unavailable"),
                "auto_picked": "/".join(sorted({r["auto_picked"] for r in items if r.get("auto_picked")})) or None,
            }
        )  # fmt: skip
    lines.sort(key=lambda x: (x["family"] != "dit_cache", x["name"], x["target"] or 0))
    return lines


def _group(row: dict) -> str:
    """The method a row's setting belongs to, as in the equal-compute table: options beyond the knob make a method
    of their own (`lemica:forecast=1,speedup=2` -> `lemica:forecast=1`, beside `lemica@2` -> `lemica`); a peer by
    its name."""
    return row["name"] if row["family"] == "peer" else method_name(row["method"], row["name"])


def reference_line(rows: list[dict]) -> dict | None:
    """The uncached pipeline's line. Its times are the medians of every uncached run timed beside a method (the
    runs each speedup divides, so a row's seconds and speedup agree with this line's), else of its own timed runs;
    its peak memory is from its own calls."""
    items = [r for r in rows if r["method"] == "uncached"]
    if not items:
        return None
    line = {"method": "uncached", "family": "reference", "name": "uncached", "target": None, "compute_fraction": 1.0,
            "peak_memory_mb": _mean(r.get("peak_memory_mb") for r in items), "samples": len(items)}  # fmt: skip
    for key in ("seconds", "transformer_seconds"):
        beside = [t for r in rows if r["method"] != "uncached" for t in r.get(f"uncached_{key}_runs") or () if t]
        line[key] = float(np.median(beside)) if beside else _mean(r.get(key) for r in items)
    return line


def _run_ratios(items: list[dict], key: str) -> list[float]:
    """Every timed run pair's speedup over the method's rows: uncached run i / cached run i of `key` (seconds or
    transformer_seconds), the two timed back to back."""
    ratios = []
    for r in items:
        for u, c in zip(r.get(f"uncached_{key}_runs") or (), r.get(f"{key}_runs") or ()):
            if u and c:
                ratios.append(u / c)
    return ratios


def _off_target(items: list[dict]) -> str | None:
    """`yes (k/n)` when k of the method's n samples computed more than 0.05 off 1 / target, `no` when none did."""
    flags = [r["off_target"] for r in items if r.get("off_target") is not None]
    if not flags:
        return None
    return f"yes ({sum(flags)}/{len(flags)})" if any(flags) else "no"


def _ratio(reference: dict, items: list[dict], key: str) -> float | None:
    """Mean over timed samples of the uncached median time over the method's: the uncached time timed alongside the
    method (`uncached_<key>`, interleaved run by run) where the row has it, else the sample's reference row."""

    def uncached(r):
        return r.get(f"uncached_{key}") or reference.get(r["sample"], {}).get(key)

    return _mean(uncached(r) / r[key] for r in items if r.get(key) and uncached(r))


def _number(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def _target(value) -> str:
    return "-" if value is None else f"{value:g}"


def _cell(line: dict, column: str) -> str:
    if column == "target":
        return _target(line.get("target"))
    if column == "method" and line.get("auto_picked"):
        return f"{line['method']} ({line['auto_picked']})"  # what `auto` ran
    if line["family"] == "reference":
        if column == "psnr":
            return "reference"
        if column in ("speedup", "transformer_speedup", "efficiency", "transformer_efficiency"):
            return "1 (reference)" if column == "speedup" else "-"
    if column == "psnr" and line.get("identical"):
        if line["identical"] == line["samples"]:
            return "identical"
        return f"{line['psnr']:.3f} ({line['identical']}/{line['samples']} identical)"
    if column == "speedup_range":
        if line.get("speedup_low") is None:
            return "-"
        return f"{line['speedup_low']:.2f} - {line['speedup_high']:.2f}"
    return _number(line.get(column))


def shown_columns(lines: list[dict]) -> list[str]:
    """COLUMNS less those empty on every line (LPIPS where it is unavailable, temporal PSNR for images)."""
    measured = [x for x in lines if "skipped" not in x and x["family"] != "reference"]
    return [c for c in COLUMNS if c in ("method", "target") or any(_cell(x, c) != "-" for x in measured)]


def markdown_table(lines: list[dict], reference: dict | None = None) -> str:
    columns = shown_columns(lines)
    rows = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for line in ([reference] if reference else []) + lines:
        if "skipped" in line:
            rows.append(f"| {line['method']} | {_target(line['target'])} | skipped: {line['skipped']} |")
            continue
        rows.append("| " + " | ".join(_cell(line, c) for c in columns) + " |")
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------------------- the plot
def method_styles(names: list[str]) -> dict[str, tuple[str, bool]]:
    """A distinct (marker, filled) per method name, in sorted order (the same name gets the same style in every
    model's plot of a report that shows the same methods)."""
    names = sorted(set(names))
    if len(names) > len(_STYLES):
        raise ValueError(f"{len(names)} methods to plot but only {len(_STYLES)} distinct markers; plot fewer")
    return {name: _STYLES[i] for i, name in enumerate(names)}


frontier = pareto_frontier  # the plot's frontiers are the equal-compute table's


def _plotted(line: dict) -> bool:
    """Lines with a finite PSNR: skipped rows and rows identical to the reference on every sample stay off."""
    return "skipped" not in line and line.get("compute_fraction") is not None and line["identical"] < line["samples"]


def pareto_figure(lines: list[dict], title: str, speed_lines: list[dict] | None = None):
    """Two panels: PSNR against compute fraction (every setting a marker, each method's Pareto frontier a line)
    and wall speedup against compute fraction (error bars: the lowest and highest run pair; the ideal 1 / fraction
    dashed). `speed_lines`: the summary of a separate timed run for the speed panel (default: `lines`), e.g. a few
    settings timed beside a sweep run without timing; a method keeps its marker in both panels. Returns the
    matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups, timed_groups = _by_group(lines), _by_group(lines if speed_lines is None else speed_lines)
    names = sorted(set(groups) | set(timed_groups))
    styles = method_styles(names)
    colors = matplotlib.colormaps["tab10"].colors + matplotlib.colormaps["Dark2"].colors
    fig, (quality, speed) = plt.subplots(1, 2, figsize=(12, 5.4), dpi=100, sharex=True)
    fractions = [x["compute_fraction"] for g in (groups, timed_groups) for items in g.values() for x in items]
    timed = spread = False
    for i, name in enumerate(names):
        marker, filled = styles[name]
        color = colors[i % len(colors)]
        items = groups.get(name) or timed_groups[name]
        linestyle = _LINESTYLES.get(items[0]["family"], ":")
        common = {"marker": marker, "color": color, "markersize": 7, "fillstyle": "full" if filled else "none"}
        if name in groups:
            points = [(x["compute_fraction"], x["psnr"]) for x in groups[name]]
            edge = frontier(points)
            quality.plot(*zip(*edge), linestyle=linestyle, label=name, **common)
            dominated = [p for p in points if p not in edge]
            if dominated:  # settings off the frontier: the same marker, no line, fainter
                quality.plot(*zip(*dominated), linestyle="none", alpha=0.45, **common)
        timed_items = timed_groups.get(name, [])
        speeds = sorted((x for x in timed_items if x.get("speedup")), key=lambda x: x["compute_fraction"])
        if speeds:
            timed = True
            xs = [x["compute_fraction"] for x in speeds]
            ys = [x["speedup"] for x in speeds]
            spread = spread or any(x.get("timed_pairs", 0) > 1 for x in speeds)
            speed.errorbar(xs, ys, yerr=_error_bars(speeds), linestyle=linestyle, capsize=3, label=name, **common)
    quality.set_xlabel("compute fraction (block work run / uncached)")
    quality.set_ylabel("PSNR against uncached (dB, higher is better)")
    quality.set_title("quality: Pareto frontiers (dashed: peers, dotted: baseline)")
    speed.set_xlabel("compute fraction (block work run / uncached)")
    speed.set_ylabel("wall-clock speedup over uncached")
    speed.set_title("speed: median of run pairs (bars: slowest to fastest pair)")
    if fractions:
        grid = np.linspace(max(min(fractions) * 0.9, 0.05), min(max(fractions) * 1.1, 1.0), 50)  # the data's span
        speed.plot(grid, 1 / grid, color="0.6", linestyle=(0, (4, 4)), linewidth=1, label="ideal: 1 / fraction")
        speed.axhline(1.0, color="0.8", linewidth=1)
    if not timed:
        speed.text(0.5, 0.5, "not timed (eval --runs 0)", ha="center", va="center", transform=speed.transAxes)
    elif not spread:
        speed.text(0.02, 0.97, "each speedup timed once: no run-to-run spread", ha="left", va="top",
                   transform=speed.transAxes, fontsize=9, color="0.3")  # fmt: skip
    for ax in (quality, speed):
        ax.grid(alpha=0.3)
    handles, labels = quality.get_legend_handles_labels()
    for handle, label in zip(*speed.get_legend_handles_labels()):  # the ideal, and methods timed but not swept
        if label not in labels:
            handles, labels = handles + [handle], labels + [label]
    # as many columns as the longest label leaves room for on the 12-inch figure (a marker and about 0.075 in/char)
    columns = max(1, min(6, len(labels), int(11.5 / (0.075 * (max(map(len, labels), default=1) + 6)))))
    fig.legend(handles, labels, loc="lower center", ncol=columns, fontsize=10, frameon=False)
    fig.suptitle(title)
    legend = (
        0.25 * math.ceil(len(labels) / columns) + 0.1
    )  # inches below the panels: the figure grows, they do not shrink
    fig.set_size_inches(12, 5.4 + legend)
    fig.tight_layout(rect=(0, legend / (5.4 + legend), 1, 1))
    return fig


def _by_group(lines: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for line in lines:
        if _plotted(line):
            groups[line.get("group", line["name"])].append(line)
    return groups


def _error_bars(lines: list[dict]) -> list[list[float]]:
    """[below, above] each line's speedup: down to its slowest run pair and up to its fastest (0 without runs)."""
    below = [max(0.0, x["speedup"] - x["speedup_low"]) if x.get("speedup_low") is not None else 0.0 for x in lines]
    above = [max(0.0, x["speedup_high"] - x["speedup"]) if x.get("speedup_high") is not None else 0.0 for x in lines]
    return [below, above]


def pareto_plot(lines: list[dict], path: Path, title: str) -> Path:
    import matplotlib.pyplot as plt

    fig = pareto_figure(lines, title)
    fig.savefig(path)
    plt.close(fig)
    return path


def sample_grid(out: Path, lines: list[dict], path: Path, target: float = 2.0) -> Path | None:
    """Uncached beside each method at the target nearest `target`, first sample, captioned."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    chosen: dict[str, dict] = {}
    for line in lines:
        if "skipped" in line or line["target"] is None:
            continue
        best = chosen.get(line["name"])
        if best is None or abs(line["target"] - target) < abs(best["target"] - target):
            chosen[line["name"]] = line
    panels = [("uncached\n(reference)", out / "samples" / "uncached.png")]
    panels += [(f"{m['method']}\nfraction {m['compute_fraction']:.2f}, PSNR {_cell(m, 'psnr')}",
                out / "samples" / f"{_file_key(m['method'])}.png") for m in chosen.values()]  # fmt: skip
    panels = [(label, p) for label, p in panels if p.exists()]
    if len(panels) < 2:
        return None
    images = [np.asarray(Image.open(p).convert("RGB")) for _, p in panels]
    wide = images[0].shape[1] > 2 * images[0].shape[0]  # a video's frame strip: one panel per row
    cols = 1 if wide else min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    aspect = images[0].shape[1] / images[0].shape[0]
    width = 3.0 * min(aspect, 4)  # inches per panel; a video strip wider than 4:1 gets 12 and is shown that wide
    height = width / aspect + 0.9  # the image at that width, and two caption lines
    fig, axes = plt.subplots(rows, cols, figsize=(cols * width, rows * height), dpi=100, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (label, _), image in zip(axes.flat, panels, images):
        ax.imshow(image, interpolation="nearest")
        title = "\n".join(textwrap.fill(part, 30) for part in label.split("\n"))
        ax.set_title(title, fontsize=13)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------------- the page
def _embed(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _prompts(rows: list[dict]) -> list[tuple[int, int | None, str]]:
    """(sample, seed, prompt) of every scored sample, from the uncached rows."""
    found = {r["sample"]: (r["sample"], r.get("seed"), r.get("prompt", "?")) for r in rows
             if r["method"] == "uncached" and r["sample"] >= 0}  # fmt: skip
    return [found[k] for k in sorted(found)]


def _facts(header: dict, rows: list[dict]) -> dict:
    """What the page says above a model's table: steps, samples, timing, memory source."""
    timed = [r for r in rows if r["method"] != "uncached" and r.get("seconds_runs")]
    runs = max((len(r["seconds_runs"]) for r in timed), default=0)
    timed_samples = len({r["sample"] for r in timed})
    if runs:
        timing = (f"timed on {timed_samples} sample(s), {runs} run(s) of each method, each run beside an uncached "
                  "run, after a warm-up of each")  # fmt: skip
    elif any(r.get("seconds") for r in rows if r["method"] != "uncached"):
        timing = "timed without per-run times (results written before they were recorded): no spread"
    else:
        timing = "not timed (eval --runs 0): no speedups"
    sources = {r.get("memory_source") for r in rows if r.get("memory_source")}
    memory = "; ".join(MEMORY_SOURCES.get(s, s) for s in sorted(sources)) or "not recorded by this eval"
    samples = len({r["sample"] for r in rows if r["sample"] >= 0})
    return {"steps": header["steps"], "samples": samples, "timing": timing, "memory": memory}


def write_report(dirs: list[str | os.PathLike], out: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """report.md and report.html (self-contained) for one or more result directories."""
    dirs = [Path(d) for d in dirs]
    target = Path(out) if out else dirs[0]
    results = {}
    for d in dirs:  # every input checked before anything is written
        header, rows = read_rows(d / RESULTS)
        if header is None:
            raise ValueError(f"{d} has no {RESULTS}; run dit-cache eval --out {d} first")
        results[d] = header, rows
    check_output_dir(target)
    md = ["# dit-cache evaluation", ""]
    body = ["<h1>dit-cache evaluation</h1>"]
    for d in dirs:
        header, rows = results[d]
        lines, reference = summarize(rows), reference_line(rows)
        model = header["model"]
        plot = pareto_plot(lines, target / f"pareto-{_file_key(model)}.png", f"{model}: quality and speed")
        grid = sample_grid(d, lines, target / f"samples-{_file_key(model)}.png")
        facts = _facts(header, rows)
        unavailable = next((x["lpips_unavailable"] for x in lines if x.get("lpips_unavailable")), None)
        note = f"LPIPS unavailable: {unavailable}" if unavailable else ""
        intro = (f"{facts['steps']} steps; {facts['samples']} samples scored against the uncached output of the same "
                 f"prompt and seed; {facts['timing']}. Peak memory: {facts['memory']}.")  # fmt: skip
        prompts, columns = _prompts(rows), shown_columns(lines)
        md += [f"## {model}", "", intro, "", f"![quality and speed]({plot.name})", "",
               markdown_table(lines, reference), "", note, "", "Columns:", ""]  # fmt: skip
        md += [f"- `{c}`: {DEFINITIONS[c]}" for c in columns] + ["", "Prompts (sample, seed, prompt):", ""]
        md += [f"{s}. seed {seed}: {p}" for s, seed, p in prompts] + [""]
        if grid:
            md += [f"![samples]({grid.name})", ""]
        body += [f"<h2>{html.escape(model)}</h2>", f"<p>{html.escape(intro)}</p>",
                 _embed(plot, f"{model}: PSNR and speedup against compute fraction"),
                 _html_table(lines, reference), f"<p class='note'>{html.escape(note)}</p>" if note else "",
                 "<details open><summary>Columns</summary><dl>",
                 *(f"<dt>{c}</dt><dd>{html.escape(DEFINITIONS[c])}</dd>" for c in columns), "</dl></details>",
                 "<h3>Prompts</h3><table class='prompts'><tr><th>sample</th><th>seed</th><th>prompt</th></tr>",
                 *(f"<tr><td>{s}</td><td>{seed}</td><td>{html.escape(p)}</td></tr>" for s, seed, p in prompts),
                 "</table>"]  # fmt: skip
        if grid:
            body += ["<h3>Samples (first prompt)</h3>", _embed(grid, f"{model}: samples")]
    md_path = target / "report.md"
    md_path.write_text("\n".join(md))
    html_path = target / "report.html"
    html_path.write_text(
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>dit-cache evaluation</title>"
        f"<style>{_STYLE}</style></head><body>{''.join(body)}</body></html>"
    )
    return md_path, html_path


_STYLE = (
    "body{font-family:sans-serif;max-width:1240px;margin:1.5em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 5px}"
    "td{text-align:right;white-space:nowrap}td:first-child{text-align:left;white-space:nowrap}th{background:#f2f2f2;font-size:12px}"
    "tr.reference td{font-weight:bold;background:#f7f7e8}tr.skipped td{color:#777}"
    "table.prompts td{text-align:left}img{max-width:100%;display:block;margin:0.5em 0}"
    "dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;font-size:13px}dt{font-family:monospace}"
    "dd{margin:0}summary{cursor:pointer;font-weight:bold}.note{font-size:13px;color:#555}"
)


def _html_table(lines: list[dict], reference: dict | None) -> str:
    columns = shown_columns(lines)
    head = "".join(f"<th>{c.replace('_', ' ')}</th>" for c in columns)
    rows = []
    for line in ([reference] if reference else []) + lines:
        if "skipped" in line:
            rows.append(f"<tr class='skipped'><td>{html.escape(line['method'])}</td><td>{_target(line['target'])}</td>"
                        f"<td colspan='{len(columns) - 2}' style='text-align:left'>skipped: "
                        f"{html.escape(line['skipped'])}</td></tr>")  # fmt: skip
            continue
        kind = " class='reference'" if line["family"] == "reference" else ""
        cells = [html.escape(_cell(line, c)).replace(":", ":<wbr>") for c in columns]  # peer:<wbr>NAME may wrap
        rows.append(f"<tr{kind}>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"
