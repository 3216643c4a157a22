"""Batches (batch 2, num_images_per_prompt=2, the two halves of a batched CFG call) take one decision per call,
on the sample that changed most: each policy's indicator is reduced per sample (sums per batch row, all-reducible
over a sequence-parallel group) and then by max over the samples, never by a batch mean that a calm sample would
dilute. Through a real Flux pipeline with TeaCache, whose indicator (the first block's modulated input) differs
between samples."""

import pytest
import torch

import dit_cache
from dit_cache.testing import tiny_inputs, tiny_pipeline

pytestmark = pytest.mark.pipeline
STEPS = 6
SEEDS = (10, 11)


@pytest.fixture(scope="module")
def flux():
    return tiny_pipeline("flux")


def _call(pipe, rows: list[int], *, images_per_prompt: int = 1) -> torch.Tensor:
    """The pipeline on the samples `rows` of one batch-2 input: their prompt embeddings and their latents, each
    drawn from its own seeded generator, so a sample is the same alone and in a batch."""
    inputs = tiny_inputs("flux", batch=2, cfg=False, steps=STEPS)
    for name, value in inputs.items():
        if isinstance(value, torch.Tensor) and value.shape[0] == 2:
            inputs[name] = value[rows]
    seeds = [SEEDS[r] for r in rows for _ in range(images_per_prompt)]
    inputs["generator"] = [torch.Generator().manual_seed(s) for s in seeds]
    inputs["num_images_per_prompt"] = images_per_prompt
    return pipe(**inputs).images


def _indicators(pipe) -> list[float]:
    return [r.indicator for r in dit_cache.stats(pipe).records]


def test_batch_indicator_is_the_largest_sample_change_not_a_mean(flux):
    with dit_cache.cached(flux, "teacache", threshold=0.0):  # never reuses: every step measures its change
        alone = []
        for row in (0, 1):
            _call(flux, [row])
            alone.append(_indicators(flux))
        batch_out = _call(flux, [0, 1])
        batch = _indicators(flux)
    assert batch[0] is None and all(a[0] is None for a in alone)
    largest = [max(a, b) for a, b in zip(alone[0][1:], alone[1][1:])]
    mean = [(a + b) / 2 for a, b in zip(alone[0][1:], alone[1][1:])]
    torch.testing.assert_close(batch[1:], largest, rtol=1e-4, atol=0)
    assert all(abs(m - b) > 1e-3 * b for m, b in zip(mean, batch[1:]))  # the samples differ: a mean would show
    assert batch_out.shape[0] == 2


def test_a_batch_computes_where_one_of_its_samples_needs_it(flux):
    """Threshold between the two samples' change at step 1: the calm sample alone reuses step 1, the other alone
    computes it, and the batch of both computes it (a mean of the two would stay under the threshold)."""
    with dit_cache.cached(flux, "teacache", threshold=0.0):
        changes = []
        for row in (0, 1):
            _call(flux, [row])
            changes.append(_indicators(flux)[1])
    calm, busy = sorted(changes)
    assert busy > 1.01 * calm, "the two samples must differ for this test to mean anything"
    threshold = 0.9 * busy + 0.1 * calm  # above the mean of the two, below the larger
    with dit_cache.cached(flux, "teacache", threshold=threshold):
        decisions = {}
        for rows in ([0], [1], [0, 1]):
            _call(flux, rows)
            decisions[tuple(rows)] = dit_cache.stats(flux).decisions()
    calm_row = changes.index(calm)
    assert decisions[(calm_row,)][1] == "reused"
    assert decisions[(1 - calm_row,)][1] == "computed"
    assert decisions[(0, 1)][1] == "computed"


@pytest.mark.parametrize("policy", ["teacache", "fbcache"])
def test_identical_samples_take_exactly_the_single_run_decisions(flux, policy):
    """num_images_per_prompt=2 with the same latent seed: two identical samples decide as one sample alone, and
    each output row equals the single run."""
    with dit_cache.cached(flux, policy, threshold=0.3):
        single = _call(flux, [0])
        single_stats = dit_cache.stats(flux)
        double = _call(flux, [0], images_per_prompt=2)
        double_stats = dit_cache.stats(flux)
    assert 0 < single_stats.compute_fraction < 1
    assert double_stats.decisions() == single_stats.decisions()
    torch.testing.assert_close(_indicators_of(double_stats), _indicators_of(single_stats), rtol=1e-5, atol=0)
    torch.testing.assert_close(double, torch.cat([single, single]), rtol=1e-4, atol=1e-5)


def _indicators_of(stats) -> list[float]:
    return [r.indicator if r.indicator is not None else -1.0 for r in stats.records]
