"""Each policy's decisions on the exact-arithmetic dummy model: a known indicator sequence gives exactly the expected
computed and reused steps, and reused outputs are exactly input + stored residual."""

import pytest
import torch
from dummy import DummyDiT, FakeScheduler, drive

import dit_cache
from dit_cache.calibration import Profile, model_fingerprint


def _profile(model, **policies) -> Profile:
    return Profile(fingerprint=model_fingerprint(model), policies=policies)


def _computed(model):
    return dit_cache.stats(model).computed_steps()


def test_teacache_accumulates_rescaled_change_and_resets_on_compute():
    model, sched = DummyDiT(), FakeScheduler(8)
    # temb grows by 25% per step: rel-L1 change 0.25; rescaled with y = 2x -> +0.5 per step.
    temb = [1.25**i for i in range(8)]
    profile = _profile(model, teacache={"coefficients": [0, 0, 0, 2.0, 0], "threshold": 1.2})
    dit_cache.apply(model, "teacache", profile=profile, scheduler=sched)
    drive(model, sched, temb)
    # step 0 forced; acc: 0.5 (reuse), 1.0 (reuse), 1.5 -> compute; 0.5, 1.0, 1.5 -> compute; step 7 last (forced)
    assert _computed(model) == [0, 3, 6, 7]
    records = dit_cache.stats(model).records
    assert [r.indicator for r in records[1:]] == [0.25] * 7


def test_teacache_clamps_negative_polynomial_and_caps_consecutive_skips():
    model, sched = DummyDiT(), FakeScheduler(8)
    temb = [1.25**i for i in range(8)]
    profile = _profile(model, teacache={"coefficients": [0, 0, 0, -1.0, 0]})  # negative everywhere
    dit_cache.apply(model, "teacache", profile=profile, threshold=0.1, max_skip=2, scheduler=sched)
    drive(model, sched, temb)
    assert _computed(model) == [0, 3, 6, 7]


def test_teacache_identity_rescaling_without_profile():
    model, sched = DummyDiT(), FakeScheduler(6)
    temb = [1.0, 1.25, 1.25, 1.25, 1.5625, 1.5625]  # changes 0.25, 0, 0, 0.25, 0
    dit_cache.apply(model, "teacache", threshold=0.3, scheduler=sched)
    drive(model, sched, temb)
    # acc 0.25 reuse, 0.25, 0.25, 0.5 -> compute, step 5 last
    assert _computed(model) == [0, 4, 5]


def test_teacache_warmup_steps_from_profile():
    model, sched = DummyDiT(), FakeScheduler(8)
    profile = _profile(model, teacache={"coefficients": [0, 0, 0, 1.0, 0], "warmup": 0.25})
    dit_cache.apply(model, "teacache", profile=profile, threshold=10.0, scheduler=sched)
    drive(model, sched, [1.25**i for i in range(8)])
    assert _computed(model) == [0, 1, 7]


def test_reused_step_is_input_plus_stored_residual_exactly():
    model, sched = DummyDiT(num_blocks=3), FakeScheduler(3)
    dit_cache.apply(model, "schedule", steps=(0, 2), scheduler=sched)
    h = [torch.full((1, 4, 2), v) for v in (1.0, 2.0, 4.0)]
    out = drive(model, sched, [1.0, 1.0, 1.0], hidden=h)
    # computed: 1 * 2^3 = 8, residual 7; reused step 1: 2 + 7 = 9 (computed would be 16); step 2: 4 * 8 = 32
    assert [float(o[0, 0, 0]) for o in out] == [8.0, 9.0, 32.0]
    assert dit_cache.stats(model).decisions() == ["computed", "reused", "computed"]


def test_magcache_accumulated_error_and_retention():
    model, sched = DummyDiT(), FakeScheduler(8)
    profile = _profile(model, magcache={"threshold": 0.6, "max_skip": 4, "retention": 0.25})
    profile.branches["batch"] = {"mag_ratio": [1.0] + [1.25] * 7}
    dit_cache.apply(model, "magcache", profile=profile, scheduler=sched)
    drive(model, sched, [1.0] * 8)
    # retention: steps 0, 1; then E = 0.25 (reuse), 0.25 + 0.5625 -> compute, alternating
    assert _computed(model) == [0, 1, 3, 5, 7]
    errors = [r.indicator for r in dit_cache.stats(model).records]
    assert errors[2] == 0.25 and errors[3] == 0.8125


