"""Every supported family through its real diffusers pipeline (tiny random config): "never reuse" settings are
bitwise equal to the unpatched pipeline, remove() restores it exactly, calls are repeatable, aggressive settings cut
the compute, CFG on and off, exceptions leave no state."""

import dataclasses

import pytest
import torch

import dit_cache
from dit_cache import adapters
from dit_cache.calibration import Profile, model_fingerprint
from dit_cache.testing import FAMILIES, run, tiny_pipeline

pytestmark = pytest.mark.pipeline
STEPS = 8


def _mag_profile(transformer, ratio=1.02) -> Profile:
    profile = Profile(fingerprint=model_fingerprint(transformer))
    profile.branches["cond"] = {"mag_ratio": [1.0] + [ratio] * (STEPS - 1)}
    return profile


def _never(transformer) -> dict:
    return {
        "teacache": dict(threshold=0.0),
        "magcache": dict(threshold=0.0, profile=_mag_profile(transformer)),
        "fbcache": dict(threshold=0.0),
        "fora": dict(interval=1),
        "schedule": dict(steps=tuple(range(STEPS))),
    }


def _aggressive(transformer) -> dict:
    return {
        "teacache": dict(threshold=10.0),
        "magcache": dict(threshold=1.0, max_skip=3, retention=0.1, profile=_mag_profile(transformer)),
        "fbcache": dict(threshold=10.0),
        "fora": dict(interval=3),
        "schedule": dict(steps=(0, 3, 6)),
    }


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_pipe(request):
    return request.param, tiny_pipeline(request.param)


@pytest.mark.parametrize("cfg", [True, False], ids=["cfg", "no-cfg"])
def test_never_reuse_is_bitwise_uncached_and_remove_restores(family_pipe, cfg):
    family, pipe = family_pipe
    baseline = run(pipe, family, cfg=cfg, steps=STEPS)
    for policy, options in _never(pipe.transformer).items():
        dit_cache.apply(pipe, policy, **options)
        out = run(pipe, family, cfg=cfg, steps=STEPS)
        stats = dit_cache.stats(pipe)
        dit_cache.remove(pipe)
        assert torch.equal(out, baseline), f"{family} {policy}: never-reuse output differs from uncached"
        assert stats.compute_fraction == 1.0
        calls_per_step = 2 if cfg and family in ("flux", "wan", "hunyuan_video", "qwenimage") else 1
        assert stats.calls == STEPS * calls_per_step
        assert torch.equal(run(pipe, family, cfg=cfg, steps=STEPS), baseline), f"{family} {policy}: remove()"


@pytest.mark.parametrize("policy", ["teacache", "magcache", "fbcache", "fora", "schedule"])
def test_aggressive_setting_cuts_compute_with_bounded_change(family_pipe, policy):
    family, pipe = family_pipe
    baseline = run(pipe, family, cfg=True, steps=STEPS)
    dit_cache.apply(pipe, policy, **_aggressive(pipe.transformer)[policy])
    try:
        first = run(pipe, family, cfg=True, steps=STEPS)
        stats = dit_cache.stats(pipe)
        second = run(pipe, family, cfg=True, steps=STEPS)
    finally:
        dit_cache.remove(pipe)
    assert stats.compute_fraction < 0.7
    assert torch.equal(first, second), "two calls with the same seed must match (state is reset per call)"
    change = float((first - baseline).abs().mean() / baseline.abs().mean())
    assert 0 < change < 0.5
    assert torch.equal(run(pipe, family, cfg=True, steps=STEPS), baseline)


class _Boom(RuntimeError):
    pass


