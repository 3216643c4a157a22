"""Forecasting: the Taylor history is exact on polynomial trajectories up to its order (any spacing of the computed
steps), the FoCa-style calibration is exact one order higher on evenly spaced ones, and TaylorSeer, FORA and the
step policies with `forecast=` reproduce polynomial trajectories exactly on the dummy model."""

import numpy as np
import pytest
import torch
from dummy import DummyDiT, FakeScheduler, drive
from hypothesis import given, settings
from hypothesis import strategies as st

import dit_cache
from dit_cache.policies.forecast import computed_steps, exact_steps, interval_for_speedup
from dit_cache.policies.taylor import TaylorHistory


def _poly(coefficients):
    return lambda t: torch.tensor([float(np.polyval(coefficients, t))], dtype=torch.float64)


@settings(max_examples=40, deadline=None)
@given(
    order=st.integers(0, 4),
    coefficients=st.lists(st.floats(-2, 2), min_size=5, max_size=5),
    gaps=st.lists(st.integers(1, 4), min_size=6, max_size=8),
    ahead=st.integers(1, 5),
)
def test_taylor_forecast_is_exact_on_polynomials_up_to_its_order(order, coefficients, gaps, ahead):
    f = _poly(coefficients[: order + 1])  # degree <= order
    history = TaylorHistory(order)
    steps = np.cumsum([0, *gaps]).tolist()
    for step in steps:
        history.update(f(step), step)
    target = steps[-1] + ahead
    scale = max(1.0, abs(float(f(target))))
    assert abs(float(history.forecast(target) - f(target))) <= 1e-8 * scale * 10**order


@pytest.mark.parametrize("order", [1, 2, 3])
def test_foca_calibration_is_exact_one_order_higher_on_even_steps(order):
    f = _poly(np.random.default_rng(order).normal(size=order + 2))  # degree order + 1
    plain, corrected, half = TaylorHistory(order), TaylorHistory(order, 1.0), TaylorHistory(order, 0.5)
    for step in range(0, 30, 3):
        for h in (plain, corrected, half):
            h.update(f(step), step)
    for target in (28, 29, 31, 35):
        exact = float(f(target))
        error = float(plain.forecast(target)) - exact
        assert abs(error) > 1e-3  # a plain order-k forecast misses the degree k + 1 term
        assert float(corrected.forecast(target)) == pytest.approx(exact, rel=1e-9, abs=1e-9)
        assert float(half.forecast(target)) - exact == pytest.approx(error / 2, rel=1e-6)


def test_order_one_uses_the_kernel_and_matches_the_exact_update():
    f = _poly([0.5, -1.0, 3.0])
    kernel, newton = TaylorHistory(1), TaylorHistory(1, corrector=1e-300)  # any corrector takes the Newton path
    for step in (0, 1, 3, 7):
        kernel.update(f(step), step)
        newton.update(f(step), step)
    assert [float(d) for d in kernel.derivatives] == pytest.approx([float(d) for d in newton.derivatives])


def _linear_hidden(steps):
    return [torch.full((1, 4, 2), 1.0 + t / 4) for t in range(steps)]


def test_taylorseer_forecasts_linear_trajectories_exactly():
    """Every attention output is linear in the step (h_t = 1 + t/4, gates constant): an order-1 forecast is exact."""
    model, sched = DummyDiT(num_blocks=2), FakeScheduler(10)
    h = _linear_hidden(10)
    baseline = drive(model, sched, [1.0] * 10, hidden=h)
    dit_cache.apply(model, "taylorseer", interval=4, order=1, warmup=2, scheduler=sched)
    out = drive(model, sched, [1.0] * 10, hidden=h)
    stats = dit_cache.stats(model)
    assert stats.computed_steps() == [0, 1, 5, 9] == computed_steps(10, 4, 2)
    assert stats.decisions()[2] == "forecast" and stats.records[2].computed_units == 0
    assert all(torch.equal(a, b) for a, b in zip(out, baseline))
    dit_cache.remove(model)
    dit_cache.apply(model, "fora", interval=4, scheduler=sched)  # plain reuse is not exact here
    assert not all(torch.equal(a, b) for a, b in zip(drive(model, sched, [1.0] * 10, hidden=h), baseline))


def test_fora_forecast_option():
    model, sched = DummyDiT(num_blocks=2), FakeScheduler(9)
    h = _linear_hidden(9)
    baseline = drive(model, sched, [1.0] * 9, hidden=h)
    dit_cache.apply(model, "fora", interval=4, forecast=1, scheduler=sched)
    out = drive(model, sched, [1.0] * 9, hidden=h)
    assert dit_cache.stats(model).decisions()[:4] == ["computed", "forecast", "forecast", "forecast"]
    # steps 1-3 forecast from one computed step (order 0: plain reuse); after step 4, linear and exact
    assert all(torch.equal(a, b) for a, b in zip(out[5:], baseline[5:]))
    assert not torch.equal(out[1], baseline[1])


