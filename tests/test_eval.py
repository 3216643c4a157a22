"""Evaluation: metrics against hand-computed values, a resumable sweep on a tiny saved pipeline, the report."""

import base64
import io
import json
import math
import re

import numpy as np
import pytest

from dit_cache.cli import main
from dit_cache.eval import metrics
from dit_cache.eval.runner import RESULTS, EvalPlan, evaluate, read_rows
from dit_cache.testing import TINY_TEXT_CALL

PROMPTS = ["a red circle", "a blue square on dots"]


def test_psnr_ssim_temporal_by_hand():
    ref = np.zeros((2, 8, 8, 3), dtype=np.float32)
    test = ref + 0.1  # MSE 0.01 -> 20 dB
    assert math.isclose(metrics.psnr(ref, test), 20.0, rel_tol=1e-6)
    assert metrics.psnr(ref, ref) == math.inf
    assert metrics.frame_psnr(ref, test) == pytest.approx([20.0, 20.0])
    rng = np.random.default_rng(0)
    image = rng.random((16, 16, 3)).astype(np.float32)
    assert metrics.ssim(image, image) == pytest.approx(1.0)
    assert metrics.ssim(image, 1 - image) < 0.5
    # the same per-frame offset everywhere: frame differences are identical -> infinite temporal PSNR
    video = rng.random((3, 8, 8, 3)).astype(np.float32) * 0.5
    assert metrics.temporal_psnr(video, video + 0.1) > 150  # equal up to float32 rounding
    moved = video.copy()
    moved[2] += 0.2  # one frame jumps: difference error 0.2 on two of the differences -> MSE 0.02
    assert metrics.temporal_psnr(video, moved) == pytest.approx(10 * math.log10(4 / 0.02), rel=1e-4)
    assert metrics.temporal_psnr(image, image) is None
    with pytest.raises(ValueError, match="different shapes"):
        metrics.psnr(ref, ref[:1])


def test_lpips_is_reported_unavailable_rather_than_faked():
    ok, reason = metrics.lpips_status()
    if ok:
        pytest.skip("LPIPS weights are available on this machine")
    assert reason
    assert metrics.lpips_distance(np.zeros((8, 8, 3)), np.ones((8, 8, 3))) is None
    assert metrics.compare(np.zeros((8, 8, 3)), np.ones((8, 8, 3)))["lpips"] is None


@pytest.fixture(scope="module")
def pipe(saved_pipeline):
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(saved_pipeline)


def _plan(**kw):
    base = dict(model="tiny", prompts=PROMPTS, samples=2, steps=4, call_kwargs=TINY_TEXT_CALL,
                policies=["uniform", "fora"], peers=["diffusers-fbcache"], targets=[2.0], runs=1)  # fmt: skip
    base.update(kw)
    return EvalPlan(**base)


def test_sweep_resumes_without_recomputing_finished_rows(pipe, tmp_path, monkeypatch):
    import dit_cache.eval.runner as runner

    measured, interrupt = [], {"at": 3}
    original = runner._measure

    def counting(method, *args, **kwargs):
        measured.append(method.key)
        if len(measured) == interrupt["at"]:
            raise KeyboardInterrupt  # interrupted in the middle of the second method
        return original(method, *args, **kwargs)

    monkeypatch.setattr(runner, "_measure", counting)
    with pytest.raises(KeyboardInterrupt):
        evaluate(pipe, _plan(), tmp_path, progress=False)
    _, partial = read_rows(tmp_path / RESULTS)
    done = {(r["method"], r["sample"]) for r in partial}
    assert ("uniform@2", 0) in done and ("uniform@2", 1) in done and ("fora@2", 0) not in done
    measured.clear()
    interrupt["at"] = None
    evaluate(pipe, _plan(), tmp_path, progress=False)
    assert measured == ["fora@2", "fora@2", "peer:diffusers-fbcache@2", "peer:diffusers-fbcache@2"]
    _, rows = read_rows(tmp_path / RESULTS)
    assert len(rows) == 2 + 3 * 2  # references + three methods x two samples, nothing twice
    by_key = {(r["method"], r["sample"]): r for r in rows}
    assert by_key[("uniform@2", 0)]["compute_fraction"] == 0.5
    assert by_key[("fora@2", 1)]["compute_fraction"] == 0.5
    assert 0.3 < by_key[("peer:diffusers-fbcache@2", 0)]["compute_fraction"] < 0.7
    assert by_key[("uniform@2", 0)]["seconds"] > 0 and by_key[("uniform@2", 1)]["seconds"] is None  # timed: sample 0


