"""The report from synthetic results: what the plot draws (no infinite value, a distinct marker per method, the
speed panel's run-to-run spread) and what the table says (the uncached row with its times, identical rows)."""

import json
import math

import numpy as np
import pytest

from dit_cache.eval.report import (
    COLUMNS,
    frontier,
    markdown_table,
    method_styles,
    pareto_figure,
    reference_line,
    summarize,
    write_report,
)
from dit_cache.eval.runner import RESULTS, dumps, read_rows

PROMPTS = ["a red circle on stripes", "a green square on dots"]
UNCACHED_RUNS = [1.0, 1.1, 0.9]


def _uncached(sample):
    timed = sample == 0
    return {"method": "uncached", "sample": sample, "family": "reference", "name": "uncached", "target": 1.0,
            "prompt": PROMPTS[sample], "seed": sample, "compute_fraction": 1.0,
            "seconds": 5.0 if timed else None, "transformer_seconds": 0.8 if timed else None,
            "peak_memory_mb": 512.0, "memory_source": "cpu-rss",
            "seconds_runs": UNCACHED_RUNS if timed else None}  # fmt: skip


def _row(method, name, family, target, fraction, psnr, sample, cached_runs=None):
    row = {"method": method, "sample": sample, "family": family, "name": name, "target": target,
           "prompt": PROMPTS[sample], "seed": sample, "compute_fraction": fraction, "psnr": psnr, "ssim": 0.9,
           "lpips": None, "peak_memory_mb": 530.0, "memory_source": "cpu-rss"}  # fmt: skip
    if target is not None:
        row["off_target"] = False
    if cached_runs and sample == 0:
        row |= {"seconds": float(np.median(cached_runs)), "transformer_seconds": 0.3, "seconds_runs": cached_runs,
                "uncached_seconds": float(np.median(UNCACHED_RUNS)), "uncached_transformer_seconds": 0.8,
                "uncached_seconds_runs": UNCACHED_RUNS}  # fmt: skip
    return row


def _rows(extra_names=0, runs=True):
    rows = [_uncached(0), _uncached(1)]
    for s in (0, 1):
        rows += [
            _row("magcache@2", "magcache", "dit_cache", 2.0, 0.5, 30.0 + s, s, [0.5, 0.5, 0.6] if runs else None),
            _row("magcache@3", "magcache", "dit_cache", 3.0, 0.34, 26.0, s, [0.4, 0.35, 0.36] if runs else None),
            _row("fora:interval=1", "fora", "dit_cache", None, 1.0, math.inf, s, [1.0, 1.0, 1.0] if runs else None),
            _row("taylorseer@2", "taylorseer", "dit_cache", 2.0, 0.5, math.inf if s else 33.0, s),
            _row("peer:diffusers-fbcache@2", "diffusers-fbcache", "peer", 2.0, 0.52, 24.0, s, [0.7, 0.6, 0.65]),
            _row("uniform@2", "uniform", "baseline", 2.0, 0.5, 28.0, s),
        ]
        rows += [_row(f"p{i}@2", f"p{i}", "dit_cache", 2.0, 0.5, 20.0 + i, s) for i in range(extra_names)]
    rows.append({"method": "cfg@3", "sample": -1, "family": "dit_cache", "name": "cfg", "target": 3.0,
                 "skipped": "cfg: speedup=3.0 is out of reach"})  # fmt: skip
    return rows


def _plotted_lines(ax):
    return [line for line in ax.get_lines() if not line.get_label().startswith("_")]


def test_plot_has_no_infinite_value_and_leaves_identical_rows_off():
    import matplotlib.pyplot as plt

    lines = summarize(_rows())
    fig = pareto_figure(lines, "synthetic")
    try:
        quality, speed = fig.axes
        for ax in (quality, speed):
            for artist in ax.get_lines():
                assert np.isfinite(np.asarray(artist.get_xydata(), dtype=float)).all(), artist.get_label()
            assert np.isfinite(ax.get_ylim()).all() and np.isfinite(ax.get_xlim()).all()
        labels = {line.get_label() for line in _plotted_lines(quality)}
        assert "fora" not in labels  # bit-identical on every sample: in the table as "identical", not plotted
        assert {"magcache", "taylorseer", "diffusers-fbcache", "uniform"} <= labels
        assert quality.get_ylim()[1] < 40  # neither inf nor the old cap of 100 stretches the axis
        # taylorseer: identical on one sample of two, plotted at the mean of the one that differs
        taylor = next(line for line in _plotted_lines(quality) if line.get_label() == "taylorseer")
        assert taylor.get_xydata().tolist() == [[0.5, 33.0]]
    finally:
        plt.close(fig)


