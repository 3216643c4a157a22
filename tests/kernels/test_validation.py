"""Bad input through the public ops: each a clear error (naming the value and the fix) or a documented fallback.

These run on the twin path (CPU, auto); the checks are shared with the Triton path and the fake implementations.
Also a few semantic checks of the twins themselves."""

from __future__ import annotations

import pytest
import torch

import dit_cache.kernels as K
from dit_cache.kernels import twins


def test_rel_l1_parts_errors():
    with pytest.raises(ValueError, match=r"b must have the shape of a: a is \(3, 4\), b is \(4, 3\)"):
        K.rel_l1_parts(torch.ones(3, 4), torch.ones(4, 3))
    with pytest.raises(TypeError, match=r"a has dtype torch.int64; it must be a floating-point tensor"):
        K.rel_l1_parts(torch.ones(3, dtype=torch.long), torch.ones(3))
    with pytest.raises(RuntimeError, match="all tensors must be on one device, got a on cpu, b on meta"):
        K.rel_l1_parts(torch.ones(3), torch.ones(3, device="meta"))
    with pytest.raises(RuntimeError, match="Expected a value of type 'Tensor' for argument 'a'"):
        K.rel_l1_parts([1.0], torch.ones(1))  # the op schema's own check


def test_rel_l1_parts_empty_and_mixed_dtypes():
    assert K.rel_l1_parts(torch.empty(0, 5), torch.empty(0, 5)).tolist() == [0.0, 0.0]
    got = K.rel_l1_parts(torch.ones(4, dtype=torch.bfloat16), torch.zeros(4, dtype=torch.float16))
    assert got.dtype == torch.float32 and got.tolist() == [4.0, 0.0]


def test_store_residual_errors_and_buffer_fallback():
    out, inp = torch.randn(3, 4), torch.randn(3, 4)
    with pytest.raises(TypeError, match=r"inp must have the dtype of out: out is torch.float32, inp is torch.float16"):
        K.store_residual(out, inp.half())
    with pytest.raises(ValueError, match="inp must have the shape of out"):
        K.store_residual(out, inp[:2])
    buffer = torch.empty(3, 4)
    assert K.store_residual(out, inp, buffer) is buffer
    torch.testing.assert_close(buffer, out - inp, rtol=0, atol=0)
    for other in (None, torch.empty(4, 3), torch.empty(3, 4, dtype=torch.float64)):
        fresh = K.store_residual(out, inp, other)
        assert fresh is not other and fresh.shape == out.shape and fresh.dtype == out.dtype
        torch.testing.assert_close(fresh, out - inp, rtol=0, atol=0)
    # a non-contiguous buffer of the right shape is written in place on the twin path
    strided = torch.empty(4, 3).t()
    assert K.store_residual(out, inp, strided) is strided
    torch.testing.assert_close(strided, out - inp, rtol=0, atol=0)
    assert K.store_residual(torch.empty(0, 4), torch.empty(0, 4)).shape == (0, 4)


def test_apply_residual_errors():
    inp, res = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match=r"per-channel of shape \(8,\).*got shape \(9,\)"):
        K.apply_residual(inp, res, torch.ones(9))
    with pytest.raises(ValueError, match=r"got shape \(2, 1, 8\)"):
        K.apply_residual(inp, res, torch.ones(2, 1, 8))
    with pytest.raises(TypeError, match="scale must be None, a float or a tensor, got bool"):
        K.apply_residual(inp, res, True)
    with pytest.raises(ValueError, match="must be finite"):
        K.apply_residual(inp, res, float("nan"))
    with pytest.raises(TypeError, match="residual must have the dtype of inp"):
        K.apply_residual(inp, res.bfloat16())
    with pytest.raises(TypeError, match="scale has dtype torch.int64"):
        K.apply_residual(inp, res, torch.ones(8, dtype=torch.long))


@pytest.mark.parametrize("scale", [None, 0.5, torch.tensor(2.0), torch.tensor([3.0]), torch.arange(8.0)])
def test_apply_residual_matches_twin(scale):
    inp, res = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    torch.testing.assert_close(K.apply_residual(inp, res, scale), twins.apply_residual(inp, res, scale))


def test_magnitude_ratio_errors():
    with pytest.raises(ValueError, match=r"empty: the mean over zero tokens"):
        K.magnitude_ratio(torch.empty(0, 8), torch.empty(0, 8))
    with pytest.raises(ValueError, match="empty"):
        K.magnitude_ratio(torch.empty(4, 0), torch.empty(4, 0))
    with pytest.raises(ValueError, match="at least 1-d"):
        K.magnitude_ratio(torch.tensor(1.0), torch.tensor(1.0))
    with pytest.raises(ValueError, match="r_prev must have the shape of r_t"):
        K.magnitude_ratio(torch.ones(2, 3), torch.ones(3, 2))
    r = torch.randn(3, 5)
    assert K.magnitude_ratio(2 * r, r).item() == pytest.approx(2.0)


def test_taylor_update_errors():
    ds = [torch.zeros(2, 3) for _ in range(3)]
    with pytest.raises(ValueError, match="positive gap"):
        K.taylor_update(ds, torch.ones(2, 3), 0.0, 0)
    with pytest.raises(ValueError, match=r"filled=4 must be an int in \[0, 3\]"):
        K.taylor_update(ds, torch.ones(2, 3), 1.0, 4)
    with pytest.raises(ValueError, match=r"filled=-1"):
        K.taylor_update(ds, torch.ones(2, 3), 1.0, -1)
    with pytest.raises(ValueError, match="derivatives is empty"):
        K.taylor_update([], torch.ones(2, 3), 1.0, 0)
    with pytest.raises(ValueError, match=r"derivatives\[2\] must have the shape of derivatives\[0\]"):
        K.taylor_update(ds[:2] + [torch.zeros(3, 2)], torch.ones(2, 3), 1.0, 0)
    with pytest.raises(ValueError, match="feature must have the shape"):
        K.taylor_update(ds, torch.ones(3, 2), 1.0, 0)


