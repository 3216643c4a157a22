"""`dit-cache report DIR...`: Markdown and a self-contained HTML page (images embedded) from evaluation results:
a table per model, a Pareto plot of quality against speedup with one line per method, side-by-side samples."""

from __future__ import annotations

import base64
import html
import math
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from .runner import RESULTS, _file_key, check_output_dir, read_rows

PSNR_CAP = 100.0  # identical outputs have infinite PSNR; averages cap them here
COLUMNS = ("method", "target", "compute_fraction", "off_target", "speedup", "transformer_speedup", "efficiency",
           "transformer_efficiency", "psnr", "ssim", "lpips", "temporal_psnr", "peak_memory_mb", "samples")  # fmt: skip


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(values)) if values else None


def summarize(rows: list[dict]) -> list[dict]:
    """One line per method: means over samples; speedup from the timed samples (reference / method seconds)."""
    reference = {r["sample"]: r for r in rows if r["method"] == "uncached"}
    by_method: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        if row["method"] != "uncached":
            by_method[row["method"]].append(row)
    lines = []
    for key, items in by_method.items():
        first = items[0]
        if "skipped" in first:
            lines.append({"method": key, "family": first["family"], "name": first["name"], "target": first["target"],
                          "skipped": first["skipped"]})  # fmt: skip
            continue
        fraction = _mean(r["compute_fraction"] for r in items)
        speedup = _ratio(reference, items, "seconds")
        inside = _ratio(reference, items, "transformer_seconds")
        lines.append(
            {
                "method": key, "family": first["family"], "name": first["name"], "target": first["target"],
                "compute_fraction": fraction, "off_target": _off_target(items), "speedup": speedup,
                "transformer_speedup": inside,
                "efficiency": speedup * fraction if speedup and fraction else None,
                "transformer_efficiency": inside * fraction if inside and fraction else None,
                "psnr": _mean(min(r["psnr"], PSNR_CAP) for r in items), "ssim": _mean(r["ssim"] for r in items),
                "lpips": _mean(r.get("lpips") for r in items),
                "temporal_psnr": _mean(min(r["temporal_psnr"], PSNR_CAP) if r.get("temporal_psnr") else None
                                       for r in items),
                "peak_memory_mb": _mean(r.get("peak_memory_mb") for r in items), "samples": len(items),
                "lpips_unavailable": first.get("lpips_unavailable"),
            }
        )  # fmt: skip
    lines.sort(key=lambda x: (x["family"] != "dit_cache", x["name"], x["target"] or 0))
    return lines


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


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def markdown_table(lines: list[dict]) -> str:
    rows = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for line in lines:
        if "skipped" in line:
            rows.append(f"| {line['method']} | {_cell(line['target'])} | skipped: {line['skipped']} |")
            continue
        rows.append("| " + " | ".join(_cell(line.get(c)) for c in COLUMNS) + " |")
    return "\n".join(rows)


def pareto_plot(lines: list[dict], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    groups: dict[str, list[dict]] = defaultdict(list)
    for line in lines:
        if "skipped" not in line and line.get("psnr") is not None:
            groups[line["name"]].append(line)
    for name, items in sorted(groups.items()):
        items.sort(key=lambda x: x.get("speedup") or 1 / (x["compute_fraction"] or 1))
        xs = [x.get("speedup") or 1 / x["compute_fraction"] for x in items]
        ys = [x["psnr"] for x in items]
        style = "-o" if items[0]["family"] == "dit_cache" else ("--s" if items[0]["family"] == "peer" else ":^")
        ax.plot(xs, ys, style, label=name)
    ax.set_xlabel("wall-clock speedup over uncached")
    ax.set_ylabel("PSNR vs uncached (dB)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def sample_grid(out: Path, lines: list[dict], path: Path, target: float = 2.0) -> Path | None:
    """Uncached beside each method at the target nearest `target`, first sample, labelled."""
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
    panels = [("uncached", out / "samples" / "uncached.png")]
    panels += [(f"{m['method']} (PSNR {m['psnr']:.1f})", out / "samples" / f"{_file_key(m['method'])}.png")
               for m in chosen.values()]  # fmt: skip
    panels = [(label, p) for label, p in panels if p.exists()]
    if len(panels) < 2:
        return None
    images = [np.asarray(Image.open(p).convert("RGB")) for _, p in panels]
    wide = images[0].shape[1] > 2 * images[0].shape[0]  # a video's frame strip: one panel per row
    cols = 1 if wide else min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    aspect = images[0].shape[1] / images[0].shape[0]
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.6 * min(aspect, 4), rows * 2.9), dpi=100, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (label, _), image in zip(axes.flat, panels, images):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(label, fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _embed(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}">'


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
        lines = summarize(rows)
        model = header["model"]
        plot = pareto_plot(lines, target / f"pareto-{_file_key(model)}.png", f"{model}: quality vs speedup")
        grid = sample_grid(d, lines, target / f"samples-{_file_key(model)}.png")
        table = markdown_table(lines)
        unavailable = next((x["lpips_unavailable"] for x in lines if x.get("lpips_unavailable")), None)
        note = f"LPIPS unavailable: {unavailable}" if unavailable else ""
        md += [f"## {model}", "", f"{header['steps']} steps; {len({r['sample'] for r in rows if r['sample'] >= 0})} "
               "samples; speedup = median wall time of the uncached pipeline call over the cached one, the two timed "
               "alternately run by run; transformer_speedup = the same for the time spent inside the transformer (what "
               "caching can shorten: it leaves out text encoding, the scheduler and VAE decoding); efficiency = speedup "
               "x compute fraction, transformer_efficiency = transformer_speedup x compute fraction.", "", table, "", note, "", f"![pareto]({plot.name})", ""]  # fmt: skip
        if grid:
            md += [f"![samples]({grid.name})", ""]
        body += [f"<h2>{html.escape(model)}</h2>", f"<p>{header['steps']} steps. {html.escape(note)}</p>",
                 _html_table(lines), _embed(plot)]  # fmt: skip
        if grid:
            body.append(_embed(grid))
    md_path = target / "report.md"
    md_path.write_text("\n".join(md))
    html_path = target / "report.html"
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse;"
             "font-size:12px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}img{max-width:100%}")  # fmt: skip
    html_path.write_text(
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>dit-cache evaluation</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>"
    )
    return md_path, html_path


def _html_table(lines: list[dict]) -> str:
    head = "".join(f"<th>{c}</th>" for c in COLUMNS)
    rows = []
    for line in lines:
        if "skipped" in line:
            rows.append(f"<tr><td>{html.escape(line['method'])}</td><td colspan='{len(COLUMNS) - 1}'>"
                        f"skipped: {html.escape(line['skipped'])}</td></tr>")  # fmt: skip
        else:
            rows.append("<tr>" + "".join(f"<td>{html.escape(_cell(line.get(c)))}</td>" for c in COLUMNS) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"
