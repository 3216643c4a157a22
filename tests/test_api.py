"""Bad input gets a clear error and no side effect; remove() leaves the exact original modules."""

import pytest
import torch
from dummy import DummyDiT, FakeScheduler, drive
from torch import nn

import dit_cache
from dit_cache.config import PolicyConfig
from dit_cache.testing import run, tiny_pipeline


def _module_state(model: nn.Module) -> dict:
    return {name: sorted(vars(m)) for name, m in model.named_modules()}


def test_remove_restores_exact_modules_and_forward():
    pipe = tiny_pipeline("flux")
    run(pipe, "flux", steps=2)  # the pipeline's cache_context leaves diffusers' own empty registry behind
    before = _module_state(pipe.transformer)
    for policy in ("teacache", "fora", "fbcache"):
        dit_cache.apply(pipe, policy)
        assert _module_state(pipe.transformer) != before
        dit_cache.remove(pipe)
        assert _module_state(pipe.transformer) == before
    fresh = DummyDiT()
    before = _module_state(fresh)
    dit_cache.apply(fresh, "fora", scheduler=FakeScheduler(3))
    dit_cache.remove(fresh)
    assert _module_state(fresh) == before
    assert all("forward" not in vars(m) for m in fresh.modules())


def test_cached_context_manager_removes_on_exit_and_on_error():
    model, sched = DummyDiT(), FakeScheduler(4)
    with dit_cache.cached(model, "schedule", steps=(0, 2), scheduler=sched):
        drive(model, sched, [1.0] * 4)
        assert dit_cache.stats(model).compute_fraction == 0.5
    assert not dit_cache.is_applied(model)
    with pytest.raises(KeyError):
        with dit_cache.cached(model, "fora", scheduler=sched):
            raise KeyError("user code failed")
    assert not dit_cache.is_applied(model)


@pytest.mark.parametrize(
    ("policy", "options", "message"),
    [
        (
            "tea-cache",
            {},
            "unknown policy 'tea-cache'; valid policies: auto, bwcache, cfg, easycache, ertacache, fbcache, fora, hyca",
        ),
        ("teacache", {"thresh": 0.1}, "unknown option(s) 'thresh' for policy 'teacache'; valid options"),
        ("teacache", {"threshold": -0.1}, "teacache: threshold must be a finite number >= 0.0, got -0.1"),
        ("magcache", {"max_skip": -1}, "magcache: max_skip must be an integer >= 0, got -1"),
        ("magcache", {"retention": 1.5}, "magcache: retention must be a fraction in [0, 1), got 1.5"),
        ("fora", {"interval": 0}, "fora: interval must be an integer >= 1, got 0"),
        ("fbcache", {"front_blocks": 0}, "fbcache: front_blocks must be an integer >= 1, got 0"),
        ("schedule", {"steps": (0, 5, 3)}, "schedule: steps must be strictly increasing"),
        ("schedule", {"steps": (1, 3)}, "schedule: step 0 must be computed"),
        ("schedule", {"steps": (0, 9), "num_steps": 8}, "schedule: step 9 is out of range for num_steps=8"),
        ("teacache", {"speedup": 0.5}, "speedup must be a number >= 1"),
    ],
)
def test_bad_options_are_refused_before_touching_the_model(policy, options, message):
    model = DummyDiT()
    before = _module_state(model)
    with pytest.raises((ValueError, TypeError)) as err:
        dit_cache.apply(model, policy, scheduler=FakeScheduler(4), **options)
    assert message in str(err.value)
    assert _module_state(model) == before


def test_fbcache_needs_a_block_to_cache():
    with pytest.raises(ValueError, match="the model has 4 blocks"):
        dit_cache.apply(DummyDiT(4), "fbcache", front_blocks=2, back_blocks=2, scheduler=FakeScheduler(4))


def test_pipeline_without_transformer():
    class NoTransformer:
        components = {"unet": nn.Linear(2, 2), "scheduler": object()}

    with pytest.raises(ValueError, match="has no transformer to cache"):
        dit_cache.apply(NoTransformer(), "teacache")


def test_unsupported_model_names_supported_classes_and_how_to_register():
    with pytest.raises(TypeError) as err:
        dit_cache.apply(nn.Sequential(nn.Linear(2, 2)), "teacache")
    text = str(err.value)
    assert "FluxTransformer2DModel" in text and "register_adapter" in text


