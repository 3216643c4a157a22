"""Transformers whose pipeline cannot run here (`dit_cache.testing.LOOP_FAMILIES`: FLUX.3 has no pipeline in diffusers
0.42.1, OmniGen's processor needs torchvision), through a hand-written flow-matching Euler loop that calls them as
their pipeline would: the same checks as test_families.py. Never-reuse settings are bitwise the unpatched loop and
see every step, remove() restores it, and a step policy, a block policy, ToCa and (OmniGen's batched CFG) CFG reuse
cut the compute and stay finite."""

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

import dit_cache
from dit_cache.adapters import find_spec
from dit_cache.testing import LOOP_FAMILIES, loop_run

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


@pytest.fixture(scope="module", params=list(LOOP_FAMILIES))
def family(request):
    """(name, transformer, scheduler, its uncached output)."""
    name = request.param
    torch.manual_seed(0)
    transformer = LOOP_FAMILIES[name].make_transformer()
    scheduler = FlowMatchEulerDiscreteScheduler()
    return name, transformer, scheduler, loop_run(transformer, name, scheduler, STEPS)


def test_family_has_a_registered_adapter(family):
    name, transformer, _, _ = family
    assert find_spec(transformer).name == name


def test_never_reuse_is_bitwise_uncached_and_remove_restores(family):
    name, transformer, scheduler, baseline = family
    for policy, config in NEVER.items():
        with dit_cache.cached(transformer, config, scheduler=scheduler):
            out = loop_run(transformer, name, scheduler, STEPS)
            stats = dit_cache.stats(transformer)
        assert torch.equal(out, baseline), f"{name} {policy}: never-reuse output differs from uncached"
        assert stats.compute_fraction == 1.0 and stats.calls == STEPS, f"{name} {policy}: {stats!r}"
        assert sorted(stats.computed_steps()) == list(range(STEPS)), f"{name} {policy}"
    assert torch.equal(loop_run(transformer, name, scheduler, STEPS), baseline), f"{name}: remove()"


@pytest.mark.parametrize("policy", list(REUSE))
def test_reuse_cuts_compute_and_stays_finite(family, policy):
    name, transformer, scheduler, baseline = family
    if policy == "cfg" and not LOOP_FAMILIES[name].cfg:
        pytest.skip(f"{name}: its loop runs no classifier-free guidance")
    with dit_cache.cached(transformer, REUSE[policy], scheduler=scheduler):
        out = loop_run(transformer, name, scheduler, STEPS)
        stats = dit_cache.stats(transformer)
    assert stats.compute_fraction < 0.9, f"{name} {policy}: {stats!r}"
    assert out.shape == baseline.shape and torch.isfinite(out).all(), f"{name} {policy}"
    assert not torch.equal(out, baseline), f"{name} {policy}: reuse changed nothing"
    if policy == "cfg":  # the unconditional half is rebuilt on the reuse steps, from the batch layout
        assert {r.branch for r in stats.records} >= {"cond", "uncond"}
    assert torch.equal(loop_run(transformer, name, scheduler, STEPS), baseline), f"{name} {policy}: remove()"
