"""EasyCache, ERTACache and HyCa: their documented rules give exactly the expected decisions on exact-arithmetic
dummies; through a tiny real pipeline (calibrated with per-unit traces) a never-reuse setting is bitwise the
unpatched output, and a caching setting computes less and stays finite; bad input."""

import numpy as np
import pytest
import torch
from dummy import DummyDiT, FakeScheduler, drive, in_context

import dit_cache
from dit_cache.calibration import Profile, ProfileError, keys, model_fingerprint
from dit_cache.calibration.fit import build_profile, split_record
from dit_cache.calibration.recorder import UNIT_SAMPLES, Recorder, unit_keys
from dit_cache.calibration.resample import position_grid
from dit_cache.calibration.runner import CalibrationSettings, calibrate
from dit_cache.policies.easycache import predicted_change
from dit_cache.policies.ertacache import greedy_schedule
from dit_cache.testing import TINY_TEXT_CALL, tiny_text_flux


# ---------------------------------------------------------------------------------------------------- EasyCache
def test_easycache_accumulates_rate_times_input_change():
    """One block h -> 2h on inputs h_t = 1 + t/8 (10 steps, warm-up 1 step, tolerance 0.3). Step 1 computes (no rate
    yet); k = |2/8| / |1/8| = 2, so step t predicts 2 * (1/8) / |y_c| with y_c = 2 h_c: 1/9 after step 1 (steps 2, 3
    reuse, step 4 reaches 3/9 and computes), 1/12 after step 4 (5, 6, 7 reuse, 8 computes); the last step computes."""
    model, sched = DummyDiT(num_blocks=1), FakeScheduler(10)
    h = [torch.full((1, 4, 2), 1 + t / 8) for t in range(10)]
    dit_cache.apply(model, "easycache", tolerance=0.3, scheduler=sched)
    out = drive(model, sched, [1.0] * 10, hidden=h)
    stats = dit_cache.stats(model)
    assert stats.computed_steps() == [0, 1, 4, 8, 9]
    indicators = [r.indicator for r in stats.records]
    assert indicators[:2] == [None, None]
    assert indicators[2:9] == pytest.approx([1 / 9] * 3 + [1 / 12] * 4, rel=1e-6)
    assert torch.equal(out[2], h[2] + h[1]) and torch.equal(out[7], h[7] + h[4])  # input + stored transformation
    assert all(torch.equal(out[t], 2 * h[t]) for t in (0, 1, 4, 8, 9))


def test_easycache_cfg_branches_follow_the_first_call_of_the_step():
    """The unconditional calls see a constant input (alone they would reuse every step after the first); they follow
    the conditional call's decisions instead."""
    model, sched = DummyDiT(num_blocks=1), FakeScheduler(10)
    dit_cache.apply(model, "easycache", tolerance=0.3, scheduler=sched)
    for t, ts in enumerate(sched.timesteps):
        for branch, h in (("cond", torch.full((1, 4, 2), 1 + t / 8)), ("uncond", torch.ones(1, 4, 2))):
            in_context(model, branch)
            model(hidden_states=h, timestep=ts.reshape(1), temb=torch.tensor(1.0))
    stats = dit_cache.stats(model)
    assert stats.computed_steps(branch="cond") == stats.computed_steps(branch="uncond") == [0, 1, 4, 8, 9]


def test_easycache_warmup_and_max_skip():
    model, sched = DummyDiT(num_blocks=1), FakeScheduler(10)
    h = [torch.full((1, 4, 2), 1 + t / 8) for t in range(10)]
    dit_cache.apply(model, "easycache", tolerance=10.0, warmup=0.3, max_skip=2, scheduler=sched)
    drive(model, sched, [1.0] * 10, hidden=h)
    assert dit_cache.stats(model).computed_steps() == [0, 1, 2, 5, 8, 9]


def test_easycache_rows_that_do_not_move_predict_no_change():
    """Per row [input change, |dy|, |dx| between computed steps, |y_c|]: a static row (text rows of a token-first
    layout) adds nothing, a moving row without a rate leaves the step to compute."""
    assert predicted_change([0.0, 1.0, 0.0, 5.0, 1.0, 2.0, 1.0, 4.0]) == 0.5
    assert predicted_change([1.0, 1.0, 0.0, 5.0, 1.0, 2.0, 1.0, 4.0]) is None
    assert predicted_change([]) is None


def _linear_inputs(steps: int) -> list[torch.Tensor]:
    return [torch.full((1, 4, 2), 1 + t / 8) for t in range(steps)]


