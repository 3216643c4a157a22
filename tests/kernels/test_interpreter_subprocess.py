"""Runs test_triton_interp.py in a child pytest with TRITON_INTERPRET=1 set from process start (see conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


@pytest.mark.triton
def test_triton_kernels_under_the_interpreter():
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        pytest.skip("TRITON_INTERPRET=1 is set: test_triton_interp.py runs in this process instead")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONDONTWRITEBYTECODE="1")
    env.pop("DIT_CACHE_KERNELS", None)
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        str(HERE / "test_triton_interp.py"),
        "-q",
        "-p",
        "no:cacheprovider",
        "--no-header",
        "-rfE",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    output = proc.stdout + proc.stderr
    summary = output.strip().splitlines()[-1] if output.strip() else "(no output)"
    print(f"child pytest under TRITON_INTERPRET=1: {summary}")
    if proc.returncode != 0:
        pytest.fail(f"interpreter tests failed (exit {proc.returncode}):\n{output[-12000:]}", pytrace=False)
    assert " passed" in summary and " skipped" not in summary, summary
