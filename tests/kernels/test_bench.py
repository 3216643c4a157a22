"""benchmarks/kernel_bench.py without CUDA: says so, checks the public ops (twins) at small size, writes JSON, exits 0."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def test_kernel_bench_without_cuda(tmp_path, capsys, backend):
    if torch.cuda.is_available():
        pytest.skip("has CUDA: run benchmarks/gpu_check.sh instead")
    spec = importlib.util.spec_from_file_location("kernel_bench", ROOT / "benchmarks" / "kernel_bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "kernel_bench.json"
    assert bench.main(["--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "no CUDA device" in printed and "correctness passed" in printed
    report = json.loads(out.read_text())
    assert report["ok"] and report["correctness"] and all(c["ok"] for c in report["correctness"])
    assert {c["op"] for c in report["correctness"]} >= {"rel_l1_parts", "token_scatter_gate[25%]"}