def _recorded_profile(steps: int, hidden: list[torch.Tensor] | None = None) -> tuple[DummyDiT, Profile]:
    """A calibration of one block h -> 2h on `hidden` (one job), as `dit-cache calibrate` assembles it."""
    model, sched = DummyDiT(num_blocks=1), FakeScheduler(steps)
    dit_cache.apply(model, Recorder(block_traces=True), scheduler=sched)
    drive(model, sched, [1.0] * steps, hidden=hidden or _linear_inputs(steps))
    traces = dit_cache.recorded_traces(model)
    dit_cache.remove(model)
    small, arrays = split_record({"index": 0, "prompt": "p", "seed": 0, "branches": traces})
    sampler = {"scheduler": "FlowMatchEulerDiscreteScheduler", "steps": steps}
    return model, build_profile(model_fingerprint(model), sampler, [small], arrays, {})


def test_calibration_records_the_stack_tables_easycache_and_ertacache_replay():
    """h_t = 1 + t/8, output 2 h_t: mean |x_i - x_j| = |i - j| / 8 with mean |x_i| on the diagonal, twice that for
    the output; output products 4 (1 + i/8)(1 + j/8)."""
    _, profile = _recorded_profile(6)
    i, j = np.meshgrid(np.arange(6), np.arange(6), indexing="ij")
    lower = np.tril(np.ones((6, 6)))
    distance = np.where(i == j, 1 + i / 8, np.abs(i - j) / 8) * lower
    tables = {kind: profile.record_table(0, "batch", kind).numpy() for kind in keys.ABSOLUTE_PAIR_KINDS}
    assert np.array_equal(tables[keys.INPUT_PAIRS], distance)
    assert np.array_equal(tables[keys.OUTPUT_PAIRS], 2 * distance)
    assert np.array_equal(tables[keys.OUTPUT_GRAM], 4 * (1 + i / 8) * (1 + j / 8) * lower)
    assert profile.has_array(keys.OUTPUT_GRAM, records=False)
    profile.validate()
    for kind in keys.ABSOLUTE_PAIR_KINDS:  # checked against the step grid like every pair table
        damaged = profile.copy()
        key = keys.record_array(0, "batch", kind)
        damaged.arrays[key] = damaged.arrays[key][:-1, :-1]
        with pytest.raises(ProfileError, match=rf"arrays\['{key}'\] must be \(6 x 6\) like the branch's grid"):
            damaged.validate()


@pytest.mark.parametrize(
    ("speedup", "computed", "low", "high"),
    [(2.0, [0, 1, 3, 6, 9], 2 / 11, 2 / 9), (10 / 6, [0, 1, 3, 5, 7, 9], 1 / 9, 2 / 11), (2.5, [0, 1, 5, 9], 3 / 9, 4 / 9)],
)  # fmt: skip
def test_easycache_speedup_replays_the_rule_on_the_recorded_tables(speedup, computed, low, high):
    """The profile records the very trajectory the run sees, so the run computes exactly the replayed 1 / speedup of
    the steps, at the smallest tolerance that gives it. After steps c' < c computed the rule predicts
    2 (1/8) / (2 (1 + c/8)) = 1 / (8 + c) per step: speedup=2 computes 3 (1/9 + 1/9 >= tol > 1/9), 6 (3/11 >= tol
    > 2/11) and the last step, so the tolerance lies in (2/11, 2/9]."""
    model, profile = _recorded_profile(10)
    sched = FakeScheduler(10)
    dit_cache.apply(model, "easycache", speedup=speedup, profile=profile, scheduler=sched)
    drive(model, sched, [1.0] * 10, hidden=_linear_inputs(10))
    assert dit_cache.stats(model).computed_steps() == computed
    assert low < dit_cache.cache_engine(model).policy.threshold <= high
    dit_cache.remove(model)


def test_easycache_speedup_needs_recorded_tables():
    model, profile = _recorded_profile(6)
    with pytest.raises(ProfileError, match="speedup= needs a calibrated profile.*dit-cache calibrate"):
        dit_cache.apply(model, "easycache", speedup=2.0, scheduler=FakeScheduler(6))
    for kind in (keys.INPUT_PAIRS, keys.OUTPUT_PAIRS):
        profile.arrays = {k: v for k, v in profile.arrays.items() if not k.endswith(kind)}
    with pytest.raises(ProfileError, match="no stack input/output tables.*recalibrate"):
        dit_cache.apply(model, "easycache", speedup=2.0, profile=profile, scheduler=FakeScheduler(6))


