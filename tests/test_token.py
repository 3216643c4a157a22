"""ToCa-style token caching on exact-arithmetic dummy models: which tokens are picked, where their rows land, what
the partial steps count, and bad input."""

import pytest
import torch
from dummy import DummyDiT, FakeScheduler, TokenDiT, drive

import dit_cache
from dit_cache import kernels
from dit_cache.policies import token as token_module

ONES = torch.ones(1, 8, 2)


def _spy_scatter(monkeypatch) -> list[torch.Tensor]:
    picked = []
    original = kernels.token_scatter_gate

    def spy(x, cache, index, rows, gate=None):
        picked.append(index.clone())
        return original(x, cache, index, rows, gate)

    monkeypatch.setattr(token_module.kernels, "token_scatter_gate", spy)
    return picked


def test_partial_step_scatters_exactly_the_most_changed_tokens(monkeypatch):
    model, sched = TokenDiT(num_blocks=1), FakeScheduler(2)
    picked = _spy_scatter(monkeypatch)
    dit_cache.apply(
        model, "toca", fraction=0.25, interval=4, spread=1, age_weight=0.0, depth_weight=0.0, scheduler=sched
    )
    h1 = ONES.clone()
    h1[:, [3, 6]] = 5.0  # tokens 3 and 6 changed since step 0
    out = drive(model, sched, [1.0, 1.0], hidden=[ONES, h1])
    stats = dit_cache.stats(model)
    assert stats.decisions() == ["computed", "partial"]
    assert sorted(picked[0].tolist()) == [3, 6]
    # rows 3, 6: h1 + temb * attn_cached(h0) + ff(h1) = 5 + 1 + 10; others: 1 + 1 + ff_cached(h0) = 4
    expected = torch.full_like(ONES, 4.0)
    expected[:, [3, 6]] = 16.0
    assert torch.equal(out[1], expected)
    # self-attention reused (0 of 1 unit), the MLP on 2 of 8 tokens (0.25 of 1 unit)
    assert stats.records[1].computed_units == 0.25 and stats.records[1].total_units == 2


def test_self_attention_computed_in_full_when_asked(monkeypatch):
    model, sched = TokenDiT(num_blocks=1), FakeScheduler(2)
    dit_cache.apply(model, "toca", fraction=0.25, interval=4, spread=1, self_attention="compute", scheduler=sched)
    h1 = ONES.clone()
    h1[:, [3, 6]] = 5.0
    out = drive(model, sched, [1.0, 1.0], hidden=[ONES, h1])
    expected = torch.full_like(ONES, 4.0)
    expected[:, [3, 6]] = 20.0  # 5 + attn(5) + 10
    assert torch.equal(out[1], expected)
    assert dit_cache.stats(model).records[1].computed_units == 1.25


def test_tokens_not_refreshed_longest_come_next():
    model, sched = TokenDiT(num_blocks=1), FakeScheduler(3)
    picked = []
    dit_cache.apply(model, "toca", fraction=0.25, interval=8, spread=1, age_weight=1.0, scheduler=sched)
    policy = model._dit_cache.engine.policy
    original = policy.mechanism._pick
    policy.mechanism._pick = lambda place, x, count: picked.append(original(place, x, count)) or picked[-1]
    h1 = ONES.clone()
    h1[:, [3, 6]] = 5.0
    drive(model, sched, [1.0] * 3, hidden=[ONES, h1, h1])
    assert sorted(picked[0].tolist()) == [3, 6]
    assert not set(picked[1].tolist()) & {3, 6}  # no input changed: the oldest tokens win