def test_results_of_another_plan_are_not_mixed(pipe, tmp_path):
    evaluate(pipe, _plan(policies=["uniform"], peers=[], samples=1), tmp_path, progress=False)
    with pytest.raises(ValueError, match="another model or prompt set"):
        evaluate(pipe, _plan(prompts=["a cat"], policies=["uniform"], peers=[], samples=1), tmp_path, progress=False)


def test_report_is_self_contained_and_every_image_decodes(pipe, tmp_path):
    from PIL import Image

    from dit_cache.eval.report import write_report

    plan = _plan(policies=["uniform", "teacache:threshold=0.5"], peers=["diffusers-fbcache", "cachedit-dbcache"])
    evaluate(pipe, plan, tmp_path, progress=False)
    md, html = write_report([tmp_path])
    text = html.read_text()
    assert not re.search(r"(src|href)\s*=\s*[\"'](?!data:)", text)  # nothing fetched from elsewhere
    assert "<link" not in text and "<script" not in text
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text)
    assert len(images) == 2  # the Pareto plot and the sample grid
    for data in images:
        Image.open(io.BytesIO(base64.b64decode(data))).verify()
    assert "uniform@2" in md.read_text() and "pareto" in md.read_text()


def test_unavailable_peer_is_skipped_and_said(pipe, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "cache_dit" else real(name, *a))
    evaluate(pipe, _plan(policies=[], peers=["cachedit-dbcache"]), tmp_path, progress=False)
    _, rows = read_rows(tmp_path / RESULTS)
    skipped = [r for r in rows if r.get("skipped")]
    assert skipped and "cache-dit is not installed" in skipped[0]["skipped"]