def test_easycache_speedup_beyond_the_forced_steps_is_refused_at_apply():
    model, profile = _recorded_profile(6)
    with pytest.raises(dit_cache.SpeedupError, match="easycache: speedup=20 is out of reach"):
        dit_cache.apply(model, "easycache", speedup=20.0, profile=profile, scheduler=FakeScheduler(6))


# ---------------------------------------------------------------------------------------------------- ERTACache
def _errors(steps: int) -> torch.Tensor:
    """res_pairs with error 0.1 per step of distance (lower triangle, as calibration stores it)."""
    i = torch.arange(steps)
    return torch.tril((i[:, None] - i[None, :]).float() * 0.1, -1)


def _ertacache_profile(model, steps: int, ratio: float = 2.0) -> Profile:
    profile = Profile(fingerprint=model_fingerprint(model))
    profile.branches["batch"] = {"grid": position_grid(steps).tolist(), "mag_ratio": [1.0] + [ratio] * (steps - 1)}
    profile.arrays["batch/res_pairs"] = _errors(steps)
    return profile


def test_greedy_schedule_reuses_while_the_profiled_error_is_under_the_threshold():
    errors = _errors(8).numpy()
    full = errors + errors.T
    assert greedy_schedule(full, 0.25, None) == {0, 3, 6}
    assert greedy_schedule(full, 0.25, 1) == {0, 2, 4, 6}
    assert greedy_schedule(full, 0.0, None) == set(range(8))


def test_ertacache_rectifies_reused_residuals_with_the_profiled_gain():
    """Constant input 1, block h -> 2h: residual 1. Threshold 0.25 computes 0, 3, 6; a residual reused j steps after
    its step is scaled by 2^j (mag ratios 2): outputs 1 + 2, 1 + 4 after each computed 2."""
    model, sched = DummyDiT(num_blocks=1), FakeScheduler(8)
    profile = _ertacache_profile(model, 8)
    dit_cache.apply(model, "ertacache", threshold=0.25, profile=profile, scheduler=sched)
    out = drive(model, sched, [1.0] * 8)
    assert dit_cache.stats(model).computed_steps() == [0, 3, 6]
    assert [float(o.flatten()[0]) for o in out] == [2, 3, 5, 2, 3, 5, 2, 3]
    dit_cache.remove(model)
    dit_cache.apply(model, "ertacache", threshold=0.25, rectify=False, profile=profile, scheduler=sched)
    assert all(torch.equal(o, torch.full((1, 4, 2), 2.0)) for o in drive(model, sched, [1.0] * 8))


def test_ertacache_speedup_searches_the_threshold_on_the_profile():
    model, sched = DummyDiT(num_blocks=1), FakeScheduler(8)
    dit_cache.apply(model, "ertacache", speedup=2.0, profile=_ertacache_profile(model, 8), scheduler=sched)
    drive(model, sched, [1.0] * 8)
    assert dit_cache.stats(model).computed_steps() == [0, 2, 4, 6]


def test_ertacache_adjusts_the_step_size_of_reused_steps_by_the_least_squares_fit():
    """Recorded outputs v_t = 2 (1 + t/8) (one block h -> 2h on h_t = 1 + t/8): a step i reused from c gets the step
    size factor <v_c, v_i> / <v_c, v_c> = (8 + i) / (8 + c) on its output (input plus the stored residual,
    h_i + h_c); computed steps are left alone."""
    model, profile = _recorded_profile(8)
    profile.arrays["batch/res_pairs"] = _errors(8)
    sched, h = FakeScheduler(8), _linear_inputs(8)
    dit_cache.apply(model, "ertacache", threshold=0.25, rectify=False, adjust_timestep=True, profile=profile,
                    scheduler=sched)  # fmt: skip
    out = drive(model, sched, [1.0] * 8, hidden=h)
    assert dit_cache.stats(model).computed_steps() == [0, 3, 6]
    for i, c in enumerate([0, 0, 0, 3, 3, 3, 6, 6]):
        expected = 2 * h[i] if i == c else (h[i] + h[c]) * ((8 + i) / (8 + c))
        torch.testing.assert_close(out[i], expected, rtol=1e-6, atol=0)
    dit_cache.remove(model)


