"""Each Triton kernel, run by the Triton interpreter on CPU, against its PyTorch twin computed in float64.

Launchers are called directly with small blocks (so that shapes span several programs and end in a partial block)
and with their default blocks. Skipped where Triton is not installed.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from kernel_cases import (
    DTYPE_IDS,
    DTYPES,
    EPS32,
    SHAPE_IDS,
    SHAPES,
    check_elementwise,
    eps,
    f64,
    make,
    reduction_rtol,
)

from dit_cache.kernels import twins

pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET", "0") != "1":
    pytest.skip(
        "needs TRITON_INTERPRET=1 set before Python starts; test_interpreter_subprocess.py runs this file so",
        allow_module_level=True,
    )

pytestmark = pytest.mark.triton

dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
shapes = pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
blocks = pytest.mark.parametrize("small", [True, False], ids=["small-blocks", "default-blocks"])


def _amax(*ts: torch.Tensor) -> float:
    return max((float(t.double().abs().max()) if t.numel() else 0.0) for t in ts)


# ----------------------------------------------------------------------------------------------------- rel-L1


@dtypes
@shapes
@blocks
def test_rel_l1_parts(tk, dtype, shape, small):
    a, b = make(shape, dtype, 1), make(shape, dtype, 2)
    block, programs = (32, 3) if small else (None, None)
    got = tk.rel_l1_parts(a, b, block=block, programs=programs)
    ref = twins.rel_l1_parts(f64(a), f64(b)).double()
    n = a.numel()
    blk = block or min(tk.REDUCE_BLOCK, tk._next_pow2(n))
    n_blocks = -(-n // blk)
    iters = -(-n_blocks // tk._reduce_programs(a.device, n_blocks, programs))
    assert got.dtype == torch.float32 and got.shape == (2,)
    torch.testing.assert_close(got.double(), ref, rtol=reduction_rtol(n, iters) + EPS32, atol=0)


def test_rel_l1_parts_mixed_dtypes(tk):
    a, b = make((5, 33), torch.bfloat16, 1), make((5, 33), torch.float32, 2)
    got = tk.rel_l1_parts(a, b, block=16, programs=2)
    ref = twins.rel_l1_parts(f64(a), f64(b)).double()
    torch.testing.assert_close(got.double(), ref, rtol=reduction_rtol(a.numel(), 6) + EPS32, atol=0)


def test_rel_l1_parts_empty(tk):
    got = tk.rel_l1_parts(torch.empty(0, 8), torch.empty(0, 8))
    assert got.tolist() == [0.0, 0.0]


# ----------------------------------------------------------------------------------------------- residuals


@dtypes
@shapes
@blocks
def test_store_residual(tk, dtype, shape, small):
    out, inp = make(shape, dtype, 3), make(shape, dtype, 4)
    buffer = torch.full(shape, 7.0, dtype=dtype)
    got = tk.store_residual(out, inp, buffer, block=64 if small else None)
    assert got is buffer
    ref = twins.store_residual(f64(out), f64(inp))
    check_elementwise(got, ref, scale=_amax(out, inp))


def test_store_residual_new_buffer_when_mismatched(tk):
    out, inp = make((3, 5), torch.float16, 1), make((3, 5), torch.float16, 2)
    for buffer in (None, torch.empty(3, 4, dtype=torch.float16), torch.empty(3, 5, dtype=torch.float32)):
        got = tk.store_residual(out, inp, buffer)
        assert got is not buffer and got.dtype == torch.float16 and got.is_contiguous()
        check_elementwise(got, f64(out) - f64(inp), scale=_amax(out, inp))


SCALES = ("none", "float", "0d", "one", "per-channel-fp32", "per-channel-dtype")


def _scale(kind: str, channels: int, dtype: torch.dtype):
    if kind == "none":
        return None
    if kind == "float":
        return 0.75
    if kind == "0d":
        return torch.tensor(1.5)
    if kind == "one":
        return torch.tensor([-0.25])
    if kind == "per-channel-fp32":
        return make((channels,), torch.float32, 9)
    return make((channels,), dtype, 9)


@dtypes
@shapes
@blocks
@pytest.mark.parametrize("kind", SCALES)
def test_apply_residual(tk, dtype, shape, small, kind):
    inp, res = make(shape, dtype, 5), make(shape, dtype, 6, scale=0.5)
    scale = _scale(kind, shape[-1], dtype)
    kw = {"block_r": 2, "block_c": 32} if small else {}
    got = tk.apply_residual(inp, res, scale, **kw)
    ref = twins.apply_residual(f64(inp), f64(res), f64(scale))
    assert got.dtype == dtype and got.is_contiguous()
    s = 1.0 if scale is None else (abs(scale) if isinstance(scale, float) else _amax(scale))
    check_elementwise(got, ref, scale=_amax(inp) + s * _amax(res))


# ------------------------------------------------------------------------------------------- magnitude ratio


@dtypes
@shapes
@blocks
def test_magnitude_ratio(tk, dtype, shape, small):
    r_t, r_prev = make(shape, dtype, 7), make(shape, dtype, 8)
    kw = {"block_r": 2, "block_c": 16, "programs": 3} if small else {}
    got = tk.magnitude_ratio(r_t, r_prev, **kw)
    ref = twins.magnitude_ratio(f64(r_t), f64(r_prev)).double()
    assert got.dtype == torch.float32 and got.shape == ()
    C = shape[-1]
    R = r_t.numel() // C
    br, bc = tk._tile(R, C, kw.get("block_r"), kw.get("block_c"), tk.NORM_TILE_ELEMS, tk.NORM_MAX_C, "test")
    n_blocks = -(-R // br)
    iters = -(-n_blocks // tk._reduce_programs(r_t.device, n_blocks, kw.get("programs")))
    rtol = 2 * reduction_rtol(C, -(-C // bc)) + reduction_rtol(R, iters) + 4 * EPS32
    torch.testing.assert_close(got.double(), ref, rtol=rtol, atol=0)


def test_magnitude_ratio_mixed_dtypes(tk):
    r_t, r_prev = make((9, 40), torch.float16, 1), make((9, 40), torch.float32, 2)
    got = tk.magnitude_ratio(r_t, r_prev, block_r=4, block_c=16, programs=2)
    ref = twins.magnitude_ratio(f64(r_t), f64(r_prev)).double()
    torch.testing.assert_close(got.double(), ref, rtol=64 * EPS32, atol=0)


# --------------------------------------------------------------------------------------------------- Taylor

# (k + 1 tensors, filled, gap): every history length from empty to full, exact and inexact 1/gap
TAYLOR_CASES = ((1, 0, 1.0), (1, 1, 3.0), (2, 1, 1.0), (3, 0, 3.0), (3, 2, 3.0), (3, 3, 1.0), (6, 4, 1.0), (6, 6, 3.0))
TAYLOR_SHAPES = ((1, 1), (3, 129), (2, 5, 97))
TAYLOR_SHAPE_IDS = ("1x1", "3x129", "2x5x97")


@dtypes
@pytest.mark.parametrize("shape", TAYLOR_SHAPES, ids=TAYLOR_SHAPE_IDS)
@pytest.mark.parametrize(
    "count,filled,gap", TAYLOR_CASES, ids=[f"k{k - 1}-filled{f}-gap{g:g}" for k, f, g in TAYLOR_CASES]
)
def test_taylor_update(tk, dtype, shape, count, filled, gap):
    ds = [make(shape, dtype, 20 + i) for i in range(count)]
    feature = make(shape, dtype, 30)
    before = [d.clone() for d in ds]
    ref = [f64(d) for d in ds]
    ref_filled = twins.taylor_update(ref, f64(feature), gap, filled)
    got_filled = tk.taylor_update(ds, feature, gap, filled, block=64)
    assert got_filled == ref_filled == min(filled + 1, count)
    e = eps(dtype)
    bound = torch.zeros(shape, dtype=torch.float64)
    for i in range(got_filled):
        if i == 0:
            bound = e * ref[0].abs()
        else:
            operands = (ref[i - 1].abs() + f64(before[i - 1]).abs()) / gap
            bound = e * ref[i].abs() + bound / gap + 8 * EPS32 * operands
        err = (f64(ds[i]) - ref[i]).abs()
        assert bool((err <= bound + 1e-300).all()), f"D_{i}: max err {float(err.max()):.3g}"
    for i in range(got_filled, count):
        assert torch.equal(ds[i], before[i]), f"D_{i} beyond the new history must stay untouched"


def test_taylor_update_casts_feature(tk):
    """A float32 feature into bf16 history: D_0 is the feature rounded once, D_1 carries that rounding / gap."""
    ds = [make((4, 33), torch.bfloat16, i) for i in range(3)]
    feature = make((4, 33), torch.float32, 9)
    ref = [f64(d) for d in ds]
    twins.taylor_update(ref, f64(feature), 2.0, 2)
    tk.taylor_update(ds, feature, 2.0, 2, block=32)
    check_elementwise(ds[0], ref[0], scale=0.0)
    check_elementwise(ds[1], ref[1], scale=4.0, extra=eps(torch.bfloat16) * f64(feature).abs() / 2.0)


@dtypes
@pytest.mark.parametrize("shape", TAYLOR_SHAPES, ids=TAYLOR_SHAPE_IDS)
@pytest.mark.parametrize("filled", [1, 2, 3, 6])
@pytest.mark.parametrize("distance", [2.5, -0.5])
def test_taylor_forecast(tk, dtype, shape, filled, distance):
    with_out = distance < 0
    ds = [make(shape, dtype, 40 + i) for i in range(6)]
    out = torch.empty(shape, dtype=dtype) if with_out else None
    got = tk.taylor_forecast(ds, filled, distance, out, block=64)
    if with_out:
        assert got is out
    ref = twins.taylor_forecast([f64(d) for d in ds], filled, distance)
    terms = sum(abs(distance) ** i / math.factorial(i) * _amax(ds[i]) for i in range(filled))
    check_elementwise(got, ref, scale=terms)


# ------------------------------------------------------------------------------------------- token scatter

# (B, N, C) and the fraction of tokens recomputed: none, some, all
SCATTER_CASES = (
    ((1, 1, 1), 1.0),
    ((1, 7, 5), 0.5),
    ((2, 13, 31), 0.0),
    ((2, 13, 31), 0.5),
    ((2, 13, 31), 1.0),
    ((3, 11, 129), 0.3),
)
SCATTER_IDS = tuple(f"{'x'.join(map(str, s))}-{f:g}" for s, f in SCATTER_CASES)
GATES = ("none", "float", "0d", "b1c-fp32", "c-dtype", "full")


def _gate(kind: str, shape, dtype):
    B, N, C = shape
    return {
        "none": lambda: None,
        "float": lambda: 0.5,
        "0d": lambda: torch.tensor(-1.25, dtype=dtype),
        "b1c-fp32": lambda: make((B, 1, C), torch.float32, 50),
        "c-dtype": lambda: make((C,), dtype, 51),
        "full": lambda: make((B, N, C), dtype, 52),
    }[kind]()


def _index(n_tok: int, m: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n_tok, generator=g)[:m]


@dtypes
@pytest.mark.parametrize("shape,fraction", SCATTER_CASES, ids=SCATTER_IDS)
@pytest.mark.parametrize("gate_kind", GATES)
@blocks
def test_token_scatter_gate(tk, dtype, shape, gate_kind, fraction, small):
    B, N, C = shape
    M = int(round(N * fraction))
    x, cache = make(shape, dtype, 60), make(shape, dtype, 61)
    index = _index(N, M, 62)
    rows = make((B, M, C), dtype, 63)
    gate = _gate(gate_kind, shape, dtype)
    kw = {"block_r": 4, "block_c": 16} if small else {}
    ref_cache = f64(cache)
    ref = twins.token_scatter_gate(f64(x), ref_cache, index, f64(rows), f64(gate))
    expected_dtype = twins.token_scatter_gate(x, cache.clone(), index, rows, gate).dtype
    got = tk.token_scatter_gate(x, cache, index.to(torch.int32 if small else torch.int64), rows, gate, **kw)
    assert got.dtype == expected_dtype and got.shape == shape and got.is_contiguous()
    assert torch.equal(f64(cache), ref_cache), "the scattered cache must be exact"
    g = 1.0 if gate is None else (abs(gate) if isinstance(gate, float) else _amax(gate))
    check_elementwise(got, ref, scale=_amax(x) + g * _amax(cache))


def test_token_scatter_gate_casts_rows(tk):
    shape = (2, 9, 24)
    x, cache = make(shape, torch.bfloat16, 1), make(shape, torch.bfloat16, 2)
    index = torch.tensor([8, 0, 3])
    rows = make((2, 3, 24), torch.float32, 3)
    ref_cache = f64(cache)
    ref = twins.token_scatter_gate(f64(x), ref_cache, index, f64(rows), 0.5)
    got = tk.token_scatter_gate(x, cache, index, rows, 0.5, block_r=2, block_c=8)
    # rows are rounded once to bf16 (1 ulp: the interpreter truncates where a GPU rounds to nearest)
    check_elementwise(cache, ref_cache, scale=0.0)
    check_elementwise(got, ref, scale=8.0, extra=0.5 * eps(torch.bfloat16) * ref_cache.abs())


# ----------------------------------------------------------------------------------------------- launch checks


def test_launchers_refuse_float64(tk):
    a = torch.randn(4, 8, dtype=torch.float64)
    with pytest.raises(TypeError, match="float16, bfloat16 and float32"):
        tk.rel_l1_parts(a, a)


def test_launchers_refuse_noncontiguous_written_tensors(tk):
    out, inp = torch.randn(8, 6), torch.randn(8, 6)
    buffer = torch.empty(6, 8).t()
    with pytest.raises(ValueError, match="buffer .* must be contiguous"):
        tk.store_residual(out, inp, buffer)
    x = torch.randn(2, 8, 6)
    cache = torch.randn(2, 6, 8).transpose(1, 2)
    with pytest.raises(ValueError, match="cache .* must be contiguous"):
        tk.token_scatter_gate(x, cache, torch.tensor([1]), torch.randn(2, 1, 6))
    ds = [torch.randn(6, 8).t(), torch.randn(8, 6)]
    with pytest.raises(ValueError, match=r"derivatives\[0\] .* must be contiguous"):
        tk.taylor_update(ds, torch.randn(8, 6), 1.0, 1)


def test_launchers_copy_noncontiguous_read_only_inputs(tk):
    a = make((9, 20), torch.float32, 1).t()
    b = make((9, 20), torch.float32, 2).t()
    assert not a.is_contiguous()
    got = tk.apply_residual(a, b, 0.5, block_r=4, block_c=8)
    check_elementwise(got, twins.apply_residual(f64(a), f64(b), 0.5), scale=8.0)
    parts = tk.rel_l1_parts(a, b, block=16, programs=2)
    torch.testing.assert_close(parts.double(), twins.rel_l1_parts(f64(a), f64(b)).double(), rtol=1e-5, atol=0)


def test_launchers_handle_empty_tensors(tk):
    e = torch.empty(2, 0, 5)
    assert tk.store_residual(e, e).shape == e.shape
    assert tk.apply_residual(e, e, 2.0).shape == e.shape
    ds = [torch.empty(2, 0, 5) for _ in range(3)]
    assert tk.taylor_update(ds, e, 1.0, 2) == 3
    assert tk.taylor_forecast(ds, 3, 1.0).shape == e.shape
    x = torch.empty(2, 0, 5)
    assert tk.token_scatter_gate(x, x.clone(), torch.empty(0, dtype=torch.long), torch.empty(2, 0, 5)).shape == x.shape
    with pytest.raises(ValueError, match="empty"):
        tk.magnitude_ratio(e, e)


def test_launchers_check_blocks_and_orders(tk):
    a = torch.randn(4, 8)
    with pytest.raises(ValueError, match="power of two"):
        tk.store_residual(a, a, block=48)
    ds = [torch.randn(4, 8) for _ in range(7)]
    with pytest.raises(ValueError, match="at most 6"):
        tk.taylor_update(ds, a, 1.0, 6)
    with pytest.raises(ValueError, match="at most 6"):
        tk.taylor_forecast(ds, 7, 1.0)
    with pytest.raises(ValueError, match="exceeds CUDA's limits"):
        tk._check_grid("op", (1, 70000))


def test_scatter_index_out_of_range(tk):
    x = torch.randn(1, 4, 8)
    for bad in ([4], [-1]):
        with pytest.raises(IndexError, match=r"\[0, 4\)"):
            tk.token_scatter_gate(x, x.clone(), torch.tensor(bad), torch.randn(1, 1, 8))


# ---------------------------------------------------------------------------- the public ops, forced to Triton


def test_public_ops_dispatch_to_triton(tk, backend, monkeypatch):
    """Through the custom ops with DIT_CACHE_KERNELS=triton: the launcher runs (spied) and matches the twin."""
    import dit_cache.kernels as K

    calls = []
    for name in (
        "rel_l1_parts",
        "store_residual",
        "apply_residual",
        "magnitude_ratio",
        "taylor_update",
        "taylor_forecast",
        "token_scatter_gate",
    ):
        original = getattr(tk, name)

        def spy(*args, __original=original, __name=name, **kwargs):
            calls.append(__name)
            return __original(*args, **kwargs)

        monkeypatch.setattr(tk, name, spy)

    def run():
        a, b = make((6, 40), torch.bfloat16, 1), make((6, 40), torch.bfloat16, 2)
        ds = [torch.zeros(6, 40, dtype=torch.bfloat16) for _ in range(3)]
        filled = K.taylor_update(ds, a, 1.0, 0)
        filled = K.taylor_update(ds, b, 1.0, filled)
        x, cache = make((2, 7, 40), torch.float16, 3), make((2, 7, 40), torch.float16, 4)
        y = K.token_scatter_gate(x, cache, torch.tensor([5, 1]), make((2, 2, 40), torch.float16, 5), 0.5)
        return [
            K.rel_l1_parts(a, b),
            K.store_residual(a, b),
            K.apply_residual(a, b, torch.tensor(0.5)),
            K.magnitude_ratio(a, b),
            *ds,
            K.taylor_forecast(ds, filled, 2.0),
            y,
            cache,
        ]

    backend("torch")
    expected = run()
    assert calls == []
    backend("triton")
    got = run()
    assert sorted(set(calls)) == sorted(
        {
            "rel_l1_parts",
            "store_residual",
            "apply_residual",
            "magnitude_ratio",
            "taylor_update",
            "taylor_forecast",
            "token_scatter_gate",
        }
    )
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype and g.shape == e.shape
        # the twin rounds intermediates in bf16/fp16, the kernel only its output: a few ulps apart
        tol = 1e-5 if e.dtype == torch.float32 else 4 * eps(e.dtype)
        torch.testing.assert_close(g.double(), e.double(), rtol=tol, atol=tol)
