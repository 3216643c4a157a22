"""Per-block similarity reuse on exact-arithmetic dummies: the documented rule (drift measured at the previous call,
extrapolated linearly) gives exactly the expected decisions; blocks decide independently; bad input."""

import pytest
import torch
from dummy import DummyDiT, FakeScheduler, PerBlockDiT, drive

import dit_cache
from dit_cache.calibration import Profile, model_fingerprint
from dit_cache.calibration.resample import position_grid


def test_linear_drift_rule_on_one_block():
    """Block input h_t = 1 + t/8 (the block is the identity: temb = 0). Drift since the last computation, read one
    call late: step 1 measures 1/8 per step; step 2 predicts 1/8 (reuse), step 3 2/9 (reuse), step 4 3/9 >= 0.3
    (compute); then 1/12 per step: 5, 6, 7 predict 1/12, 2/12, 3/12 (reuse), step 8 4/12 (compute)."""
    model, sched = DummyDiT(num_blocks=1), FakeScheduler(9)
    h = [torch.full((1, 4, 2), 1 + t / 8) for t in range(9)]
    dit_cache.apply(model, "bwcache", threshold=0.3, scheduler=sched)
    out = drive(model, sched, [0.0] * 9, hidden=h)
    stats = dit_cache.stats(model)
    assert stats.computed_steps() == [0, 1, 4, 8]
    assert [r.indicator for r in stats.records][2:5] == pytest.approx([1 / 8, 2 / 9, 3 / 9], rel=1e-6)
    assert all(torch.equal(o, x) for o, x in zip(out, h))  # identity blocks: reuse is exact


def test_max_skip_caps_reuses_in_a_row():
    model, sched = DummyDiT(num_blocks=1), FakeScheduler(9)
    dit_cache.apply(model, "bwcache", threshold=10.0, max_skip=2, scheduler=sched)
    drive(model, sched, [0.0] * 9, hidden=[torch.full((1, 4, 2), 1 + t / 8) for t in range(9)])
    assert dit_cache.stats(model).computed_steps() == [0, 1, 4, 7]


def _per_block_run(model, sched, steps=5):
    """h_t = 2^t; block 0's gate makes its output 4 at every step (temb0 = 4 / h_t - 1), blocks 1, 2 double."""
    h = [torch.full((1, 4, 2), 2.0**t) for t in range(steps)]
    out = []
    for t, ts in enumerate(sched.timesteps):
        temb = torch.tensor([4.0 / 2.0**t - 1.0, 1.0, 1.0])
        out.append(model(hidden_states=h[t], timestep=ts.reshape(1), temb=temb))
    return out


def test_blocks_decide_independently():
    """Block 0's input doubles each step (drift 1 >= threshold: it always runs); blocks 1 and 2 see a constant input
    (drift 0: reused from step 2, once a rate is measured). The output stays exact."""
    model, sched = PerBlockDiT(num_blocks=3), FakeScheduler(5)
    baseline = _per_block_run(model, sched)
    dit_cache.apply(model, "bwcache", threshold=0.5, scheduler=sched)
    out = _per_block_run(model, sched)
    assert all(torch.equal(a, b) for a, b in zip(out, baseline))
    records = dit_cache.stats(model).records
    assert [r.decision for r in records] == ["computed", "computed", "partial", "partial", "partial"]
    assert [r.computed_units for r in records] == [6, 6, 2, 2, 2]


def test_threshold_zero_never_reuses():
    model, sched = PerBlockDiT(num_blocks=3), FakeScheduler(5)
    baseline = _per_block_run(model, sched)
    dit_cache.apply(model, "bwcache", threshold=0.0, scheduler=sched)
    assert all(torch.equal(a, b) for a, b in zip(_per_block_run(model, sched), baseline))
    assert dit_cache.stats(model).compute_fraction == 1.0


def _block_profile(model, steps: int, change: float) -> Profile:
    profile = Profile(fingerprint=model_fingerprint(model))
    table = torch.full((steps, len(model.blocks)), change)
    table[0] = float("nan")  # no previous step
    profile.records = [{"index": 0, "branches": {"batch": {"steps": list(range(steps))}}}]
    profile.arrays = {"records/0/batch/block_input_change": table}
    profile.branches["batch"] = {"grid": position_grid(steps).tolist()}
    return profile


def test_speedup_replays_the_rule_on_per_block_traces():
    # 8 steps: on these uniform traces the rule reaches 0.5 exactly (at 12 steps only 0.417 or 0.583: refused)
    model, sched = DummyDiT(num_blocks=2), FakeScheduler(8)
    profile = _block_profile(model, 8, 0.05)
    dit_cache.apply(model, "bwcache", speedup=2.0, profile=profile, scheduler=sched)
    h = [torch.full((1, 4, 2), 1.05**t) for t in range(8)]
    drive(model, sched, [0.0] * 8, hidden=h)
    policy = model._dit_cache.engine.policy
    assert policy.replay_fraction(policy._traces(8, None), 8, policy.threshold) == pytest.approx(0.5, abs=0.1)
    assert dit_cache.stats(model).compute_fraction == pytest.approx(0.5, abs=0.15)


def test_speedup_without_block_traces_says_how_to_record_them():
    with pytest.raises(dit_cache.ProfileError, match="--block-traces"):
        dit_cache.apply(DummyDiT(), "bwcache", speedup=2.0, scheduler=FakeScheduler(4))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(threshold=-0.1), "bwcache: threshold must be a finite number >= 0.0, got -0.1"),
        (dict(max_skip=-1), "bwcache: max_skip must be an integer >= 0, got -1"),
        (dict(speedup=0.5), "bwcache: speedup must be a number >= 1"),
    ],
)
def test_bad_options(options, message):
    with pytest.raises(ValueError) as err:
        dit_cache.BWCache(**options)
    assert message in str(err.value)