def test_ertacache_timestep_adjustment_refuses_what_it_cannot_do_exactly():
    model, profile = _recorded_profile(6)
    profile.sampler["scheduler"] = "DPMSolverMultistepScheduler"
    with pytest.raises(ValueError, match="exact only for an ODE Euler step.*calibrated with DPMSolverMultistep"):
        dit_cache.apply(model, "ertacache", adjust_timestep=True, profile=profile, scheduler=FakeScheduler(6))
    profile.arrays = {k: v for k, v in profile.arrays.items() if not k.endswith(keys.OUTPUT_GRAM)}
    with pytest.raises(ProfileError, match="no output products.*recalibrate"):
        dit_cache.apply(model, "ertacache", adjust_timestep=True, profile=profile, scheduler=FakeScheduler(6))


def test_ertacache_needs_a_profile():
    with pytest.raises(ProfileError, match="dit-cache calibrate"):
        dit_cache.apply(DummyDiT(), "ertacache", scheduler=FakeScheduler(4))


# ---------------------------------------------------------------------------------------------------- HyCa
def _hyca_profile(model, steps: int) -> Profile:
    """Unit trajectories: block 0 attention linear in the step, block 1 attention quadratic, both MLPs constant."""
    t = torch.arange(steps, dtype=torch.float32)[:, None]
    curves = [1 + t, torch.zeros_like(t), 1 + t * t, torch.full_like(t, 5.0)]
    table = torch.stack([c.expand(steps, UNIT_SAMPLES) for c in curves], dim=1)
    profile = Profile(fingerprint=model_fingerprint(model))
    profile.branches["batch"] = {"grid": position_grid(steps).tolist()}
    profile.records = [{"index": 0, "branches": {"batch": {}}}]
    profile.arrays["records/0/batch/unit_features"] = table
    return profile


def test_hyca_gives_each_unit_the_solver_of_least_replayed_error():
    """Forecasting exactly: order 1 on the linear unit, 2 on the quadratic one; the constant units tie at zero
    error and get plain reuse. On a linear input the run forecasts every unit exactly."""
    model, sched = DummyDiT(num_blocks=2), FakeScheduler(9)
    h = [torch.full((1, 4, 2), 1 + t / 8) for t in range(9)]
    baseline = drive(model, sched, [1.0] * 9, hidden=h)
    dit_cache.apply(model, "hyca", interval=2, profile=_hyca_profile(model, 9), scheduler=sched)
    out = drive(model, sched, [1.0] * 9, hidden=h)
    policy = model._dit_cache.engine.policy
    assert unit_keys(model._dit_cache.engine.slots) == [(0, "attn"), (0, "ff"), (1, "attn"), (1, "ff")]
    assert list(policy._solvers.values()) == [{(0, "attn"): 1, (0, "ff"): 0, (1, "attn"): 2, (1, "ff"): 0}]
    state = model._dit_cache.engine.states["batch"]
    assert {key: histories[0].order for key, (histories, _) in state.histories.items()} == {(0, "attn"): 1, (1, "attn"): 2, (0, "ff"): 0, (1, "ff"): 0}  # fmt: skip
    assert dit_cache.stats(model).computed_steps() == [0, 1, 3, 5, 7]  # warm-up 2, then every 2nd
    for a, b in zip(out, baseline):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_hyca_restricted_solvers_and_missing_traces():
    model, sched = DummyDiT(num_blocks=2), FakeScheduler(9)
    dit_cache.apply(model, "hyca", interval=2, solvers=(0, 1), profile=_hyca_profile(model, 9), scheduler=sched)
    drive(model, sched, [1.0] * 9)
    assert set(next(iter(model._dit_cache.engine.policy._solvers.values())).values()) <= {0, 1}
    dit_cache.remove(model)
    bare = Profile(fingerprint=model_fingerprint(model))
    with pytest.raises(ProfileError, match="--block-traces"):
        dit_cache.apply(model, "hyca", profile=bare, scheduler=sched)


# ---------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("cls", "options", "message"),
    [
        (dit_cache.EasyCache, dict(tolerance=-1), "easycache: tolerance must be a finite number >= 0.0, got -1"),
        (dit_cache.EasyCache, dict(warmup=1.5), "easycache: warmup must be a fraction in [0, 1), got 1.5"),
        (dit_cache.ERTACache, dict(threshold=0.1, speedup=2.0), "ertacache: give threshold or speedup, not both"),
        (dit_cache.ERTACache, dict(rectify="yes"), "ertacache: rectify must be True or False, got 'yes'"),
        (dit_cache.ERTACache, dict(adjust_timestep=1), "ertacache: adjust_timestep must be True or False, got 1"),
        (dit_cache.EasyCache, dict(tolerance=0.1, speedup=2.0), "easycache: give tolerance or speedup, not both"),
        (dit_cache.HyCa, dict(solvers=(0, 3)), "hyca: solvers must name distinct solvers among (0, 1, 2)"),
        (dit_cache.HyCa, dict(interval=2, speedup=2.0), "hyca: give interval or speedup, not both"),
        (dit_cache.HyCa, dict(choose="best"), "hyca: choose must be 'output' or 'trajectories', got 'best'"),
    ],
)
def test_bad_options(cls, options, message):
    with pytest.raises(ValueError) as err:
        cls(**options)
    assert message in str(err.value)