def test_every_method_has_its_own_marker():
    import matplotlib.pyplot as plt

    lines = summarize(_rows(extra_names=18))  # 22 methods: more than the filled markers, hollow ones follow
    fig = pareto_figure(lines, "synthetic")
    try:
        drawn = _plotted_lines(fig.axes[0])
        styles = [(line.get_marker(), line.get_fillstyle()) for line in drawn]
        assert len(drawn) == 22 and len(set(styles)) == 22
        legend = fig.legends[0]
        assert {t.get_text() for t in legend.get_texts()} >= {line.get_label() for line in drawn}
    finally:
        plt.close(fig)
    with pytest.raises(ValueError, match="31 methods to plot but only 30 distinct markers"):
        method_styles([f"m{i}" for i in range(31)])


def test_frontier_keeps_only_settings_no_other_beats():
    points = [(0.5, 30.0), (0.6, 29.0), (0.33, 25.0), (0.4, 31.0), (0.4, 28.0), (1.0, 31.0)]
    assert frontier(points) == [(0.33, 25.0), (0.4, 31.0)]


def test_speed_panel_bars_span_the_run_pairs():
    import matplotlib.pyplot as plt

    lines = {x["method"]: x for x in summarize(_rows())}
    magcache = lines["magcache@2"]
    # run pairs: 1.0 / 0.5, 1.1 / 0.5, 0.9 / 0.6
    assert magcache["speedup_low"] == pytest.approx(1.5) and magcache["speedup_high"] == pytest.approx(2.2)
    assert magcache["speedup"] == pytest.approx(2.0) and magcache["timed_pairs"] == 3
    fig = pareto_figure(list(lines.values()), "synthetic")
    try:
        speed = fig.axes[1]
        segments = [seg for c in speed.collections for seg in c.get_segments()]
        bar = next(seg for seg in segments if seg[0][0] == 0.5 and seg[0][1] == pytest.approx(1.5))
        assert bar[1][1] == pytest.approx(2.2)
        assert not [t for t in speed.texts if "once" in t.get_text()]
    finally:
        plt.close(fig)


def test_speed_panel_says_when_there_is_no_spread():
    import matplotlib.pyplot as plt

    rows = _rows(runs=False)
    for row in rows:  # results written before per-run times were recorded: medians only
        row.pop("seconds_runs", None)
        row.pop("uncached_seconds_runs", None)
    fig = pareto_figure(summarize(rows), "synthetic")
    try:
        assert any("timed once: no run-to-run spread" in t.get_text() for t in fig.axes[1].texts)
    finally:
        plt.close(fig)


def test_table_has_the_uncached_row_with_its_times_and_says_identical():
    rows = _rows()
    table = markdown_table(summarize(rows), reference_line(rows)).splitlines()
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header == [c for c in COLUMNS if c not in ("lpips", "temporal_psnr")]  # empty on every row: left out
    cells = {}
    for line in table[2:]:
        parts = [c.strip() for c in line.strip("|").split("|")]
        cells[parts[0]] = dict(zip(header, parts))
    assert table[2].startswith("| uncached |")
    uncached = cells["uncached"]
    # seconds: the uncached runs timed beside the methods (what the speedups divide), not its own earlier 5 s;
    # transformer seconds: no such runs in these rows, so its own
    assert uncached["seconds"] == "1.000" and uncached["transformer_seconds"] == "0.800"
    assert uncached["peak_memory_mb"] == "512.0" and uncached["psnr"] == "reference" and uncached["samples"] == "2"
    assert cells["fora:interval=1"]["psnr"] == "identical"
    assert cells["taylorseer@2"]["psnr"] == "33.000 (1/2 identical)"
    assert cells["magcache@2"]["psnr"] == "30.500" and cells["magcache@2"]["seconds"] == "0.500"
    assert cells["magcache@2"]["speedup_range"] == "1.50 - 2.20" and cells["magcache@2"]["uncached_seconds"] == "1.000"
    assert "inf" not in "\n".join(table)