@pytest.mark.parametrize("policy", ["schedule", "teacache"])
def test_step_policies_forecast_the_residual(policy):
    """The block-stack residual h * ((1 + temb)^N - 1) is linear in h_t: an order-1 forecast of it is exact."""
    model, sched = DummyDiT(num_blocks=2), FakeScheduler(8)
    h = _linear_hidden(8)
    baseline = drive(model, sched, [1.0] * 8, hidden=h)
    options = dict(steps=(0, 1, 4, 7)) if policy == "schedule" else dict(threshold=0.9, max_skip=2)
    dit_cache.apply(model, policy, forecast=1, scheduler=sched, **options)
    out = drive(model, sched, [1.0] * 8, hidden=h)
    decisions = dit_cache.stats(model).decisions()
    assert "forecast" in decisions and "reused" not in decisions
    second_computed = [i for i, d in enumerate(decisions) if d == "computed"][1]
    assert any(d == "forecast" for d in decisions[second_computed:])
    assert all(torch.equal(out[i], baseline[i]) for i in range(second_computed, 8))  # two points: linear, exact


def test_never_reuse_settings_are_bitwise_uncached():
    model, sched = DummyDiT(num_blocks=2), FakeScheduler(6)
    h = [torch.randn(1, 4, 2) for _ in range(6)]
    baseline = drive(model, sched, [0.5] * 6, hidden=h)
    for policy, options in [("taylorseer", dict(interval=1, order=2)), ("teacache", dict(threshold=0.0, forecast=2))]:
        dit_cache.apply(model, policy, scheduler=sched, **options)
        out = drive(model, sched, [0.5] * 6, hidden=h)
        assert all(torch.equal(a, b) for a, b in zip(out, baseline)), policy
        dit_cache.remove(model)


def test_order_above_what_the_history_holds_is_refused_before_caching():
    model, sched = DummyDiT(num_blocks=2), FakeScheduler(8)
    dit_cache.apply(model, "taylorseer", interval=4, order=3, warmup=0, scheduler=sched)
    with pytest.raises(ValueError) as err:
        drive(model, sched, [1.0] * 8)
    text = str(err.value)
    assert "order=3 needs 4 computed steps" in text and "computes only 2 (0, 4)" in text
    assert "lower order to 1 or interval to 2" in text
    assert model._dit_cache.engine.states == {}
    dit_cache.remove(model)
    one_step = FakeScheduler(1)  # nothing is forecast: any order is fine
    dit_cache.apply(model, "taylorseer", interval=4, order=3, warmup=0, scheduler=one_step)
    drive(model, one_step, [1.0])
    assert dit_cache.stats(model).decisions() == ["computed"]


def test_speedup_picks_the_interval():
    # interval 5 computes 0, 1, 6, 11, 16 and interval 6 computes 0, 1, 7, 13, 19: both 0.25, the smaller wins
    assert interval_for_speedup(20, 2, 4.0) == 5
    assert len(computed_steps(20, 5, 2)) / 20 == 0.25
    model, sched = DummyDiT(num_blocks=2), FakeScheduler(20)
    dit_cache.apply(model, "taylorseer", speedup=4.0, scheduler=sched)
    drive(model, sched, [1.0] * 20)
    assert dit_cache.stats(model).compute_fraction == 0.25


@settings(max_examples=60, deadline=None)
@given(num_steps=st.integers(2, 80), warmup=st.integers(0, 5), data=st.data())
def test_exact_steps_gaps_are_even_and_longest_mid_trajectory(num_steps, warmup, data):
    count = data.draw(st.integers(1, num_steps))
    steps = sorted(exact_steps(num_steps, warmup, count))
    head = max(1, min(warmup, count))
    assert len(steps) == count and steps[:head] == list(range(head))
    if count > head:
        assert steps[-1] == num_steps - 1
        gaps = np.diff(steps[head - 1 :])
        assert gaps.max() - gaps.min() <= 1
        long = np.flatnonzero(gaps == gaps.max())  # the longer gaps are one run around the middle
        assert np.all(np.diff(long) == 1) and abs(long.mean() - (len(gaps) - 1) / 2) <= 0.5


@pytest.mark.parametrize(("speedup", "expected"), [(2.0, [0, 1, 3, 5, 7, 9, 11, 13, 16, 19, 21, 23, 25, 27, 29]),
                                                  (3.0, [0, 1, 4, 7, 11, 15, 19, 23, 26, 29])])  # fmt: skip
def test_exact_speedup_computes_exactly_its_share_of_steps(speedup, expected):
    """exact=True: round(30 / speedup) computed steps, the warm-up then gaps as even as they can be, the longer ones
    in the middle, where the nearest interval computes 16 (2x: 0, 1, 3, ..., 29) or 11 (3x) of 30."""
    model, sched = DummyDiT(num_blocks=2), FakeScheduler(30)
    dit_cache.apply(model, "taylorseer", speedup=speedup, order=2, exact=True, scheduler=sched)
    drive(model, sched, [1.0] * 30)
    records = dit_cache.stats(model).records
    assert [r.step for r in records if r.decision == "computed"] == expected
    assert {r.decision for r in records} == {"computed", "forecast"}
    dit_cache.remove(model)
    dit_cache.apply(model, "taylorseer", speedup=speedup, scheduler=sched)
    drive(model, sched, [1.0] * 30)
    assert dit_cache.stats(model).compute_fraction == {2.0: 16, 3.0: 11}[speedup] / 30
    dit_cache.remove(model)