def test_exception_inside_a_call_leaves_no_state(family_pipe):
    family, pipe = family_pipe
    dit_cache.apply(pipe, "teacache", threshold=10.0)
    try:
        fresh = run(pipe, family, cfg=True, steps=STEPS)
        calls = {"n": 0}

        def explode(module, args):
            calls["n"] += 1
            if calls["n"] == 4:
                raise _Boom("simulated failure in the middle of a call")

        last_block = pipe.transformer._dit_cache.engine.slots[-1].module
        handle = last_block.register_forward_pre_hook(explode)  # raised inside the transformer's forward
        with pytest.raises(_Boom):
            run(pipe, family, cfg=True, steps=STEPS)
        handle.remove()
        assert pipe.transformer._dit_cache.engine.states == {}
        assert torch.equal(run(pipe, family, cfg=True, steps=STEPS), fresh)

        original_step, steps = pipe.scheduler.step, {"n": 0}

        def failing_step(*args, **kwargs):  # an exception outside the transformer, mid-trajectory
            steps["n"] += 1
            if steps["n"] == 4:
                raise _Boom("interrupted between steps")
            return original_step(*args, **kwargs)

        pipe.scheduler.step = failing_step
        try:
            with pytest.raises(_Boom):
                run(pipe, family, cfg=True, steps=STEPS)
        finally:
            del pipe.scheduler.step
        assert torch.equal(run(pipe, family, cfg=True, steps=STEPS), fresh)
    finally:
        dit_cache.remove(pipe)


def test_wan22_two_transformers_get_one_state_each():
    pipe = tiny_pipeline("wan22_a14b")  # two experts, boundary_ratio 0.5
    baseline = run(pipe, "wan", cfg=True, steps=STEPS)
    dit_cache.apply(pipe, "teacache", threshold=0.0)
    assert torch.equal(run(pipe, "wan", cfg=True, steps=STEPS), baseline)
    stats = dit_cache.stats(pipe)
    high = stats.computed_steps(branch="cond", transformer="transformer")
    low = stats.computed_steps(branch="cond", transformer="transformer_2")
    assert high and low and max(high) < min(low) and sorted(high + low) == list(range(STEPS))
    dit_cache.remove(pipe)
    dit_cache.apply(pipe, "fora", interval=2)
    run(pipe, "wan", cfg=True, steps=STEPS)
    stats = dit_cache.stats(pipe)
    dit_cache.remove(pipe)
    # each transformer starts its own interval at its first step
    assert stats.computed_steps("cond", "transformer_2")[0] == min(low)


def test_builtin_profile_serves_another_step_count():
    """A model with FLUX.1-dev's layout gets the published MagCache ratios (28 steps) resampled to 10 steps."""
    pipe = tiny_pipeline("flux", layers=19, single_layers=38, guidance_embeds=True)
    inputs = dict(cfg=False, steps=10)
    baseline = run(pipe, "flux", **inputs)
    with dit_cache.cached(pipe, "magcache"):
        patch = pipe.transformer._dit_cache
        assert patch.engine.policy.profile.name == "flux.1-dev"
        out = run(pipe, "flux", **inputs)
        stats = dit_cache.stats(pipe)
    assert stats.calls == 10 and 0 < stats.compute_fraction < 1
    assert not torch.equal(out, baseline)
    with dit_cache.cached(pipe, "teacache"):
        assert pipe.transformer._dit_cache.engine.policy.threshold == 0.6  # FLUX's published default
        run(pipe, "flux", **inputs)


def test_builtin_profile_of_another_model_is_refused_with_both_fingerprints():
    pipe = tiny_pipeline("wan")
    with pytest.raises(dit_cache.ProfileError, match="flux.1-dev") as err:
        dit_cache.apply(pipe, "magcache", profile="flux.1-dev")
    assert "WanTransformer3DModel" in str(err.value) and "FluxTransformer2DModel" in str(err.value)
    assert not dit_cache.is_applied(pipe)


def _each_group(spec, change):
    """`spec` with every block group replaced by `change(group)`."""
    return dataclasses.replace(spec, groups=tuple(change(g) for g in spec.groups))


def _fora_with_each_spec(pipe, monkeypatch, specs: dict):
    """Yields each name of `specs` while FORA (interval 2) is applied to `pipe` as if its adapter were that spec."""
    for name, spec in specs.items():
        monkeypatch.setattr(dit_cache.api, "find_spec", lambda transformer, spec=spec: spec)
        with dit_cache.cached(pipe, "fora", interval=2):
            yield name


