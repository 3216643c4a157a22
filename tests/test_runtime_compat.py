"""The ways people run diffusers pipelines, through real tiny pipelines: inference mode, no_grad and grad enabled,
CPU offloading in either order with apply, pipelines that share a patched transformer, replaced components, and
diffusers' own caches next to dit_cache."""

import pytest
import torch

import dit_cache
from dit_cache.calibration import Profile, model_fingerprint
from dit_cache.testing import run, tiny_inputs, tiny_pipeline

pytestmark = pytest.mark.pipeline
STEPS = 6


def _profile(transformer) -> Profile:
    """MagCache ratios for both CFG branches and LeMiCa edge weights, for a tiny Wan at STEPS steps."""
    profile = Profile(fingerprint=model_fingerprint(transformer))
    for branch in ("cond", "uncond"):
        profile.branches[branch] = {"mag_ratio": [1.0] + [1.02] * (STEPS - 1)}
    profile.policies["lemica"] = {"num_steps": STEPS}
    profile.arrays["lemica/edges"] = torch.rand(STEPS, STEPS, generator=torch.Generator().manual_seed(0))
    return profile


def _every_policy(transformer) -> dict:
    """Options that make each registered policy cache on a tiny Wan (its compute fraction < 1)."""
    profile = _profile(transformer)
    return {
        "teacache": dict(threshold=1.0),
        "magcache": dict(threshold=1.0, retention=0.1, profile=profile),
        "fbcache": dict(threshold=10.0),
        "fora": dict(interval=2),
        "schedule": dict(steps=(0, 3)),
        "lemica": dict(budget=3, profile=profile),
        "toca": {},
        "cfg": dict(interval=2),
        "bwcache": dict(threshold=10.0),
        "taylorseer": dict(interval=2),
        "mix": dict(reuse_threshold=0.5, token_threshold=1.0),
    }


@pytest.fixture(scope="module")
def wan():
    return tiny_pipeline("wan")


def test_every_policy_is_covered(wan):
    assert sorted(_every_policy(wan.transformer)) == sorted(set(dit_cache.policy_names()) - {"recorder"})


def _with_grad(pipe) -> torch.Tensor:
    """The pipeline call without the `torch.no_grad()` its `__call__` is decorated with: autograd records."""
    out = type(pipe).__call__.__wrapped__(pipe, **tiny_inputs("wan", steps=STEPS))
    assert torch.is_grad_enabled()
    return out.frames


@pytest.mark.parametrize("policy", sorted(set(dit_cache.policy_names()) - {"recorder"}))
def test_every_policy_runs_under_inference_mode_no_grad_and_grad(wan, policy):
    options = _every_policy(wan.transformer)[policy]
    with dit_cache.cached(wan, policy, **options):
        with torch.inference_mode():
            inference = run(wan, "wan", steps=STEPS)
        fraction = dit_cache.stats(wan).compute_fraction
        no_grad = run(wan, "wan", steps=STEPS)
        assert dit_cache.stats(wan).compute_fraction == fraction
        with_grad = _with_grad(wan)
        assert dit_cache.stats(wan).compute_fraction == fraction
    assert fraction < 1
    assert inference.is_inference() and not no_grad.requires_grad and with_grad.requires_grad
    assert torch.equal(inference, no_grad) and torch.equal(with_grad.detach(), no_grad)
