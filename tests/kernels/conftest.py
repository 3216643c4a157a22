"""Fixtures of the kernel tests.

Triton decides interpreted-or-compiled when `triton.language` is imported (its own helpers such as `tl.sum` are
`@triton.jit` functions too), and torch imports Triton early. `TRITON_INTERPRET=1` therefore only works when set
before the Python process starts. CI runs the interpreter tests (test_triton_interp.py) in a child pytest process
that has the variable set from the start (test_interpreter_subprocess.py); `TRITON_INTERPRET=1 pytest
tests/kernels/test_triton_interp.py` runs them in-process.
"""

from __future__ import annotations

import importlib
import os
import warnings

import pytest

from dit_cache.kernels import _backend

MODULE = "dit_cache.kernels._triton"


def interpreter_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@pytest.fixture(scope="session")
def tk():
    """The Triton kernel module, defined under TRITON_INTERPRET=1 (runs on CPU tensors)."""
    pytest.importorskip("triton")
    if not interpreter_requested():
        pytest.skip("needs TRITON_INTERPRET=1 from process start (test_interpreter_subprocess.py runs these)")
    module = importlib.import_module(MODULE)
    assert module.INTERPRETED, "TRITON_INTERPRET=1 did not give interpreted kernels"
    return module


@pytest.fixture(scope="session")
def tk_compiled():
    """The Triton kernel module as on a GPU machine (not interpreted)."""
    pytest.importorskip("triton")
    if interpreter_requested():
        pytest.skip("TRITON_INTERPRET=1 is set: kernels are interpreted in this process")
    module = importlib.import_module(MODULE)
    assert not module.INTERPRETED
    return module


@pytest.fixture
def backend(monkeypatch):
    """Set DIT_CACHE_KERNELS for one test: `backend("torch")`; unset by default."""

    def set_backend(value: str | None) -> None:
        if value is None:
            monkeypatch.delenv(_backend.ENV_VAR, raising=False)
        else:
            monkeypatch.setenv(_backend.ENV_VAR, value)

    set_backend(None)
    return set_backend


@pytest.fixture(autouse=True)
def _quiet_interpreter_warnings():
    # numpy warns about 0/0 and overflow in masked-out lanes of interpreted kernels; those lanes are discarded.
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", category=RuntimeWarning, message=".*(invalid value|divide by zero|overflow).*"
        )
        yield