@pytest.mark.parametrize("family", ["flux", "hunyuan_video"])
def test_fora_reuses_single_block_proj_out_exactly(family, monkeypatch):
    """A single-stream block projects cat(attention, MLP) with `proj_out`. On a FORA reuse step both are the cached
    outputs of one step, so reusing proj_out's output too is exact: the trajectory equals the one where proj_out is
    recomputed from the reused inputs, and proj_out does not run on reuse steps."""
    pipe = tiny_pipeline(family)
    spec = adapters.find_spec(pipe.transformer)
    without = _each_group(spec, lambda g: dataclasses.replace(g, mlp=tuple(m for m in g.mlp if m != "proj_out")))
    weight = pipe.transformer.single_transformer_blocks[0].proj_out.weight
    linear, calls = torch.nn.functional.linear, []

    def counted(x, w, *args, **kwargs):  # the projection's arithmetic, not the module call a hook would replace
        calls.append(w is weight)
        return linear(x, w, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "linear", counted)
    runs = {}
    for name in _fora_with_each_spec(pipe, monkeypatch, {"reused": spec, "recomputed": without}):
        calls.clear()
        runs[name] = (run(pipe, family, steps=6), sum(calls))
    torch.testing.assert_close(runs["reused"][0], runs["recomputed"][0], rtol=1e-5, atol=1e-6)
    assert runs["recomputed"][1] == 12 and runs["reused"][1] == 6  # 6 steps x 2 CFG branches; every other step reused


@pytest.mark.parametrize("family", ["flux", "hunyuan_video"])
def test_fora_reuse_skips_the_single_block_activation_exactly(family, monkeypatch):
    """A single-stream block's MLP unit is `act_mlp(proj_mlp(x))`: on a FORA reuse step the activation does not run
    either, and the output is bitwise the one where it is applied to the reused proj_mlp output."""
    pipe = tiny_pipeline(family)
    spec = adapters.find_spec(pipe.transformer)
    without = _each_group(spec, lambda g: dataclasses.replace(g, tails=()))
    gelu, calls = torch.nn.GELU.forward, []

    def counted(self, x):
        calls.append(x.shape)
        return gelu(self, x)

    monkeypatch.setattr(torch.nn.GELU, "forward", counted)
    run(pipe, family, steps=6)
    blocks = len(pipe.transformer.single_transformer_blocks)
    assert len(calls) == 12 * blocks  # uncached: every single block's act_mlp, 6 steps x 2 CFG branches
    runs = {}
    for name in _fora_with_each_spec(pipe, monkeypatch, {"tail": spec, "no tail": without}):
        calls.clear()
        runs[name] = (run(pipe, family, steps=6), len(calls))
    assert torch.equal(runs["tail"][0], runs["no tail"][0])
    assert runs["no tail"][1] == 12 * blocks and runs["tail"][1] == 6 * blocks


@pytest.mark.parametrize("family", ["flux", "hunyuan_video"])
def test_fora_keeps_only_proj_out_of_a_single_block_exactly(family, monkeypatch):
    """Attention and MLP of a single-stream block feed only proj_out: with proj_out's output reused, FORA keeps
    nothing of theirs (a fifth of the memory at Flux's widths) and the output is bitwise the one that keeps them."""
    pipe = tiny_pipeline(family)
    spec = adapters.find_spec(pipe.transformer)
    without = _each_group(spec, lambda g: dataclasses.replace(g, feeds=()))
    first_single = len(pipe.transformer.transformer_blocks)
    runs = {}
    for name in _fora_with_each_spec(pipe, monkeypatch, {"feeds": spec, "no feeds": without}):
        engine, kept = pipe.transformer._dit_cache.engine, set()

        def look(*_, engine=engine, kept=kept):
            kept.update(n for state in engine.states.values() for i, n in state.outputs if i >= first_single)

        handle = pipe.transformer.register_forward_hook(look)
        runs[name] = (run(pipe, family, steps=6), kept, dit_cache.stats(pipe).compute_fraction)
        handle.remove()
    assert torch.equal(runs["feeds"][0], runs["no feeds"][0])
    assert runs["feeds"][1] == {"proj_out"} and runs["no feeds"][1] == {"attn", "proj_mlp", "proj_out"}
    assert runs["feeds"][2] == runs["no feeds"][2] == 0.5
