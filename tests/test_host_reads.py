"""The hot path reads the device at most once per transformer call for its decisions (on a GPU each read is a sync):
counted on dummy models whose own forward reads nothing."""

import pytest
import torch
from dummy import CondDiT, FakeScheduler, TokenDiT

import dit_cache

READS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__")


@pytest.fixture
def reads(monkeypatch):
    count = {"n": 0}
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            count["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    # the scatter's index bounds check reads CPU indices only (free there, skipped on CUDA): not a device read
    monkeypatch.setattr("dit_cache.kernels._checks.check_index_values", lambda index, n_tokens: None)
    return count


@pytest.mark.parametrize(
    "config",
    [
        dit_cache.ToCa(fraction=0.25, interval=3),
        dit_cache.BWCache(threshold=0.5),
        dit_cache.TaylorSeer(interval=3, order=2, warmup=1),
        dit_cache.MixCache(reuse_threshold=0.3, token_threshold=0.6, modes=("step", "token")),
        dit_cache.TeaCache(threshold=0.5, forecast=2),
    ],
    ids=lambda c: c.policy_name,
)
def test_one_read_per_call(reads, config):
    model, sched = TokenDiT(num_blocks=3), FakeScheduler(8)
    dit_cache.apply(model, config, scheduler=sched)
    steps = list(sched.timesteps)
    base = torch.randn(1, 16, 4)
    hidden = [base * (1 + 0.01 * i) for i in range(len(steps))]  # slow drift: every policy reuses something
    temb = [torch.tensor(1.25**i) for i in range(len(steps))]
    for _ in range(2):  # the first trajectory also copies the scheduler's tables to the host, once
        reads["n"] = 0
        for t, h, e in zip(steps, hidden, temb):
            model(hidden_states=h, timestep=t.reshape(1), temb=e)
    assert reads["n"] == len(steps)
    assert dit_cache.stats(model).compute_fraction < 1.0


def test_batched_cfg_reads_the_step_once(reads):
    """CFG reuse locates the step (with the halves check) before the call: one read; an inner policy whose rule
    needs no device value adds none."""
    model, sched = CondDiT(num_blocks=2), FakeScheduler(6)
    dit_cache.apply(model, dit_cache.CFGCache(interval=2, warmup=0.0, step=dit_cache.FORA(interval=2)), scheduler=sched)
    e = torch.tensor([-0.25, 0.5]).reshape(2, 1, 1)
    calls = [(torch.full((2, 4, 2), 1.0 + i), t.expand(2)) for i, t in enumerate(sched.timesteps)]
    for _ in range(2):
        reads["n"] = 0
        for h, t in calls:
            model(hidden_states=h, timestep=t, temb=torch.tensor(1.0), encoder_hidden_states=e)
    assert reads["n"] == len(calls)
    assert dit_cache.stats(model).count("reused") == 3  # the unconditional halves of steps 1, 3, 5


def test_two_unnamed_calls_per_step_read_once_each(reads):
    """A pipeline that runs CFG as two calls per step without a cache_context (Chroma): the second call of a step
    is probed against its own branch before the step is read, so it too costs one read."""
    model, sched = TokenDiT(num_blocks=3), FakeScheduler(8)
    dit_cache.apply(model, dit_cache.TeaCache(threshold=0.5), scheduler=sched)
    base = torch.randn(1, 16, 4)
    for _ in range(2):
        reads["n"] = 0
        for i, t in enumerate(sched.timesteps):
            for branch_shift in (0.0, 0.5):  # conditional, then unconditional, both unnamed
                model(
                    hidden_states=base * (1 + 0.01 * i) + branch_shift,
                    timestep=t.reshape(1),
                    temb=torch.tensor(1.25**i),
                )
    assert reads["n"] == 2 * len(sched.timesteps)  # the second trajectory (the first also copies the tables)
    stats = dit_cache.stats(model)
    assert {r.branch for r in stats.records} == {"batch", "batch:2"} and stats.compute_fraction < 1.0