def test_magcache_caps_consecutive_skips_at_k():
    model, sched = DummyDiT(), FakeScheduler(8)
    profile = _profile(model)
    profile.branches["batch"] = {"mag_ratio": [1.0] * 8}  # no error ever accumulates
    dit_cache.apply(model, "magcache", profile=profile, threshold=0.5, max_skip=2, retention=0.25, scheduler=sched)
    drive(model, sched, [1.0] * 8)
    assert _computed(model) == [0, 1, 4, 7]


def test_fbcache_threshold_on_front_block_residual():
    model, sched = DummyDiT(num_blocks=4), FakeScheduler(6)
    # front residual of block 0 = temb * h = h; rel change vs last computed step's: 0.125, 0.25 -> compute, ...
    values = [1.0, 1.125, 1.25, 1.25, 2.0, 2.0]
    h = [torch.full((1, 4, 2), v) for v in values]
    dit_cache.apply(model, "fbcache", threshold=0.2, scheduler=sched)
    out = drive(model, sched, [1.0] * 6, hidden=h)
    assert _computed(model) == [0, 2, 4]
    # step 1 reused: front block computed (2.25), middle+back reused with residual 16 - 2 = 14 -> 16.25
    assert float(out[1][0, 0, 0]) == 2.25 + 14.0


def test_fbcache_back_blocks_always_run():
    model, sched = DummyDiT(num_blocks=4), FakeScheduler(3)
    h = [torch.full((1, 4, 2), v) for v in (1.0, 1.0, 1.0)]
    dit_cache.apply(model, "fbcache", threshold=0.5, front_blocks=1, back_blocks=1, scheduler=sched)
    out = drive(model, sched, [1.0] * 3, hidden=h)
    assert _computed(model) == [0]
    assert [float(o[0, 0, 0]) for o in out] == [16.0] * 3  # exact: nothing changed between steps
    assert dit_cache.stats(model).records[1].computed_units == 4  # blocks 0 and 3 ran: 2 units each


def test_fora_interval_reuses_pre_gate_submodule_outputs():
    model, sched = DummyDiT(num_blocks=2), FakeScheduler(7)
    dit_cache.apply(model, "fora", interval=3, scheduler=sched)
    h = [torch.full((1, 4, 2), float(i + 1)) for i in range(7)]
    temb = [1.0, 1.0, 3.0, 1.0, 1.0, 1.0, 1.0]
    out = drive(model, sched, temb, hidden=h)
    assert _computed(model) == [0, 3, 6]
    # step 2 (reused): block 0 = 3 + 3 * attn_cached(1) = 6; block 1 input 6, cached attn(2) -> 6 + 3 * 2 = 12
    assert float(out[2][0, 0, 0]) == 12.0
    assert dit_cache.stats(model).records[2].computed_units == 0


def test_schedule_maps_onto_other_step_counts():
    model, sched = DummyDiT(), FakeScheduler(8)
    dit_cache.apply(model, "schedule", steps=(0, 4, 8, 14, 15), num_steps=16, scheduler=sched)
    drive(model, sched, [1.0] * 8)
    assert _computed(model) == [0, 2, 4, 7]


def test_schedule_step_out_of_range_fails_on_first_call_and_leaves_no_state():
    model, sched = DummyDiT(), FakeScheduler(4)
    dit_cache.apply(model, "schedule", steps=(0, 5), scheduler=sched)
    with pytest.raises(ValueError, match="out of range for a 4-step call"):
        drive(model, sched, [1.0] * 4)
    patch = model._dit_cache
    assert patch.engine.states == {} and patch.engine.call is None


def test_stats_table_lists_every_call():
    model, sched = DummyDiT(), FakeScheduler(4)
    dit_cache.apply(model, "schedule", steps=(0, 2), scheduler=sched)
    drive(model, sched, [1.0] * 4)
    stats = dit_cache.stats(model)
    table = str(stats)
    assert table.count("\n") == 4 + 1  # header + 4 rows + summary
    assert "compute fraction 0.500" in table
    assert stats.compute_fraction == 0.5
