"""The mixture's documented decision rule on exact-arithmetic dummies: step reuse, token reuse and full compute from
the accumulated indicator; modes left out; the unconditional branch following the conditional one; bad input."""

import pytest
import torch
from dummy import CondDiT, FakeScheduler, TokenDiT, drive, in_context

import dit_cache
from dit_cache.calibration import Profile, model_fingerprint

# temb grows by 25% a step: the identity-rescaled indicator change is 0.25 per step
TEMB = [1.25**i for i in range(8)]
RULE = dict(reuse_threshold=0.3, token_threshold=0.6)


def _decisions(modes, **options):
    model, sched = TokenDiT(num_blocks=2), FakeScheduler(8)
    dit_cache.apply(model, "mix", modes=modes, scheduler=sched, **{**RULE, **options})
    drive(model, sched, TEMB, hidden=[torch.randn(1, 8, 2) for _ in range(8)])
    return dit_cache.stats(model)


def test_rule_steps_through_reuse_then_tokens_then_full():
    # acc: 0.25 (< 0.3: step reuse), 0.5 (< 0.6: token reuse), 0.75 -> full (acc = 0), ...; the last step is full
    stats = _decisions(("step", "token"))
    assert stats.decisions() == [
        "computed",
        "reused",
        "partial",
        "computed",
        "reused",
        "partial",
        "computed",
        "computed",
    ]
    units = [r.computed_units for r in stats.records]
    assert units[1] == 0 and 0 < units[2] < 1  # token step: attention reused, a share of the MLP tokens
    assert [r.indicator for r in stats.records[1:]] == [0.25] * 7


@pytest.mark.parametrize(
    ("modes", "expected"),
    [
        (("step",), ["computed", "reused", "reused", "computed", "reused", "reused", "computed", "computed"]),
        (("token",), ["computed", "partial", "partial", "computed", "partial", "partial", "computed", "computed"]),
        (
            ("teacache", "toca"),
            ["computed", "reused", "partial", "computed", "reused", "partial", "computed", "computed"],
        ),  # fmt: skip
    ],
)
def test_modes_left_out_drop_their_rung(modes, expected):
    assert _decisions(modes).decisions() == expected


def test_max_skip_forces_a_full_step():
    stats = _decisions(("step", "token"), max_skip=1)
    assert stats.decisions() == [
        "computed",
        "reused",
        "computed",
        "reused",
        "computed",
        "reused",
        "computed",
        "computed",
    ]


def test_unconditional_branch_follows_the_conditional_one():
    """Sequential CFG: where the conditional call is not fully computed, the unconditional output is that conditional
    output plus the difference stored at the last full step (exact for the constant-difference dummy)."""
    model, sched = CondDiT(num_blocks=2), FakeScheduler(8)
    dit_cache.apply(model, "mix", scheduler=sched, **RULE)
    pairs = []
    for i, t in enumerate(sched.timesteps):
        args = dict(hidden_states=torch.full((1, 4, 2), 1.0 + i), timestep=t.reshape(1), temb=torch.tensor(TEMB[i]))
        in_context(model, "cond")
        cond = model(**args, encoder_hidden_states=torch.full((1, 1, 1), 0.5))[0]
        in_context(model, "uncond")
        uncond = model(**args, encoder_hidden_states=torch.full((1, 1, 1), -0.25))[0]
        pairs.append((cond, uncond))
    in_context(model, None)
    stats = dit_cache.stats(model)
    cond_decisions = stats.decisions(branch="cond")
    assert cond_decisions == ["computed", "reused", "partial", "computed", "reused", "partial", "computed", "computed"]
    uncond_decisions = stats.decisions(branch="uncond")
    assert uncond_decisions == ["computed" if d == "computed" else "reused" for d in cond_decisions]
    for cond, uncond in pairs:
        assert torch.equal(uncond, cond - 0.75)


def test_zero_thresholds_never_reuse():
    model, sched = CondDiT(num_blocks=2), FakeScheduler(6)
    e = torch.tensor([-0.25, 0.5]).reshape(2, 1, 1)

    def batched():
        return [
            model(
                hidden_states=torch.full((2, 4, 2), 1.0 + i),
                timestep=t.expand(2),
                temb=torch.tensor(TEMB[i]),
                encoder_hidden_states=e,
            )[0]  # fmt: skip
            for i, t in enumerate(sched.timesteps)
        ]

    baseline = batched()
    dit_cache.apply(model, "mix", reuse_threshold=0.0, token_threshold=0.0, scheduler=sched)
    assert all(torch.equal(a, b) for a, b in zip(batched(), baseline))
    assert dit_cache.stats(model).compute_fraction == 1.0


def test_speedup_scales_both_thresholds_on_the_profile():
    # 11 steps: these uniform traces reach 0.5 within 0.05 (at 10 steps the closest is 0.445: refused)
    model, sched = TokenDiT(num_blocks=2), FakeScheduler(11)
    profile = Profile(fingerprint=model_fingerprint(model))
    profile.records = [{"index": 0, "branches": {"batch": {"x": [None] + [0.25] * 10}}}]
    profile.branches["batch"] = {"grid": [i / 10 for i in range(11)]}
    dit_cache.apply(model, "mix", speedup=2.0, profile=profile, modes=("step", "token"), scheduler=sched)
    drive(model, sched, [1.25**i for i in range(11)], hidden=[torch.randn(1, 16, 2) for _ in range(11)])
    chooser = model._dit_cache.engine.policy.inner
    assert chooser.reuse_threshold == pytest.approx(chooser.token_threshold / 2)
    assert dit_cache.stats(model).compute_fraction == pytest.approx(0.5, abs=0.1)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(modes=("step", "magic")), "mix: unknown policy 'magic' in modes"),
        (dict(modes=()), "mix: modes is empty"),
        (dict(reuse_threshold=0.5, token_threshold=0.2), "must not exceed token_threshold"),
        (dict(fraction=0.0), "mix: fraction must be a share of tokens in (0, 1]"),
        (dict(token_threshold=-1.0), "mix: token_threshold must be a finite number >= 0.0"),
    ],
)
def test_bad_options(options, message):
    with pytest.raises(ValueError) as err:
        dit_cache.MixCache(**options)
    assert message in str(err.value)


def test_speedup_without_traces_says_how_to_calibrate():
    with pytest.raises(dit_cache.ProfileError, match="dit-cache calibrate"):
        dit_cache.apply(TokenDiT(), "mix", speedup=2.0, scheduler=FakeScheduler(4))
