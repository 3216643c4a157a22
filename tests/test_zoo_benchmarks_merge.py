"""benchmarks/zoo_benchmarks.py --collect --merge: methods of a new part added to a committed sweep JSON, whose
rows are kept as they are, only when the new part provably scored against the same uncached references."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from dit_cache.eval.runner import RESULTS, ResultsFile

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "zoo_benchmarks.py"
PLAN = {"model": "zoo:shapes-video", "prompts_sha": "abc", "steps": 30, "call_kwargs": {}}


@pytest.fixture(scope="module")
def zoo_benchmarks():
    spec = importlib.util.spec_from_file_location("zoo_benchmarks", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _uncached(seeds=(0, 1)):
    return [{"method": "uncached", "sample": s, "family": "reference", "name": "uncached", "prompt": f"p{s}",
             "seed": s, "target": 1.0, "compute_fraction": 1.0, "seconds": None} for s in seeds]  # fmt: skip


def _method(key, name, family, fraction, psnrs):
    return [{"method": key, "sample": s, "family": family, "name": name, "prompt": f"p{s}", "seed": s, "target": 2.0,
             "compute_fraction": fraction, "psnr": p, "ssim": 0.99, "seconds": None} for s, p in enumerate(psnrs)]  # fmt: skip


def _committed():
    rows = _uncached() + _method("taylorseer@2", "taylorseer", "dit_cache", 0.5, [40.0, 42.0])
    rows += _method("peer:diffusers-taylorseer@2", "diffusers-taylorseer", "peer", 0.5, [30.0, 32.0])
    header = {**PLAN, "profile": {"source": "/elsewhere/profile.json", "in_sample": False}}
    return {"command": "zoo_benchmarks.py --collect", "header": header, "rows": rows}


def test_merge_keeps_committed_rows_and_adds_only_new_methods(zoo_benchmarks):
    committed = _committed()
    new = _uncached() + _method("taylorseer@2", "taylorseer", "dit_cache", 0.5, [40.0, 42.0])
    new += _method("peer:diffusers-fbcache@2", "diffusers-fbcache", "peer", 0.45, [20.0, 21.0])
    crash = {"method": "peer:diffusers-pab@2", "sample": -1, "family": "peer", "name": "diffusers-pab", "error": "E"}
    header, rows = zoo_benchmarks.merge(committed, dict(PLAN), new + [crash])
    assert rows == committed["rows"] + new[-2:] + [crash]  # the rerun method and the uncached rows: not twice
    assert header["profile"] == committed["header"]["profile"]


@pytest.mark.parametrize(
    "new, message",
    [
        (_uncached() + _method("taylorseer@2", "taylorseer", "dit_cache", 0.5, [40.0, 42.5]), "scores differently"),
        (_uncached() + _method("taylorseer@2", "taylorseer", "dit_cache", 0.5, [40.0]), "scores differently"),
        (_uncached() + _method("peer:x@2", "x", "peer", 0.5, [1.0, 2.0]), "nothing shows"),
        (_uncached((0, 2)) + _method("taylorseer@2", "taylorseer", "dit_cache", 0.5, [40.0, 42.0]), "other samples"),
    ],
    ids=["other-psnr", "fewer-samples", "no-shared-method", "other-seeds"],
)
def test_merge_refuses_rows_not_shown_to_share_the_references(zoo_benchmarks, new, message):
    with pytest.raises(SystemExit, match=message):
        zoo_benchmarks.merge(_committed(), dict(PLAN), new)


def test_merge_refuses_another_plan(zoo_benchmarks):
    rows = _uncached() + _method("taylorseer@2", "taylorseer", "dit_cache", 0.5, [40.0, 42.0])
    with pytest.raises(SystemExit, match="another plan"):
        zoo_benchmarks.merge(_committed(), {**PLAN, "steps": 20}, rows)


def test_collect_merge_rewrites_the_json_with_the_new_frontier(zoo_benchmarks, tmp_path, monkeypatch):
    results = tmp_path / "results"
    results.mkdir()
    (results / "zoo_shapes-video.json").write_text(json.dumps(_committed()))
    part = tmp_path / "runs" / "shapes-video" / "peers3"
    part.mkdir(parents=True)
    new = _uncached() + _method("taylorseer@2", "taylorseer", "dit_cache", 0.5, [40.0, 42.0])
    new += _method("peer:diffusers-fbcache@2", "diffusers-fbcache", "peer", 0.5, [35.0, 37.0])
    file = ResultsFile(part / RESULTS, dict(PLAN))
    for row in new:
        file.append(row)
    argv = ["zoo_benchmarks.py", "--models", "shapes-video", "--out", str(tmp_path / "runs"), "--results",
            str(results), "--collect", "--merge"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    zoo_benchmarks.main()
    merged = json.loads((results / "zoo_shapes-video.json").read_text())
    assert merged["earlier_commands"] == ["zoo_benchmarks.py --collect"]
    assert merged["rows"] == _committed()["rows"] + new[-2:]
    best = merged["equal_compute"]["best"]["0.5"]
    assert best["best_peer"] == {"method": "peer:diffusers-fbcache", "psnr": 36.0}  # the new peer beats the old one
    assert best["margin_db"] == pytest.approx(41.0 - 36.0)