def test_taylor_forecast_errors():
    ds = [torch.zeros(2, 3) for _ in range(3)]
    with pytest.raises(ValueError, match=r"filled >= 1"):
        K.taylor_forecast(ds, 0, 1.0)
    with pytest.raises(ValueError, match="filled=4 exceeds the 3 derivative tensors"):
        K.taylor_forecast(ds, 4, 1.0)
    with pytest.raises(TypeError, match="out must have the dtype of derivatives"):
        K.taylor_forecast(ds, 2, 1.0, out=torch.empty(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="share memory"):
        K.taylor_forecast(ds, 2, 1.0, out=ds[1])
    with pytest.raises(ValueError, match="finite"):
        K.taylor_forecast(ds, 2, float("inf"))


def test_taylor_semantics_linear_feature_is_forecast_exactly():
    """f(t) = a + b t, computed at t = 0, 2, 4 (gap 2): the order-1 forecast at t = 7 is exact."""
    a, b = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    ds = [torch.zeros(3, 5, dtype=torch.float64) for _ in range(2)]
    filled = 0
    for t in (0, 2, 4):
        filled = K.taylor_update(ds, a + b * t, 2.0, filled)
    assert filled == 2
    torch.testing.assert_close(ds[1], b)
    torch.testing.assert_close(K.taylor_forecast(ds, filled, 3.0), a + b * 7)
    out = torch.empty(3, 5, dtype=torch.float64)
    assert K.taylor_forecast(ds, 1, 3.0, out=out) is out
    torch.testing.assert_close(out, a + b * 4)


def test_token_scatter_gate_errors():
    x, cache, rows = torch.randn(2, 5, 4), torch.randn(2, 5, 4), torch.randn(2, 2, 4)
    index = torch.tensor([0, 3])
    with pytest.raises(ValueError, match=r"x must be 3-d \(B, N, C\), got shape \(5, 4\)"):
        K.token_scatter_gate(x[0], cache[0], index, rows[0])
    with pytest.raises(TypeError, match="index must be a 1-d int64 or int32 tensor"):
        K.token_scatter_gate(x, cache, index.float(), rows)
    with pytest.raises(ValueError, match=r"rows must have shape \(B, M, C\) = \(2, 2, 4\)"):
        K.token_scatter_gate(x, cache, index, rows[:, :1])
    with pytest.raises(ValueError, match=r"gate of shape \(5,\) must broadcast to x's shape"):
        K.token_scatter_gate(x, cache, index, rows, torch.ones(5))
    with pytest.raises(ValueError, match="gate of shape"):
        K.token_scatter_gate(x, cache, index, rows, torch.ones(1, 2, 5, 4))
    with pytest.raises(IndexError, match=r"index values must lie in \[0, 5\).*max 5"):
        K.token_scatter_gate(x, cache, torch.tensor([0, 5]), rows)
    with pytest.raises(IndexError, match=r"min -1"):
        K.token_scatter_gate(x, cache, torch.tensor([-1, 2]), rows)
    with pytest.raises(ValueError, match="x and cache share memory"):
        K.token_scatter_gate(cache, cache, index, rows)
    with pytest.raises(TypeError, match="cache must have the dtype of x"):
        K.token_scatter_gate(x, cache.half(), index, rows)


def test_token_scatter_gate_semantics():
    x, cache = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    rows = torch.randn(2, 2, 4, dtype=torch.float64)  # cast to cache's dtype
    index = torch.tensor([4, 1], dtype=torch.int32)
    expected_cache = cache.clone()
    expected_cache[:, [4, 1]] = rows.float()
    gate = torch.randn(2, 1, 4)
    y = K.token_scatter_gate(x, cache, index, rows, gate)
    torch.testing.assert_close(cache, expected_cache, rtol=0, atol=0)
    torch.testing.assert_close(y, x + gate * expected_cache)
    # promotion like the twin: a float32 gate on bfloat16 tensors gives float32, a 0-d gate does not promote
    xb, cb = x.bfloat16(), cache.bfloat16()
    assert K.token_scatter_gate(xb, cb, index, rows, gate).dtype == torch.float32
    assert K.token_scatter_gate(xb, cb, index, rows, torch.tensor(0.5)).dtype == torch.bfloat16
    assert K.token_scatter_gate(xb, cb, index, rows, 0.5).dtype == torch.bfloat16
    # nothing recomputed, empty batch
    y0 = K.token_scatter_gate(x, cache, torch.empty(0, dtype=torch.long), torch.empty(2, 0, 4))
    torch.testing.assert_close(y0, x + cache)
    e = torch.empty(0, 5, 4)
    assert K.token_scatter_gate(e, e.clone(), index, torch.empty(0, 2, 4)).shape == (0, 5, 4)


def test_outputs_are_contiguous_even_for_strided_inputs():
    a = torch.randn(6, 4).t()
    b = torch.randn(6, 4).t()
    assert K.apply_residual(a, b).is_contiguous()
    ds = [torch.randn(6, 4).t() for _ in range(2)]
    assert K.taylor_forecast(ds, 2, 1.0).is_contiguous()