def test_steps_computes_exactly_those_and_maps_to_other_step_counts():
    """steps=(...): exactly the listed steps compute (no warm-up of its own), every other one is forecast, and with
    num_steps the list moves to the same trajectory positions of a call with another step count."""
    model, sched = DummyDiT(num_blocks=2), FakeScheduler(10)
    h = _linear_hidden(10)
    baseline = drive(model, sched, [1.0] * 10, hidden=h)
    dit_cache.apply(model, "taylorseer", steps=(0, 2, 5, 8), order=1, scheduler=sched)
    out = drive(model, sched, [1.0] * 10, hidden=h)
    records = dit_cache.stats(model).records
    assert [r.step for r in records if r.decision == "computed"] == [0, 2, 5, 8]
    assert [r.step for r in records if r.decision == "forecast"] == [1, 3, 4, 6, 7, 9]
    assert dit_cache.stats(model).compute_fraction == 0.4
    assert all(torch.equal(out[i], baseline[i]) for i in range(3, 10))  # linear: exact once two steps are computed
    dit_cache.remove(model)
    long = FakeScheduler(19)  # written for 10 steps: step s moves to round(s * 18 / 9) = 2 s
    dit_cache.apply(model, "taylorseer", steps=(0, 2, 5, 8), num_steps=10, scheduler=long)
    drive(model, long, [1.0] * 19)
    assert dit_cache.stats(model).computed_steps() == [0, 4, 10, 16]
    dit_cache.remove(model)
    short = FakeScheduler(6)  # without num_steps, a step out of range fails on the first call, before caching
    dit_cache.apply(model, "taylorseer", steps=(0, 2, 5, 8), scheduler=short)
    with pytest.raises(ValueError, match="taylorseer: step 8 is out of range for a 6-step call"):
        drive(model, short, [1.0] * 6)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(steps=(0, 3, 2)), "taylorseer: steps must be strictly increasing without repeats, got (0, 3, 2)"),
        (dict(steps=(1, 3)), "taylorseer: step 0 must be computed"),
        (dict(steps=(0, -2)), "taylorseer: steps must be non-negative integers, got -2"),
        (dict(steps="0,2,4"), "taylorseer: steps must be a sequence of step indices"),
        (dict(steps=()), "taylorseer: steps must list the step indices to compute"),
        (dict(steps=(0, 4), num_steps=4), "taylorseer: step 4 is out of range for num_steps=4"),
        (dict(steps=(0, 2), speedup=2.0), "taylorseer: give steps or interval / speedup, not both"),
        (dict(steps=(0, 2), interval=2), "taylorseer: give steps or interval / speedup, not both"),
        (dict(num_steps=10), "taylorseer: num_steps= is the step count of steps=(...)"),
    ],
)
def test_bad_steps(options, message):
    with pytest.raises(ValueError) as err:
        dit_cache.apply(DummyDiT(), "taylorseer", scheduler=FakeScheduler(4), **options)
    assert message in str(err.value)


def test_policy_spec_keeps_bracketed_lists():
    """`dit-cache eval --policies` specs: a tuple's commas are not option separators."""
    from dit_cache.config import parse_policy_spec

    spec = "taylorseer:steps=(0,2,5,8),num_steps=10,order=1"
    assert parse_policy_spec(spec) == ("taylorseer", {"steps": (0, 2, 5, 8), "num_steps": 10, "order": 1})
    assert parse_policy_spec("teacache:threshold=0.2,max_skip=3") == ("teacache", {"threshold": 0.2, "max_skip": 3})


@pytest.mark.parametrize(
    ("policy", "options", "message"),
    [
        ("taylorseer", dict(order=5), "taylorseer: order must be an integer Taylor order in 0..4"),
        ("taylorseer", dict(corrector=1.5), "taylorseer: corrector must be a weight in [0, 1]"),
        ("taylorseer", dict(interval=0), "taylorseer: interval must be an integer >= 1, got 0"),
        ("taylorseer", dict(interval=3, speedup=2.0), "taylorseer: give interval or speedup, not both"),
        ("taylorseer", dict(interval=3, exact=True), "taylorseer: exact=True needs speedup="),
        ("taylorseer", dict(speedup=2.0, exact=1), "taylorseer: exact must be True or False, got 1"),
        ("teacache", dict(forecast=-1), "teacache: forecast must be an integer Taylor order in 0..4"),
        ("fora", dict(forecast=1.5), "fora: forecast must be an integer Taylor order"),
    ],
)
def test_bad_options(policy, options, message):
    with pytest.raises(ValueError) as err:
        dit_cache.apply(DummyDiT(), policy, scheduler=FakeScheduler(4), **options)
    assert message in str(err.value)
