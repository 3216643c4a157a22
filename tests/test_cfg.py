"""CFG reuse on a constant-difference dummy (the unconditional output is the conditional one plus e_u - e_c): the
rebuilt unconditional output equals the uncached one exactly, for sequential and batched CFG; the frequency split;
guidance off; combination with an inner policy; bad input."""

import logging

import pytest
import torch
from dummy import CondDiT, FakeScheduler, in_context

import dit_cache
from dit_cache.config import PolicyConfig
from dit_cache.policies.cfg import interval_for_speedup

E_COND, E_UNCOND = 0.5, -0.25
STEPS = 4


def _hidden(step: int) -> torch.Tensor:
    return torch.full((1, 4, 2), float(step + 1))


def _sequential(model, sched, e_cond=E_COND, e_uncond=E_UNCOND, uncond=True):
    """A pipeline's sequential CFG: per step, a "cond" call then an "uncond" call. Returns [(cond, uncond)]."""
    outputs = []
    for i, t in enumerate(sched.timesteps):
        args = dict(hidden_states=_hidden(i), timestep=t.reshape(1), temb=torch.tensor(1.0))
        in_context(model, "cond")
        cond = model(**args, encoder_hidden_states=torch.full((1, 1, 1), e_cond))[0]
        un = None
        if uncond:
            in_context(model, "uncond")
            e = e_uncond if torch.is_tensor(e_uncond) else torch.full((1, 1, 1), e_uncond)
            un = model(**args, encoder_hidden_states=e)[0]
        outputs.append((cond, un))
    in_context(model, None)
    return outputs


def _batched(model, sched, halves_equal=True):
    """Batched CFG: one call on [uncond; cond] (diffusers' order), as SD3/PixArt/CogVideoX/LTX do."""
    outputs = []
    for i, t in enumerate(sched.timesteps):
        h = torch.cat([_hidden(i), _hidden(i) * (1 if halves_equal else 2)])
        e = torch.tensor([E_UNCOND, E_COND]).reshape(2, 1, 1)
        outputs.append(model(hidden_states=h, timestep=t.expand(2), temb=torch.tensor(1.0), encoder_hidden_states=e)[0])
    return outputs


def _batch_sizes(model) -> list[int]:
    sizes = []
    model.blocks[0].register_forward_pre_hook(lambda m, args, kwargs: sizes.append(kwargs.get("hidden_states", args[0] if args else None).shape[0]), with_kwargs=True)  # fmt: skip
    return sizes


EXACT = dict(interval=2, warmup=0.0, alpha_low=1.0, alpha_high=1.0)


def test_sequential_rebuild_equals_uncached_unconditional_output():
    model, sched = CondDiT(num_blocks=2), FakeScheduler(STEPS)
    baseline = _sequential(model, sched)
    sizes = _batch_sizes(model)
    dit_cache.apply(model, "cfg", scheduler=sched, **EXACT)
    out = _sequential(model, sched)
    for (c, u), (bc, bu) in zip(out, baseline):
        assert torch.equal(c, bc) and torch.equal(u, bu)
    stats = dit_cache.stats(model)
    assert stats.decisions(branch="uncond") == ["computed", "reused", "computed", "reused"]
    assert stats.decisions(branch="cond") == ["computed"] * 4
    assert len(sizes) == 4 + 2  # block 0 ran in 4 conditional and 2 unconditional calls: rebuilt ones never run
    assert stats.compute_fraction == 0.75


def test_batched_rebuild_runs_the_conditional_half_only():
    model, sched = CondDiT(num_blocks=2), FakeScheduler(STEPS)
    baseline = _batched(model, sched)
    sizes = _batch_sizes(model)
    dit_cache.apply(model, "cfg", scheduler=sched, **EXACT)
    out = _batched(model, sched)
    assert all(torch.equal(a, b) for a, b in zip(out, baseline))
    assert sizes == [2, 1, 2, 1]  # block 0 of each call: full batch, then the conditional half
    stats = dit_cache.stats(model)
    rows = [(r.step, r.branch, r.decision, r.computed_units, r.total_units) for r in stats.records]
    assert rows == [
        (0, "batch", "computed", 4, 4),
        (1, "cond", "computed", 2, 2),
        (1, "uncond", "reused", 0, 2),
        (2, "batch", "computed", 4, 4),
        (3, "cond", "computed", 2, 2),
        (3, "uncond", "reused", 0, 2),
    ]
    assert stats.compute_fraction == 0.75