def test_report_page_has_definitions_prompts_and_the_memory_source(tmp_path):
    path = tmp_path / RESULTS
    header = {"model": "zoo:synthetic", "prompts_sha": "x", "steps": 30, "call_kwargs": {}}
    path.write_text("\n".join(dumps(r) for r in [{"header": header}, *_rows()]) + "\n")
    assert read_rows(path)[1][2]["psnr"] == 30.0  # the file round-trips (inf rows as strict JSON)
    md, page = write_report([tmp_path])
    text = page.read_text()
    for column in COLUMNS:  # every column shown is defined; the empty ones are neither shown nor defined
        assert (f"<dt>{column}</dt>" in text) == (column not in ("lpips", "temporal_psnr"))
        assert (f"<th>{column.replace('_', ' ')}</th>" in text) == (column not in ("lpips", "temporal_psnr"))
    for prompt in PROMPTS:
        assert prompt in text and prompt in md.read_text()
    assert "peak resident set size" in text  # the memory source, named
    assert "<tr class='reference'><td>uncached</td>" in text
    assert ">identical<" in text and ">inf<" not in text
    assert "timed on 1 sample(s), 3 run(s) of each method" in text
    json.dumps(summarize(read_rows(path)[1]), allow_nan=False)  # the summary holds no non-finite number


def test_options_beyond_the_knob_plot_as_a_method_of_their_own():
    import matplotlib.pyplot as plt

    rows = [_uncached(0), _uncached(1)]
    for s in (0, 1):
        rows += [
            _row("lemica@2", "lemica", "dit_cache", 2.0, 0.5, 30.0, s),
            _row("lemica@3", "lemica", "dit_cache", 3.0, 0.34, 25.0, s),
            _row("lemica:forecast=1,speedup=2", "lemica", "dit_cache", None, 0.5, 36.0, s),
            _row("lemica:forecast=1,speedup=3", "lemica", "dit_cache", None, 0.34, 29.0, s),
        ]
    fig = pareto_figure(summarize(rows), "synthetic")
    try:  # as in the equal-compute table: two frontiers, not one frontier of the better points of both
        drawn = {line.get_label(): line.get_xydata().tolist() for line in _plotted_lines(fig.axes[0])}
        assert drawn == {"lemica": [[0.34, 25.0], [0.5, 30.0]], "lemica:forecast=1": [[0.34, 29.0], [0.5, 36.0]]}
    finally:
        plt.close(fig)


def test_speed_panel_can_show_a_separate_timed_run():
    import matplotlib.pyplot as plt

    sweep = summarize(_rows(runs=False))  # quality from an untimed sweep
    timed = summarize([_uncached(0), _row("magcache@2", "magcache", "dit_cache", 2.0, 0.5, 31.0, 0, [0.5, 0.5, 0.6]),
                       _row("teacache@2", "teacache", "dit_cache", 2.0, 0.5, 29.0, 0, [0.6, 0.6, 0.6])])  # fmt: skip
    fig = pareto_figure(sweep, "synthetic", speed_lines=timed)
    try:
        quality, speed = fig.axes
        assert "teacache" not in {line.get_label() for line in _plotted_lines(quality)}  # timed, not swept
        magcache = next(line for line in _plotted_lines(quality) if line.get_label() == "magcache")
        assert magcache.get_xydata().tolist() == [[0.34, 26.0], [0.5, 30.5]]  # the sweep's points, not the timed one's
        bars = {c.get_label(): c for c in speed.containers}
        assert set(bars) == {"magcache", "teacache"}
        assert bars["magcache"].lines[0].get_xydata().tolist() == [[0.5, pytest.approx(2.0)]]
        timed_marker = bars["magcache"].lines[0].get_marker()
        assert timed_marker == magcache.get_marker()  # a method keeps its marker in both panels
        legend = {t.get_text() for t in fig.legends[0].get_texts()}
        assert {"magcache", "teacache", "uniform"} <= legend
    finally:
        plt.close(fig)