# ---------------------------------------------------------------------------------------------------- pipeline
PROMPTS = ["a red circle on stripes", "a blue square on dots"]
STEPS = 8


@pytest.fixture(scope="module")
def calibrated():
    pipe = tiny_text_flux()
    settings = CalibrationSettings(steps=STEPS, call_kwargs=TINY_TEXT_CALL, seeds=(0,), block_traces=True)
    return pipe, calibrate(pipe, PROMPTS, settings, progress=False)


def _generate(pipe) -> torch.Tensor:
    kwargs = dict(TINY_TEXT_CALL, prompt="a green triangle", num_inference_steps=STEPS, output_type="latent")
    return pipe(**kwargs, generator=torch.Generator().manual_seed(3)).images


def test_calibration_records_unit_features(calibrated):
    pipe, profile = calibrated
    with dit_cache.cached(pipe, "fora"):
        units = len(unit_keys(pipe.transformer._dit_cache.engine.slots))
    tables = [v for k, v in profile.arrays.items() if k.endswith("/unit_features")]
    assert len(tables) == len(PROMPTS)
    assert all(t.shape == (STEPS, units, UNIT_SAMPLES) and torch.isfinite(t).all() for t in tables)
    assert all((t.abs().sum(dim=2) > 0).all() for t in tables)  # every unit sampled at every step


@pytest.mark.parametrize(
    ("policy", "never", "caching"),
    [
        ("easycache", dict(tolerance=0.0), dict(tolerance=0.5)),
        ("easycache", dict(tolerance=0.0), dict(speedup=2.0)),
        ("ertacache", dict(threshold=0.0), dict(speedup=2.0)),
        ("ertacache", dict(threshold=0.0, adjust_timestep=True), dict(speedup=2.0, adjust_timestep=True)),
        ("hyca", dict(interval=1), dict(interval=2)),
    ],
)
def test_through_a_pipeline(calibrated, policy, never, caching):
    pipe, profile = calibrated
    reference = _generate(pipe)
    extra = {} if policy == "easycache" and "speedup" not in caching else dict(profile=profile)
    with dit_cache.cached(pipe, policy, **never, **extra):
        assert torch.equal(_generate(pipe), reference)
        assert dit_cache.stats(pipe).compute_fraction == 1.0
    with dit_cache.cached(pipe, policy, **caching, **extra):
        out = _generate(pipe)
        fraction = dit_cache.stats(pipe).compute_fraction
    assert fraction < 0.9 and torch.isfinite(out).all()
    assert np.isfinite(float((out - reference).abs().mean()))


def test_easycache_speedup_through_a_pipeline_reaches_its_replayed_fraction(calibrated):
    """Scored on the calibration's own prompt and seed, the run sees the recorded trajectory up to the first reuse;
    the fraction is the one the replay planned for (within a step of it)."""
    pipe, profile = calibrated
    kwargs = dict(TINY_TEXT_CALL, prompt=PROMPTS[0], num_inference_steps=STEPS, output_type="latent")
    with dit_cache.cached(pipe, "easycache", speedup=2.0, profile=profile):
        pipe(**kwargs, generator=torch.Generator().manual_seed(0))
        fraction = dit_cache.stats(pipe).compute_fraction
    assert abs(fraction - 0.5) <= 1 / STEPS + 1e-9


def test_ertacache_timestep_adjustment_refuses_a_stochastic_sampler(calibrated):
    pipe, profile = calibrated
    euler = pipe.scheduler
    pipe.scheduler = type(euler).from_config(euler.config, stochastic_sampling=True)
    try:
        with dit_cache.cached(pipe, "ertacache", speedup=2.0, adjust_timestep=True, profile=profile):
            with pytest.raises(
                ValueError, match="the calling pipeline runs FlowMatchEulerDiscreteScheduler with stoch"
            ):
                _generate(pipe)
    finally:
        pipe.scheduler = euler
