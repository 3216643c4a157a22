"""bf16 transformers through their real pipelines: never-reuse settings stay bitwise equal to the unpatched bf16
pipeline, reusing settings cut the compute, stay finite and return bf16, and remove() restores the bf16 output."""

import pytest
import torch

import dit_cache
from dit_cache.testing import tiny_inputs, tiny_pipeline

pytestmark = pytest.mark.pipeline
STEPS = 6
NEVER = [("teacache", dict(threshold=0.0)), ("fora", dict(interval=1)), ("taylorseer", dict(interval=1))]
REUSING = [
    ("teacache", dict(threshold=10.0)),
    ("fora", dict(interval=3)),
    ("taylorseer", dict(interval=3)),
    ("toca", dict(fraction=0.5)),
    ("cfg", dict(interval=2)),
]


def _bf16_run(pipe, family):
    kw = tiny_inputs(family, steps=STEPS)
    kw = {k: v.to(torch.bfloat16) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in kw.items()}
    out = pipe(**kw)
    return torch.as_tensor(out.frames if hasattr(out, "frames") else out.images)


@pytest.fixture(scope="module", params=["wan", "flux"])
def bf16_pipe(request):
    pipe = tiny_pipeline(request.param)
    pipe.transformer.to(torch.bfloat16)
    return request.param, pipe, _bf16_run(pipe, request.param)


@pytest.mark.parametrize("policy,options", NEVER, ids=[p for p, _ in NEVER])
def test_bf16_never_reuse_is_bitwise_uncached(bf16_pipe, policy, options):
    family, pipe, baseline = bf16_pipe
    with dit_cache.cached(pipe, policy, **options):
        out = _bf16_run(pipe, family)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, baseline)


@pytest.mark.parametrize("policy,options", REUSING, ids=[p for p, _ in REUSING])
def test_bf16_reuse_cuts_compute_and_stays_finite(bf16_pipe, policy, options):
    family, pipe, baseline = bf16_pipe
    with dit_cache.cached(pipe, policy, **options):
        out = _bf16_run(pipe, family)
        fraction = dit_cache.stats(pipe).compute_fraction
    assert fraction < 0.9
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert not torch.equal(out, baseline)  # something was reused
    assert torch.equal(_bf16_run(pipe, family), baseline)  # and removing it restores bf16 exactly
