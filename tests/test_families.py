"""Every family of `dit_cache.testing.MORE_FAMILIES` through its real diffusers pipeline (tiny random transformer,
2 layers, a few steps): never-reuse settings are bitwise equal to the unpatched pipeline and see every step of every
CFG branch, remove() restores it exactly, and a step policy, a block policy, ToCa and (where the pipeline runs
CFG) CFG reuse cut the compute and stay finite. A new family is one `MORE_FAMILIES` entry plus its adapter.
(The eight families of `FAMILIES` get the same checks and more in test_pipelines.py / test_new_pipelines.py.)"""

import pytest
import torch

import dit_cache
from dit_cache.adapters import find_spec
from dit_cache.testing import MORE_FAMILIES, run, tiny_inputs, tiny_pipeline

pytestmark = pytest.mark.pipeline
STEPS = 4

NEVER = {
    "teacache": dit_cache.TeaCache(threshold=0.0),
    "fora": dit_cache.FORA(interval=1),
    "taylorseer": dit_cache.TaylorSeer(interval=1),
}
REUSE = {
    "teacache": dit_cache.TeaCache(threshold=10.0),
    "fora": dit_cache.FORA(interval=3),
    "toca": dit_cache.ToCa(fraction=0.25, interval=3),
    "cfg": dit_cache.CFGCache(interval=2, warmup=0.0),
}


@pytest.fixture(scope="module", params=list(MORE_FAMILIES))
def family(request):
    """(name, pipeline, whether it runs CFG, its uncached output)."""
    name = request.param
    pipe = tiny_pipeline(name)
    cfg = MORE_FAMILIES[name].cfg
    return name, pipe, cfg, run(pipe, name, cfg=cfg, steps=STEPS)


def test_family_has_a_registered_adapter(family):
    name, pipe, _, _ = family
    assert not find_spec(pipe.transformer).name.startswith("generic"), f"{name}: no registered adapter"


def test_never_reuse_is_bitwise_uncached_and_remove_restores(family):
    name, pipe, cfg, baseline = family
    for policy, config in NEVER.items():
        with dit_cache.cached(pipe, config):
            out = run(pipe, name, cfg=cfg, steps=STEPS)
            stats = dit_cache.stats(pipe)
        assert torch.equal(out, baseline), f"{name} {policy}: never-reuse output differs from uncached"
        assert stats.compute_fraction == 1.0, f"{name} {policy}: {stats!r}"
        branches = {r.branch for r in stats.records}
        for branch in branches:  # every step found once per branch, from the timestep, not by counting calls
            assert sorted(stats.computed_steps(branch=branch)) == list(range(STEPS)), f"{name} {policy} {branch}"
        if cfg and len(branches) == 1:
            assert stats.calls == STEPS  # batched CFG: one call per step
    assert torch.equal(run(pipe, name, cfg=cfg, steps=STEPS), baseline), f"{name}: remove()"


@pytest.mark.parametrize("policy", list(REUSE))
def test_reuse_cuts_compute_and_stays_finite(family, policy, request):
    name, pipe, cfg, baseline = family
    if policy == "cfg" and not cfg:
        pytest.skip(f"{name}: the pipeline runs no classifier-free guidance")
    gap = MORE_FAMILIES[name].known_gaps.get(policy)
    if gap:  # strict: once the gap is closed this fails, and the entry loses its note
        request.applymarker(pytest.mark.xfail(reason=f"{name}: {gap}", strict=True))
    with dit_cache.cached(pipe, REUSE[policy]):
        out = run(pipe, name, cfg=cfg, steps=STEPS)
        stats = dit_cache.stats(pipe)
    assert stats.compute_fraction < 0.9, f"{name} {policy}: {stats!r}"
    assert out.shape == baseline.shape and torch.isfinite(out).all(), f"{name} {policy}"
    assert not torch.equal(out, baseline), f"{name} {policy}: reuse changed nothing"
    if policy == "fora":  # remove() after a policy that kept per-block state (the others: test_pipelines.py)
        assert torch.equal(run(pipe, name, cfg=cfg, steps=STEPS), baseline), f"{name} {policy}: remove()"


def test_unsupported_transformer_names_the_nearest_classes_and_how_to_register():
    class FluxTransformer3DModel(torch.nn.Module):  # no adapter and no block list
        pass

    with pytest.raises(TypeError) as err:
        dit_cache.apply(FluxTransformer3DModel(), "teacache")
    text = str(err.value)
    assert "Nearest supported classes: FluxTransformer2DModel" in text
    assert "register_adapter" in text and "docs/adapters.md" in text


def test_refused_transformer_is_refused_with_its_reason():
    from diffusers import Lumina2Transformer2DModel

    model = Lumina2Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, hidden_size=32, num_layers=1, num_refiner_layers=1,
        num_attention_heads=2, num_kv_heads=2, multiple_of=16, axes_dim_rope=(4, 4, 8), axes_lens=(32, 32, 32),
        cap_feat_dim=32,
    )  # fmt: skip
    with pytest.raises(TypeError, match=r"Lumina2Transformer2DModel: Lumina2Pipeline passes the timestep as 1 - t"):
        dit_cache.apply(model, "teacache")
    assert not hasattr(model, "_dit_cache")


def test_registered_and_refused_classes_are_diffusers_classes():
    """Adapters and refusals are looked up by class name: a typo would silently never match."""
    import diffusers

    from dit_cache import adapters
    from dit_cache.adapters import catalog

    # the built-in adapters only: tests register adapters of their own dummy models in the same registry
    builtin = [m.SPEC for m in (adapters.flux, adapters.wan, adapters.hunyuan_video, adapters.cogvideox, adapters.ltx,
                                adapters.sd3, adapters.pixart, adapters.qwenimage)] + list(catalog.SPECS)  # fmt: skip
    shipped = {name for spec in builtin for name in spec.class_names}
    names = shipped | set(catalog.REFUSED)
    assert not set(catalog.REFUSED) & shipped
    missing = [name for name in sorted(names) if not hasattr(diffusers, name)]
    assert not missing, f"not diffusers classes: {missing}"


def test_sequential_cfg_without_cache_context_keeps_the_branches_apart():
    """Chroma runs its unconditional branch as a second call of each step and names neither: the second call of a
    step gets its own state (never the other branch's features), so caching works and matches a run whose calls
    are named by cache_context."""
    pipe = tiny_pipeline("chroma")
    transformer = pipe.transformer
    original = type(transformer)
    names = []

    class Named(original):  # the same model, its calls named the way Wan's pipeline names them
        def __call__(self, *args, **kwargs):
            names.append("uncond" if kwargs["encoder_hidden_states"] is self.negative else "cond")
            with self.cache_context(names[-1]):
                return super().__call__(*args, **kwargs)

    def guided():
        kw = {**tiny_inputs("chroma", cfg=True, steps=6), "guidance_scale": 4.0}
        transformer.negative = kw["negative_prompt_embeds"]
        return pipe(**kw).images

    with dit_cache.cached(pipe, "fora", interval=2):
        plain = guided()
        stats = dit_cache.stats(pipe)
        transformer.__class__ = Named
        try:
            named = guided()
        finally:
            transformer.__class__ = original
    assert names == ["cond", "uncond"] * 6
    assert {r.branch for r in stats.records} == {"batch", "batch:2"}
    assert stats.compute_fraction == 0.5
    assert torch.isfinite(plain).all()
    assert torch.equal(plain, named)
