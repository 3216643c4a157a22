"""Backend choice: DIT_CACHE_KERNELS parsing, auto picks the twin without CUDA, forcing either backend, and imports
that need neither Triton nor a GPU."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import dit_cache.kernels as K
from dit_cache.kernels import _backend, twins

ROOT = Path(__file__).resolve().parents[2]


def _all_ops_inputs():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 12, generator=g), torch.randn(5, 12, generator=g)
    x, cache = torch.randn(2, 6, 12, generator=g), torch.randn(2, 6, 12, generator=g)
    rows = torch.randn(2, 2, 12, generator=g)
    return a, b, x, cache, rows


def _run_all_ops():
    a, b, x, cache, rows = _all_ops_inputs()
    ds = [torch.zeros_like(a) for _ in range(3)]
    filled = K.taylor_update(ds, a, 1.0, 0)
    filled = K.taylor_update(ds, b, 2.0, filled)
    return [
        K.rel_l1_parts(a, b),
        K.store_residual(a, b),
        K.apply_residual(a, b, 0.5),
        K.magnitude_ratio(a, b),
        K.taylor_forecast(ds, filled, 1.5),
        K.token_scatter_gate(x, cache, torch.tensor([4, 1]), rows, torch.full((2, 1, 12), 0.5)),
        cache,
    ]


def _run_all_twins():
    a, b, x, cache, rows = _all_ops_inputs()
    ds = [torch.zeros_like(a) for _ in range(3)]
    filled = twins.taylor_update(ds, a, 1.0, 0)
    filled = twins.taylor_update(ds, b, 2.0, filled)
    return [
        twins.rel_l1_parts(a, b),
        twins.store_residual(a, b),
        twins.apply_residual(a, b, 0.5),
        twins.magnitude_ratio(a, b),
        twins.taylor_forecast(ds, filled, 1.5),
        twins.token_scatter_gate(x, cache, torch.tensor([4, 1]), rows, torch.full((2, 1, 12), 0.5)),
        cache,
    ]


@pytest.mark.parametrize(
    "raw,expected",
    [(None, "auto"), ("", "auto"), ("auto", "auto"), (" Torch ", "torch"), ("TRITON", "triton"), ("torch", "torch")],
)
def test_env_var_values(backend, raw, expected):
    backend(raw)
    assert K.requested_backend() == expected


@pytest.mark.parametrize("raw", ["cuda", "1", "pytorch", "triton,torch"])
def test_env_var_rejects_bad_values_listing_the_valid_ones(backend, raw):
    backend(raw)
    with pytest.raises(ValueError, match=r"DIT_CACHE_KERNELS=.* valid values: auto, triton, torch"):
        K.requested_backend()
    with pytest.raises(ValueError, match="valid values: auto, triton, torch"):
        K.rel_l1_parts(torch.ones(3), torch.ones(3))


@pytest.mark.parametrize("mode", [None, "auto", "torch"])
def test_cpu_tensors_use_the_twins(backend, monkeypatch, mode):
    backend(mode)

    def no_triton():
        raise AssertionError("the Triton module must not be touched for CPU tensors in auto/torch mode")

    monkeypatch.setattr(_backend, "triton_module", no_triton)
    for got, expected in zip(_run_all_ops(), _run_all_twins()):
        assert got.dtype == expected.dtype and got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_forced_triton_without_triton_installed_says_how_to_fix(backend, monkeypatch):
    monkeypatch.setattr(_backend, "triton_available", lambda: False)
    backend("triton")
    with pytest.raises(ImportError, match=r"pip install triton.*DIT_CACHE_KERNELS=auto/torch"):
        K.rel_l1_parts(torch.ones(3), torch.ones(3))
    backend("auto")
    assert K.rel_l1_parts(torch.ones(3), torch.zeros(3)).tolist() == [3.0, 0.0]


def test_forced_triton_with_cpu_tensors_and_no_interpreter(backend, tk_compiled):
    backend("triton")
    with pytest.raises(RuntimeError, match=r"need CUDA tensors.*TRITON_INTERPRET=1"):
        K.rel_l1_parts(torch.ones(3), torch.ones(3))
    with pytest.raises(RuntimeError, match="need CUDA tensors"):
        tk_compiled.apply_residual(torch.ones(3), torch.ones(3))


# ------------------------------------------------------------------------- the auto rule, on fake CUDA tensors


def _fake_cuda(*shape, dtype=torch.bfloat16):
    with FakeTensorMode(allow_non_fake_inputs=True):
        return torch.empty(*shape, device="cuda", dtype=dtype)


def test_auto_picks_triton_for_cuda_tensors_when_triton_imports(backend, monkeypatch):
    monkeypatch.setattr(_backend, "triton_available", lambda: True)
    t = _fake_cuda(4, 8)
    assert _backend.use_triton("op", [t, t], mutated=[t]) is True
    # a non-contiguous read-only input still goes to Triton (copied once there)
    assert _backend.use_triton("op", [t.t(), t]) is True
    backend("torch")
    assert _backend.use_triton("op", [t]) is False


@pytest.mark.parametrize(
    "case,message",
    [
        ("float64", "dtype torch.float64"),
        ("written-noncontiguous", "non-contiguous tensor written in place"),
        ("no-triton", "Triton is not installed"),
        ("unsupported", "too many orders"),
    ],
)
def test_auto_falls_back_to_the_twin_with_one_warning(backend, monkeypatch, case, message):
    monkeypatch.setattr(_backend, "_warned", set())
    monkeypatch.setattr(_backend, "triton_available", lambda: case != "no-triton")
    t = _fake_cuda(4, 8)
    tensors, mutated, supported = [t], [], None
    if case == "float64":
        tensors = [_fake_cuda(4, 8, dtype=torch.float64)]
    elif case == "written-noncontiguous":
        mutated = [t.t()]
        tensors = [t, mutated[0]]
    elif case == "unsupported":
        supported = "too many orders"
    with pytest.warns(RuntimeWarning, match=message):
        assert _backend.use_triton("op", tensors, mutated=mutated, supported=supported) is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _backend.use_triton("op", tensors, mutated=mutated, supported=supported) is False


def test_forced_triton_ignores_the_auto_rule(backend):
    backend("triton")
    assert _backend.use_triton("op", [torch.ones(3, dtype=torch.float64)]) is True


# ------------------------------------------------------------------------------------------------ bare imports

_BARE = textwrap.dedent(
    """
    import os, sys
    sys.modules["triton"] = None  # as if Triton were not installed: `import triton` raises ImportError
    import dit_cache, dit_cache.kernels as K
    assert "dit_cache.kernels._triton" not in sys.modules
    assert not K.triton_available()
    import torch
    assert K.rel_l1_parts(torch.ones(4), torch.zeros(4)).tolist() == [4.0, 0.0]
    x = torch.zeros(1, 3, 2); c = torch.zeros(1, 3, 2)
    K.token_scatter_gate(x, c, torch.tensor([2]), torch.ones(1, 1, 2))
    assert c[0, 2].tolist() == [1.0, 1.0]
    os.environ["DIT_CACHE_KERNELS"] = "triton"
    try:
        K.rel_l1_parts(torch.ones(4), torch.zeros(4))
    except ImportError as e:
        assert "pip install triton" in str(e), e
    else:
        raise SystemExit("forced triton without triton must raise ImportError")
    print("bare-ok")
    """
)


def test_import_and_ops_without_triton_or_gpu():
    # ROOT first, then the caller's path (a device image may hold diffusers in an extra site folder)
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=path, CUDA_VISIBLE_DEVICES="")
    env.pop("DIT_CACHE_KERNELS", None)
    proc = subprocess.run([sys.executable, "-c", _BARE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "bare-ok" in proc.stdout, proc.stdout + proc.stderr