def test_batch_order_cond_first_is_respected():
    from dataclasses import replace

    from dummy import SPEC

    spec = replace(SPEC, name="cond-first", class_names=("CondFirstDiT",), cfg_batch_order=("cond", "uncond"))
    CondFirst = type("CondFirstDiT", (CondDiT,), {})
    dit_cache.register_adapter(spec, replace=True)
    model, sched = CondFirst(num_blocks=2), FakeScheduler(STEPS)
    baseline = _batched(model, sched)
    sizes = _batch_sizes(model)
    dit_cache.apply(model, "cfg", scheduler=sched, **EXACT)
    out = _batched(model, sched)
    # half 0 is now the conditional one: it runs, and half 1 = half 0 + the stored difference (exact here too)
    assert all(torch.equal(a, b) for a, b in zip(out, baseline))
    assert sizes == [2, 1, 2, 1]


@pytest.mark.parametrize("shape", ["lists", "layers-and-two-outputs"])
def test_batched_rebuild_halves_and_rebuilds_nested_arguments_and_outputs(shape):
    """Z-Image passes its batch as lists of samples; Bria FIBO its text features as a list of batched per-layer
    tensors; LTX-2 returns (video, audio). One walk halves every batched part of the arguments and rebuilds every
    batched output: exact on the constant-difference dummies, with the conditional half run alone."""
    from dummy import LayersDiT, ListDiT

    model, sched = (ListDiT if shape == "lists" else LayersDiT)(num_blocks=2), FakeScheduler(STEPS)
    layers = torch.tensor([E_UNCOND, E_COND]).reshape(2, 1, 1)

    def guided():
        outputs = []
        for i, t in enumerate(sched.timesteps):
            h = torch.cat([_hidden(i), _hidden(i)])
            if shape == "lists":
                args = dict(hidden_states=list(h.unbind(0)), encoder_hidden_states=list(layers.unbind(0)))
            else:
                args = dict(hidden_states=h, encoder_hidden_states=[layers, layers * 3, -layers])
            outputs.append(model(**args, timestep=t.expand(2), temb=torch.tensor(1.0)))
        return outputs

    baseline = guided()
    sizes = _batch_sizes(model)
    dit_cache.apply(model, "cfg", scheduler=sched, **EXACT)
    out = guided()
    assert sizes == [2, 1, 2, 1]
    flat = [torch.stack(o[0]) if shape == "lists" else torch.cat([o[0].flatten(), o[1].flatten()]) for o in out]
    reference = [torch.stack(o[0]) if shape == "lists" else torch.cat([o[0].flatten(), o[1].flatten()])
                 for o in baseline]  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(flat, reference))
    assert type(out[1][0]) is type(baseline[1][0]) and len(out[1]) == len(baseline[1])
    assert dit_cache.stats(model).compute_fraction == 0.75


def test_frequency_split_weights_low_and_high_parts():
    """A spatially constant difference is all low frequency: with alpha_low = 2 the rebuild adds it twice. A
    difference alternating over the token grid is all high frequency: alpha_low leaves it alone."""
    model, sched = CondDiT(num_blocks=1), FakeScheduler(STEPS)
    weights = dict(interval=2, warmup=0.0, alpha_low=2.0, alpha_high=1.0, low_range=(-1.0, 2.0), high_range=(5.0, 6.0))
    dit_cache.apply(model, "cfg", scheduler=sched, **weights)
    out = _sequential(model, sched)
    for c, u in out[1::2]:
        assert torch.allclose(u, c + 2 * (E_UNCOND - E_COND), atol=1e-6)
    dit_cache.remove(model)
    alternating = torch.tensor([1.0, -1.0, 1.0, -1.0]).reshape(1, 4, 1)  # 2 x 2 grid: a column pattern
    baseline = _sequential(model, sched, e_cond=0.0, e_uncond=alternating)
    dit_cache.apply(model, "cfg", scheduler=sched, **weights)
    out = _sequential(model, sched, e_cond=0.0, e_uncond=alternating)
    for (_, u), (_, bu) in zip(out, baseline):
        assert torch.allclose(u, bu, atol=1e-6)