def test_cli_bad_input(saved_pipeline, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\n")
    base = [
        "eval",
        "--model",
        str(saved_pipeline),
        "--prompts",
        str(prompts),
        "--call-kwargs",
        json.dumps(TINY_TEXT_CALL),
    ]
    cases = [
        (["--policies", "teacash", "--out", str(tmp_path / "a")], "unknown policy 'teacash'"),
        (["--peers", "deepcache", "--out", str(tmp_path / "b")], "unknown peer 'deepcache'"),
        (["--samples", "0", "--out", str(tmp_path / "c")], "--samples must be at least 1"),
        (["--out", str(prompts / "sub")], "cannot write to the output directory"),
    ]
    for extra, message in cases:
        assert main([*base, *extra]) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown zoo model 'nope'"):
        from dit_cache.eval import zoo

        zoo.path("nope")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_process_accelerate_launch_gives_the_rows_of_one_process(saved_pipeline, pipe, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` on CPU: samples are sharded, the main process merges."""
    import os
    import shutil
    import subprocess
    import sys

    if shutil.which("accelerate") is None:
        pytest.skip("accelerate is not installed")
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    common = ["--model", str(saved_pipeline), "--prompts", str(prompts), "--samples", "3", "--steps", "4",
              "--call-kwargs", json.dumps(TINY_TEXT_CALL), "--policies", "uniform", "fora", "--peers", "none",
              "--targets", "2", "--runs", "1", "--timing-samples", "0", "--no-progress"]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    launch = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port())]  # fmt: skip
    done = subprocess.run([*launch, "-m", "dit_cache.cli", "eval", *common, "--out", str(tmp_path / "two")],
                          env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert main(["eval", *common, "--out", str(tmp_path / "one")]) == 0
    assert sys.modules["dit_cache"]  # the in-process run above used the same package

    def rows(d):
        _, items = read_rows(d / RESULTS)
        keep = ("method", "sample", "prompt", "seed", "compute_fraction", "psnr", "ssim")
        return sorted((tuple(r.get(k) for k in keep) for r in items), key=str)

    assert (tmp_path / "two" / "results.rank1.jsonl").exists()
    assert rows(tmp_path / "two") == rows(tmp_path / "one")


def _strict_lines(path):
    """Every line of a results file parsed as strict JSON (no NaN / Infinity: other languages' parsers reject them)."""

    def refuse(token):
        raise ValueError(f"{token} is not JSON")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def test_torn_last_line_is_dropped_and_redone(pipe, tmp_path):
    plan = _plan(policies=["uniform"], peers=[], samples=2, runs=0, timing_samples=0)
    evaluate(pipe, plan, tmp_path, progress=False)
    path = tmp_path / RESULTS
    whole = _strict_lines(path)
    text = path.read_text()
    last = text.rstrip("\n").rsplit("\n", 1)[1]
    path.write_text(text[: len(text) - len(last) // 2 - 1])  # killed halfway through writing the last row
    evaluate(pipe, plan, tmp_path, progress=False)
    again = _strict_lines(path)  # every line whole again
    assert len(again) == len(whole)
    assert [(r.get("method"), r.get("sample")) for r in again] == [(r.get("method"), r.get("sample")) for r in whole]
    # a last row that lost only its newline is whole: kept, and the next row starts on a line of its own
    path.write_text(path.read_text().rstrip("\n"))
    evaluate(pipe, plan, tmp_path, progress=False)
    assert _strict_lines(path) == again


def test_identical_output_is_written_as_strict_json_and_read_back_as_inf(pipe, tmp_path):
    from dit_cache.eval.report import summarize

    plan = _plan(policies=["fora:interval=1"], peers=[], samples=1, runs=0, timing_samples=0)
    evaluate(pipe, plan, tmp_path, progress=False)
    lines = _strict_lines(tmp_path / RESULTS)
    written = next(r for r in lines if r.get("method") == "fora:interval=1")
    assert written["psnr"] is None and written["nonfinite"] == {"psnr": "inf"}  # every step computed: identical
    _, rows = read_rows(tmp_path / RESULTS)
    row = next(r for r in rows if r["method"] == "fora:interval=1")
    assert row["psnr"] == math.inf and "nonfinite" not in row
    assert summarize(rows)[0]["psnr"] == 100.0  # the report's cap for identical outputs


def test_cli_refuses_bad_input_before_loading_and_leaves_no_folder(saved_pipeline, tmp_path, capsys, monkeypatch):
    import dit_cache.cli as cli

    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\n")
    loads = []
    real_load = cli.load_pipeline
    monkeypatch.setattr(cli, "load_pipeline", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    base = ["eval", "--model", str(saved_pipeline), "--prompts", str(prompts), "--peers", "none", "--samples", "1"]
    cases = [
        (["--policies", "teacache:treshold=0.1"], "teacache has no option 'treshold' (in 'teacache:treshold=0.1'); "
         "did you mean threshold?"),
        (["--policies", "recorder"], "unknown policy 'recorder'"),
        (["--policies", "fora:interval=0"], "'fora:interval=0': "),
        (["--call-kwargs", "{bogus"], "--call-kwargs '{bogus' is not valid JSON"),
        (["--call-kwargs", "[1]"], "--call-kwargs must be a JSON object"),
    ]  # fmt: skip
    for i, (extra, message) in enumerate(cases):
        out = tmp_path / f"out{i}" / "nested"
        assert main([*base, *extra, "--out", str(out)]) == 2, extra
        err = capsys.readouterr().err
        assert message in err, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert not (tmp_path / f"out{i}").exists()
    assert not loads  # each of those was refused before any model was loaded
    # a pipeline argument the pipeline does not take: found once the pipeline is known, still before any folder
    call = dict(TINY_TEXT_CALL, bogus_kw=1)
    assert main([*base, "--policies", "uniform", "--call-kwargs", json.dumps(call), "--out", str(tmp_path / "k")]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # after the loading progress bars
    assert last.startswith("dit-cache: error: --call-kwargs: FluxPipeline takes no argument 'bogus_kw'; remove it")
    assert "Traceback" not in err
    assert not (tmp_path / "k").exists()
    # report: nothing to report on, nothing written
    assert main(["report", str(tmp_path / "none"), "--out", str(tmp_path / "rep")]) == 2
    assert "has no results.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "rep").exists() and not (tmp_path / "none").exists()


def test_demo_validates_its_policy_first_and_never_offers_internal_ones(tmp_path, capsys, monkeypatch):
    import dit_cache.cli as cli

    monkeypatch.setattr(cli, "load_pipeline", lambda *a, **k: pytest.fail("the model was loaded before validation"))
    out = tmp_path / "demo"
    assert main(["demo", "--policy", "typo", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "unknown policy 'typo'" in err and "magcache" in err and "recorder" not in err
    assert main(["demo", "--speedup", "1", "--out", str(out)]) == 2
    assert "--speedup must be above 1" in capsys.readouterr().err
    assert main(["demo", "--policy", "cfg", "--speedup", "3", "--out", str(out)]) == 2
    assert "--policy cfg --speedup 3: cfg: speedup=3.0 is out of reach" in capsys.readouterr().err
    assert not out.exists()
    assert main(["info"]) == 0
    policies = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("policies:"))
    assert "magcache" in policies and "recorder" not in policies


def test_demo_load_failure_names_the_demo_model_and_the_missing_package(tmp_path, monkeypatch):
    import importlib.util

    from diffusers import DiffusionPipeline

    def fail(*args, **kwargs):
        raise ValueError("low_cpu_mem_usage cannot be False when keep_in_fp32_modules is True")

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "accelerate" else real(name, *a))
    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", fail)
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--out", str(tmp_path / "demo")])
    message = str(exit_.value.code)
    assert message.startswith("cannot load the demo model zoo:shapes-video: low_cpu_mem_usage")
    assert "--model" not in message and "pip install accelerate" in message
    assert not (tmp_path / "demo").exists()
