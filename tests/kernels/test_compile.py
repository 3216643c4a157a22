"""The ops as torch custom ops: registration checks (torch.library.opcheck) and torch.compile on CPU."""

from __future__ import annotations

import pytest
import torch

import dit_cache.kernels as K
from dit_cache.kernels import twins


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _r(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=_g(seed)).to(dtype)


OPCHECK_CASES = {
    "rel_l1_parts": lambda: (torch.ops.dit_cache.rel_l1_parts.default, (_r(3, 8), _r(3, 8, seed=1))),
    "store_residual_into": lambda: (
        torch.ops.dit_cache.store_residual_into.default,
        (_r(3, 8), _r(3, 8, seed=1), torch.empty(3, 8)),
    ),
    "apply_residual": lambda: (
        torch.ops.dit_cache.apply_residual.default,
        (_r(2, 3, 8), _r(2, 3, 8, seed=1), _r(8, seed=2), 1.0),
    ),
    "apply_residual_scalar": lambda: (
        torch.ops.dit_cache.apply_residual.default,
        (_r(2, 3, 8, dtype=torch.bfloat16), _r(2, 3, 8, seed=1, dtype=torch.bfloat16), None, 0.5),
    ),
    "magnitude_ratio": lambda: (torch.ops.dit_cache.magnitude_ratio.default, (_r(4, 8), _r(4, 8, seed=1))),
    "taylor_update": lambda: (
        torch.ops.dit_cache.taylor_update.default,
        ([_r(3, 8, seed=i) for i in range(3)], _r(3, 8, seed=9), 2.0, 2),
    ),
    "taylor_forecast": lambda: (
        torch.ops.dit_cache.taylor_forecast.default,
        ([_r(3, 8, seed=i) for i in range(3)], 1.5),
    ),
    "taylor_forecast_out": lambda: (
        torch.ops.dit_cache.taylor_forecast_out.default,
        ([_r(3, 8, seed=i) for i in range(3)], 1.5, torch.empty(3, 8)),
    ),
    "token_scatter_gate": lambda: (
        torch.ops.dit_cache.token_scatter_gate.default,
        (_r(2, 5, 8), _r(2, 5, 8, seed=1), torch.tensor([3, 0]), _r(2, 2, 8, seed=2), _r(2, 1, 8, seed=3), 1.0),
    ),
}


@pytest.mark.parametrize("name", sorted(OPCHECK_CASES))
def test_opcheck(name, backend):
    """Schema (declared mutations), fake implementation and AOT dispatch of each registered op."""
    op, args = OPCHECK_CASES[name]()
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


def _residual_step(out, inp, buf):
    res = K.store_residual(out, inp, buf)
    return K.apply_residual(inp * 2, res, 0.5)


def _rel_l1(a, b):
    parts = K.rel_l1_parts(a * 2, b)
    return parts[0] / parts[1]


def _magnitude(a, b):
    return K.magnitude_ratio(a + 1, b) * 3


def _taylor(d0, d1, d2, feature):
    ds = [d0, d1, d2]
    filled = K.taylor_update(ds, feature * 1.5, 2.0, 2)
    return K.taylor_forecast(ds, filled, 1.0) + 1


def _taylor_out(d0, d1, out):
    K.taylor_forecast([d0, d1], 2, 0.5, out=out)
    return out * 2


def _scatter(x, cache, index, rows, gate):
    return K.token_scatter_gate(x, cache, index, rows * 1.0, gate) - 1


def _compile_cases():
    return {
        "residual": (_residual_step, lambda: (_r(4, 8), _r(4, 8, seed=1), torch.empty(4, 8))),
        "rel_l1": (_rel_l1, lambda: (_r(4, 8), _r(4, 8, seed=1))),
        "magnitude": (_magnitude, lambda: (_r(4, 8), _r(4, 8, seed=1))),
        "taylor": (_taylor, lambda: tuple(_r(4, 8, seed=i) for i in range(4))),
        "taylor_out": (_taylor_out, lambda: (_r(4, 8), _r(4, 8, seed=1), torch.empty(4, 8))),
        "scatter": (
            _scatter,
            lambda: (_r(2, 5, 8), _r(2, 5, 8, seed=1), torch.tensor([4, 2]), _r(2, 2, 8, seed=2), _r(2, 1, 8, seed=3)),
        ),
    }