def test_combines_with_an_inner_step_policy_and_round_trips():
    config = dit_cache.CFGCache(step=dit_cache.Schedule(steps=(0, 2)), **EXACT)
    assert PolicyConfig.from_json(config.to_json()) == config
    model, sched = CondDiT(num_blocks=2), FakeScheduler(STEPS)
    dit_cache.apply(model, config, scheduler=sched)
    _sequential(model, sched)
    stats = dit_cache.stats(model)
    assert stats.decisions(branch="cond") == ["computed", "reused", "computed", "reused"]
    assert stats.decisions(branch="uncond") == ["computed", "reused", "computed", "reused"]
    assert stats.compute_fraction == 0.5
    assert dit_cache.CFGCache(step="teacache").step == dit_cache.TeaCache()


def test_guidance_off_has_nothing_to_do(caplog):
    model, sched = CondDiT(num_blocks=2), FakeScheduler(STEPS)
    baseline = _sequential(model, sched, uncond=False)
    baseline_batched = _batched(model, sched, halves_equal=False)
    dit_cache.apply(model, "cfg", scheduler=sched, **EXACT)
    with caplog.at_level(logging.INFO, logger="dit_cache"):
        out = _sequential(model, sched, uncond=False)
        _sequential(model, sched, uncond=False)
    assert all(torch.equal(c, bc) for (c, _), (bc, _) in zip(out, baseline))
    assert sum("guidance off" in r.message and "nothing to do" in r.message for r in caplog.records) == 1
    caplog.clear()
    sizes = _batch_sizes(model)
    with caplog.at_level(logging.INFO, logger="dit_cache"):
        out = _batched(model, sched, halves_equal=False)  # two different latents: two prompts, no CFG
    assert all(torch.equal(a, b) for a, b in zip(out, baseline_batched))
    assert set(sizes) == {2}
    assert any("guidance is off" in r.message for r in caplog.records)


def test_interval_one_never_reuses():
    model, sched = CondDiT(num_blocks=2), FakeScheduler(STEPS)
    baseline = _batched(model, sched)
    dit_cache.apply(model, "cfg", interval=1, scheduler=sched)
    assert all(torch.equal(a, b) for a, b in zip(_batched(model, sched), baseline))
    assert dit_cache.stats(model).compute_fraction == 1.0


def test_speedup_picks_the_interval():
    # 10 steps: interval 3 computes 4 full steps (fraction 0.7), interval 4 three (0.65): 1/1.5 is closer to 0.65
    assert interval_for_speedup(10, 0.0, 1.5) == 4
    assert interval_for_speedup(10, 0.0, 1.0) == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(interval=0), "cfg: interval must be an integer >= 1, got 0"),
        (dict(warmup=1.0), "cfg: warmup must be a fraction in [0, 1)"),
        (dict(speedup=2.5), "cfg: speedup=2.5 is out of reach"),
        (dict(interval=2, speedup=1.5), "cfg: give interval or speedup, not both"),
        (dict(step="cfg"), "step='cfg' cannot be an inner policy"),
        (dict(step="tea"), "unknown policy 'tea'"),
        (dict(low_range=(0.9, 0.1)), "cfg: low_range must be (start, end) with start < end"),
    ],
)
def test_bad_options(options, message):
    with pytest.raises(ValueError) as err:
        dit_cache.CFGCache(**options)
    assert message in str(err.value)