def test_generic_fallback_finds_block_lists(monkeypatch):
    """AuraFlow with its adapter taken away: the generic one finds `single_transformer_blocks` (its
    `joint_transformer_blocks` are not a standard name and change the token layout, so they stay uncached) and caches
    them, as the registered adapter does."""
    from diffusers import AuraFlowTransformer2DModel

    from dit_cache import adapters

    monkeypatch.delitem(adapters._REGISTRY, "AuraFlowTransformer2DModel")

    torch.manual_seed(0)
    model = AuraFlowTransformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_mmdit_layers=1, num_single_dit_layers=3,
        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16,
        out_channels=4, pos_embed_max_size=64,
    ).eval()  # fmt: skip
    sched = FakeScheduler(4)
    x, text = torch.randn(1, 4, 8, 8), torch.randn(1, 6, 16)

    def trajectory():
        return [model(x * (1 + i), text, t.reshape(1), return_dict=False)[0] for i, t in enumerate(sched.timesteps)]

    baseline = trajectory()
    dit_cache.apply(model, "teacache", threshold=0.0, scheduler=sched)
    engine = model._dit_cache.engine
    assert engine.spec.name == "generic:AuraFlowTransformer2DModel" and len(engine.slots) == 3
    assert all(torch.equal(a, b) for a, b in zip(trajectory(), baseline))
    dit_cache.remove(model)
    dit_cache.apply(model, "schedule", steps=(0, 2), scheduler=sched)
    cached = trajectory()
    assert dit_cache.stats(model).decisions() == ["computed", "reused", "computed", "reused"]
    assert not torch.equal(cached[1], baseline[1]) and torch.equal(cached[2], baseline[2])
    dit_cache.remove(model)


def test_applying_twice_is_an_error_unless_replace():
    model = DummyDiT()
    dit_cache.apply(model, "fora", scheduler=FakeScheduler(4))
    with pytest.raises(RuntimeError, match="already applied"):
        dit_cache.apply(model, "teacache", scheduler=FakeScheduler(4))
    dit_cache.apply(model, "teacache", replace=True, scheduler=FakeScheduler(4))
    assert model._dit_cache.config.policy_name == "teacache"
    dit_cache.remove(model)
    assert not dit_cache.is_applied(model)


def test_remove_and_stats_on_unpatched_model():
    with pytest.raises(ValueError, match="nothing to remove"):
        dit_cache.remove(DummyDiT())
    with pytest.raises(ValueError, match="apply one first"):
        dit_cache.stats(DummyDiT())


def test_bare_transformer_without_scheduler_says_how_to_locate_steps():
    model = DummyDiT()
    dit_cache.apply(model, "teacache")
    with pytest.raises(RuntimeError, match="pass scheduler=pipe.scheduler"):
        model(hidden_states=torch.ones(1, 2, 2), timestep=torch.tensor([999.0]), temb=torch.tensor(1.0))
    dit_cache.remove(model)


def test_magcache_without_profile_says_how_to_calibrate():
    with pytest.raises(dit_cache.ProfileError, match="dit-cache calibrate"):
        dit_cache.apply(DummyDiT(), "magcache", scheduler=FakeScheduler(4))


@pytest.mark.parametrize(
    "config",
    [
        dit_cache.TeaCache(threshold=0.3, max_skip=2),
        dit_cache.MagCache(threshold=0.1, max_skip=3, retention=0.2, profile="wan2.1-t2v-1.3b"),
        dit_cache.FBCache(threshold=0.1, front_blocks=2, back_blocks=1),
        dit_cache.FORA(interval=3),
        dit_cache.Schedule(steps=(0, 1, 4), num_steps=10),
    ],
)
def test_config_json_round_trip(config):
    text = config.to_json()
    assert PolicyConfig.from_json(text) == config
    assert '"version": 1' in text


def test_config_of_another_version_is_refused():
    data = dit_cache.FORA().to_dict()
    data["version"] = 99
    with pytest.raises(ValueError, match="version 99 is not supported"):
        PolicyConfig.from_dict(data)


def test_config_object_with_option_overrides():
    model = DummyDiT()
    dit_cache.apply(model, dit_cache.FORA(interval=3), interval=4, scheduler=FakeScheduler(4))
    assert model._dit_cache.config == dit_cache.FORA(interval=4)
    dit_cache.remove(model)
