"""The new policies through the real pipelines of all eight families (tiny random configs): "never reuse" settings
are bitwise equal to the unpatched pipeline with CFG on and off, remove() restores it, and aggressive settings cut
the compute, repeat exactly and change the output by a bounded amount."""

import pytest
import torch

import dit_cache
from dit_cache.testing import FAMILIES, run, tiny_pipeline

pytestmark = pytest.mark.pipeline
STEPS = 4
SEQUENTIAL_CFG = ("flux", "wan", "hunyuan_video", "qwenimage")
# the smallest configs that keep every block kind (Flux/HunyuanVideo: one double and one single block)
SMALL = {"flux": dict(layers=1, single_layers=1), "hunyuan_video": dict(layers=1, single_layers=1)}

NEVER = {
    "toca": dit_cache.ToCa(fraction=1.0),
    "cfg+teacache": dit_cache.CFGCache(interval=1, step=dit_cache.TeaCache(threshold=0.0, forecast=1)),
    "bwcache": dit_cache.BWCache(threshold=0.0),
    "taylorseer": dit_cache.TaylorSeer(interval=1, order=2),
    "mix": dit_cache.MixCache(reuse_threshold=0.0, token_threshold=0.0),
}

# (config, compute fraction it must stay under, whether to check that a second call repeats the first)
AGGRESSIVE = {
    "cfg+toca": (dit_cache.CFGCache(interval=2, warmup=0.0, step=dit_cache.ToCa(fraction=0.25, interval=3)), 0.7, True),
    "bwcache": (dit_cache.BWCache(threshold=10.0, max_skip=2), 0.7, False),
    "taylorseer": (dit_cache.TaylorSeer(interval=2, warmup=1, order=1), 0.6, False),
    "mix": (dit_cache.MixCache(reuse_threshold=0.2, token_threshold=2.0), 0.9, True),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_pipe(request):
    return request.param, tiny_pipeline(request.param, **SMALL.get(request.param, {}))


def test_never_reuse_is_bitwise_uncached(family_pipe):
    family, pipe = family_pipe
    baseline = run(pipe, family, cfg=True, steps=STEPS)
    calls = STEPS * (2 if family in SEQUENTIAL_CFG else 1)
    for name, config in NEVER.items():
        with dit_cache.cached(pipe, config):
            out = run(pipe, family, cfg=True, steps=STEPS)
            stats = dit_cache.stats(pipe)
        assert torch.equal(out, baseline), f"{family} {name}: never-reuse output differs from uncached"
        assert stats.compute_fraction == 1.0 and stats.calls == calls, f"{family} {name}: {stats!r}"


def test_guidance_off_cfg_reuse_has_nothing_to_do(family_pipe):
    family, pipe = family_pipe
    baseline = run(pipe, family, cfg=False, steps=STEPS)
    with dit_cache.cached(pipe, dit_cache.CFGCache(interval=2, warmup=0.0)):
        out = run(pipe, family, cfg=False, steps=STEPS)
        stats = dit_cache.stats(pipe)
    assert torch.equal(out, baseline), f"{family}: guidance off must change nothing"
    assert stats.compute_fraction == 1.0 and stats.calls == STEPS


def test_aggressive_settings_cut_compute_with_bounded_change(family_pipe):
    family, pipe = family_pipe
    baseline = run(pipe, family, cfg=True, steps=STEPS)
    for name, (config, most, repeat) in AGGRESSIVE.items():
        with dit_cache.cached(pipe, config):
            first = run(pipe, family, cfg=True, steps=STEPS)
            stats = dit_cache.stats(pipe)
            if repeat:
                second = run(pipe, family, cfg=True, steps=STEPS)
                assert torch.equal(first, second), f"{family} {name}: a second call must repeat the first (reset)"
        assert stats.compute_fraction < most, f"{family} {name}: {stats!r}"
        change = float((first - baseline).abs().mean() / baseline.abs().mean())
        assert 0 < change < 0.5, f"{family} {name}: relative change {change}"