def _clone_args(args):
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


@pytest.mark.parametrize("name", sorted(_compile_cases()))
def test_torch_compile_fullgraph(name, backend):
    """Each op inside a torch.compile'd function: no graph break (fullgraph), eager results, same mutations."""
    torch._dynamo.reset()
    fn, make_args = _compile_cases()[name]
    eager_args = make_args()
    compiled_args = _clone_args(eager_args)
    expected = fn(*eager_args)
    got = torch.compile(fn, backend="aot_eager", fullgraph=True)(*compiled_args)
    torch.testing.assert_close(got, expected)
    for e, c in zip(eager_args, compiled_args):
        if isinstance(e, torch.Tensor) and e.dtype.is_floating_point:
            torch.testing.assert_close(c, e)  # in-place writes happened in the compiled run too


def test_torch_compile_inductor_all_ops(backend):
    """One function calling every op, compiled by inductor on CPU (C++ codegen around the opaque custom ops)."""
    torch._dynamo.reset()

    def step(a, b, buf, d0, d1, d2, x, cache, index, rows, gate):
        res = K.store_residual(a, b, buf)
        y = K.apply_residual(b, res, gate[0, 0])
        ds = [d0, d1, d2]
        filled = K.taylor_update(ds, y, 1.0, 1)
        forecast = K.taylor_forecast(ds, filled, 2.0)
        scattered = K.token_scatter_gate(x, cache, index, rows, gate)
        parts = K.rel_l1_parts(a, forecast)
        return forecast.sum() + scattered.sum() + parts[0] / parts[1] + K.magnitude_ratio(a, b)

    def make():
        return (
            _r(5, 8),
            _r(5, 8, seed=1),
            torch.empty(5, 8),
            *(_r(5, 8, seed=2 + i) for i in range(3)),
            _r(2, 5, 8, seed=6),
            _r(2, 5, 8, seed=7),
            torch.tensor([1, 4]),
            _r(2, 2, 8, seed=8),
            _r(2, 1, 8, seed=9),
        )

    eager_args, compiled_args = make(), make()
    expected = step(*eager_args)
    got = torch.compile(step, fullgraph=True)(*compiled_args)
    torch.testing.assert_close(got, expected)
    for e, c in zip(eager_args, compiled_args):
        torch.testing.assert_close(c, e)


def test_compiled_ops_dispatch_at_run_time(backend, monkeypatch):
    """The backend is chosen inside the op at run time, so DIT_CACHE_KERNELS flips a compiled function too."""
    torch._dynamo.reset()
    seen = []
    real = twins.rel_l1_parts

    def spy(a, b):
        seen.append(True)
        return real(a, b)

    monkeypatch.setattr(twins, "rel_l1_parts", spy)
    fn = torch.compile(lambda a, b: K.rel_l1_parts(a, b) * 1, backend="aot_eager", fullgraph=True)
    fn(torch.ones(4), torch.zeros(4))
    assert seen
    backend("not-a-backend")
    with pytest.raises(ValueError, match="valid values"):
        fn(torch.ones(4), torch.zeros(4))


def test_torch_compile_dynamic_scalars(backend):
    """dynamic=True turns the Taylor ints and floats into symbols: the checks must not need their values."""
    torch._dynamo.reset()

    def f(d0, d1, d2, feature, filled, gap, distance):
        ds = [d0, d1, d2]
        n = K.taylor_update(ds, feature, gap, filled)
        return K.taylor_forecast(ds, n, distance)

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True, dynamic=True)
    args = [_r(4, 8, seed=i) for i in range(4)]
    for filled, gap, distance in ((1, 2.0, 1.5), (2, 3.0, 0.5), (0, 1.0, 2.0)):
        expected = f(*[a.clone() for a in args], filled, gap, distance)
        got = compiled(*[a.clone() for a in args], filled, gap, distance)
        torch.testing.assert_close(got, expected)