def test_spread_takes_the_best_token_of_each_grid_cell():
    """16 tokens = a 4 x 4 grid, cells of 2 x 2. The 4 most changed tokens all sit in the top-left cell; with spread
    the picks are each cell's best token instead."""
    torch.manual_seed(0)
    x = torch.zeros(1, 16, 2)
    reference = x.clone()
    change = torch.arange(16, dtype=torch.float32) * 0.01  # small, distinct
    change[[0, 1, 4, 5]] = torch.tensor([100.0, 90.0, 80.0, 70.0])
    x = x + change[None, :, None]
    cells, count = token_module.cell_ids(16, (4, 4), 2, torch.device("cpu"))
    assert count == 4
    place = token_module.TokenPlace(
        output=torch.zeros(1, 16, 2), reference=reference, age=torch.zeros(16), cells=cells, cell_count=count
    )
    model = dit_cache.apply(DummyDiT(1), "toca", scheduler=FakeScheduler(2))
    mechanism = model._dit_cache.engine.policy.mechanism
    mechanism.spread = 1
    assert sorted(mechanism._pick(place, x, 4).tolist()) == [0, 1, 4, 5]
    mechanism.spread = 2
    # cells: {0,1,4,5} best 0; {2,3,6,7} best 7; {8,9,12,13} best 13; {10,11,14,15} best 15
    assert sorted(mechanism._pick(place, x, 4).tolist()) == [0, 7, 13, 15]


def test_share_by_depth_step_and_module_type():
    model = dit_cache.apply(DummyDiT(3), "toca", scheduler=FakeScheduler(2), depth_weight=0.5, step_weight=1.0)
    mechanism = model._dit_cache.engine.policy.mechanism
    assert mechanism.share(0.5, (0, "ff"), 0, 5) == 0.5 * 0.75 * 1.5  # shallow block, first step
    assert mechanism.share(0.5, (1, "ff"), 2, 5) == 0.5  # middle of both
    assert mechanism.share(0.5, (2, "ff"), 4, 5) == 0.5 * 1.25 * 0.5  # deep block, last step
    mechanism.kind[(2, "ff")] = "cross"
    assert mechanism.share(0.5, (2, "ff"), 4, 5) == 0.5 * 1.25 * 0.5 * 0.5  # cross-attention at half the share


@pytest.mark.parametrize("options", [dict(fraction=1.0, interval=3), dict(fraction=0.2, interval=1)])
def test_never_reuse_is_bitwise_uncached(options):
    model, sched = TokenDiT(num_blocks=3), FakeScheduler(6)
    h = [torch.randn(1, 8, 2) for _ in range(6)]
    baseline = drive(model, sched, [0.5] * 6, hidden=h)
    dit_cache.apply(model, "toca", scheduler=sched, **options)
    out = drive(model, sched, [0.5] * 6, hidden=h)
    assert all(torch.equal(a, b) for a, b in zip(out, baseline))
    assert dit_cache.stats(model).compute_fraction == 1.0


def test_speedup_picks_the_fraction():
    model, sched = TokenDiT(num_blocks=2), FakeScheduler(8)
    dit_cache.apply(model, "toca", speedup=1.5, interval=2, scheduler=sched)
    drive(model, sched, [0.5] * 8, hidden=[torch.randn(1, 64, 2) for _ in range(8)])
    assert dit_cache.stats(model).compute_fraction == pytest.approx(1 / 1.5, abs=0.03)
    with pytest.raises(ValueError, match="out of reach with interval=2"):
        dit_cache.apply(model, "toca", speedup=3.0, interval=2, scheduler=sched, replace=True)
        drive(model, sched, [0.5] * 8)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(fraction=0.0), "toca: fraction must be a share of tokens in (0, 1]"),
        (dict(fraction=1.5), "toca: fraction must be a share of tokens in (0, 1]"),
        (dict(interval=0), "toca: interval must be an integer >= 1, got 0"),
        (dict(self_attention="sometimes"), "toca: self_attention must be 'reuse' or 'compute'"),
        (dict(fraction=0.2, speedup=2.0), "toca: give fraction or speedup, not both"),
        (dict(spread=0), "toca: spread must be an integer >= 1"),
    ],
)
def test_bad_options(options, message):
    with pytest.raises(ValueError) as err:
        dit_cache.ToCa(**options)
    assert message in str(err.value)
