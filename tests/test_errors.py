"""Clearer errors (issue 10, item 10): each mistake ends in one line that names the value and the fix, at apply or
on load, never in a traceback from deep inside (AttributeError on None, numpy's UFuncTypeError) or silently."""

import copy
import json

import pytest
import torch
from diffusers.models.attention import FeedForward
from dummy import FakeScheduler
from torch import nn

import dit_cache
from dit_cache.adapters import BlockGroup, ModelSpec, register_adapter, temb_indicator
from dit_cache.calibration import Profile, ProfileError
from dit_cache.calibration.runner import CalibrationSettings, calibrate
from dit_cache.testing import TINY_TEXT_CALL, tiny_text_flux


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


# ---------------------------------------------------------------------------------------------------- adapters
class LinearStack(nn.Module):
    """Blocks that are plain Linears (on main, teacache: `'NoneType' object has no attribute 'detach'`)."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(4, 4) for _ in range(3)])

    def forward(self, hidden_states, timestep=None):
        for block in self.blocks:
            hidden_states = block(hidden_states)
        return (hidden_states,)


@pytest.mark.parametrize("policy", ["teacache", "fbcache", "schedule", "fora", "bwcache"])
def test_generic_adapter_on_plain_linear_blocks(policy):
    options = {"steps": (0, 2)} if policy == "schedule" else {}
    with pytest.raises(TypeError) as err:
        dit_cache.apply(LinearStack(), policy, scheduler=FakeScheduler(4), **options)
    text = _one_line(err)
    assert "generic adapter finds no attention or MLP submodules" in text
    assert "the Linear blocks of LinearStack.blocks" in text and "register a ModelSpec" in text


class KwargsBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ff = FeedForward(4, mult=1)

    def forward(self, **kwargs):
        return self.ff(kwargs["x"])


class KwargsStack(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([KwargsBlock() for _ in range(2)])

    def forward(self, hidden_states, timestep=None):
        for block in self.blocks:
            hidden_states = block(x=hidden_states)
        return (hidden_states,)


class PositionalBlock(KwargsBlock):
    def forward(self, x, temb=None):  # the hidden states are not called `hidden_states`
        return x + self.ff(x)


class PositionalStack(KwargsStack):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([PositionalBlock() for _ in range(2)])

    def forward(self, hidden_states, timestep=None):
        for block in self.blocks:
            hidden_states = block(hidden_states, temb=timestep)
        return (hidden_states,)


def test_generic_adapter_reads_the_hidden_states_from_the_first_positional_argument():
    model, sched = PositionalStack(), FakeScheduler(4)
    dit_cache.apply(model, "schedule", steps=(0, 2), scheduler=sched)
    h = torch.ones(1, 3, 4)
    outs = [model(h * (i + 1), timestep=t.reshape(1))[0] for i, t in enumerate(sched.timesteps)]
    stats = dit_cache.stats(model)
    assert stats.decisions() == ["computed", "reused", "computed", "reused"] and stats.compute_fraction == 0.5
    dit_cache.remove(model)
    # a reused step adds the residual of the last computed step to its own input
    reference = model(h * 1, timestep=sched.timesteps[0].reshape(1))[0]
    torch.testing.assert_close(outs[1], h * 2 + (reference - h * 1))
    with pytest.raises(TypeError) as err:
        dit_cache.apply(KwargsStack(), "schedule", steps=(0, 2), scheduler=sched)
    assert "cannot tell which argument of KwargsBlock.forward (in `blocks`) carries the hidden states " in _one_line(
        err
    )


class Unnamed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([PositionalBlock() for _ in range(2)])

    def forward(self, hidden_states, timestep=None):
        for block in self.blocks:
            hidden_states = block(hidden_states)
        return (hidden_states,)


def test_a_submodule_policy_on_an_adapter_that_names_no_present_submodule():
    register_adapter(
        ModelSpec(
            "unnamed",
            ("Unnamed",),
            (BlockGroup("blocks", None, attention=("attn",), mlp=("mlp",), hidden_arg="x"),),
            temb_indicator("x"),
            "x",
        )  # fmt: skip
    )
    with pytest.raises(TypeError) as err:
        dit_cache.apply(Unnamed(), "fora", scheduler=FakeScheduler(4))
    text = _one_line(err)
    assert (
        "fora caches attention and MLP submodules, and the unnamed adapter finds none in the PositionalBlock " in text
    )
    assert "use a step or block policy" in text


# ---------------------------------------------------------------------------------------------------- profiles
@pytest.fixture(scope="module")
def pipe():
    return tiny_text_flux()


@pytest.fixture(scope="module")
def saved(pipe, tmp_path_factory):
    """A calibrated profile's JSON (as a dict) and the folder to write damaged copies into."""
    path = tmp_path_factory.mktemp("profile") / "p.json"
    calibrate(pipe, ["a red circle"], CalibrationSettings(steps=6, call_kwargs=TINY_TEXT_CALL), path, progress=False)
    return json.loads(path.read_text()), path


def _damaged(saved, name: str, change) -> str:
    data, original = saved
    data = copy.deepcopy(data)
    change(data)
    path = original.with_name(name + ".json")
    path.write_text(json.dumps(data))
    path.with_suffix(".safetensors").write_bytes(original.with_suffix(".safetensors").read_bytes())
    return str(path)


def _set(*keys, value=None, cut=None):
    def change(data):
        node = data
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = node[keys[-1]][:cut] if cut is not None else value

    return change


@pytest.mark.parametrize(
    ("policy", "change", "message"),
    [
        ("teacache", _set("policies", "teacache", "coefficients", value="abc"),
         "policies.teacache.coefficients must be a list of 1-10 finite numbers (the rescaling polynomial, highest power "
         "first), got 'abc'"),
        ("magcache", _set("branches", "cond", "mag_ratio", cut=2),
         "branches.cond.mag_ratio has 2 entries where the calibration has 6 steps (one per step)"),
        ("magcache", _set("branches", "cond", "mag_ratio", value=[1.0, 0.9, -1.0, 1.0, 1.0, 1.0]),
         "branches.cond.mag_ratio[2] must be a positive finite number, got -1.0"),
        ("teacache", _set("records", 0, "branches", "cond", "x", cut=3),
         "records[0].branches.cond.x has 3 entries where the branch's grid has 6 steps"),
        ("lemica", _set("policies", "lemica", "num_steps", value=4),
         "arrays['lemica/edges'] must be a (4 x 4) matrix (one row and column per calibrated step), got shape (6, 6)"),
        ("magcache", _set("policies", "magcache", value={"retention": 2}),
         "policies.magcache.retention must be a fraction of the steps in [0, 1), got 2"),
    ],
)  # fmt: skip
def test_damaged_profile_sections_fail_on_load(pipe, saved, policy, change, message):
    path = _damaged(saved, policy, change)
    with pytest.raises(ProfileError) as err:
        dit_cache.apply(pipe, policy, profile=path)
    text = _one_line(err)
    assert message in text and text.endswith("recalibrate (dit-cache calibrate) or restore the file")
    assert not dit_cache.is_applied(pipe)


def test_a_profile_object_is_checked_too(pipe, saved):
    """A Profile built or edited in memory is checked when applied (magcache accepted 2-entry ratios silently)."""
    profile = Profile.load(saved[1])
    profile.branches["cond"]["mag_ratio"] = profile.branches["cond"]["mag_ratio"][:2]
    with pytest.raises(ProfileError, match="branches.cond.mag_ratio has 2 entries where the calibration has 6 steps"):
        dit_cache.apply(pipe, "magcache", profile=profile)
    assert not dit_cache.is_applied(pipe)


@pytest.mark.parametrize(
    "family,wrong",
    [
        ("flux", {"transformer_blocks": dict(hidden_index=0, encoder_index=1)}),  # the two streams swapped
        ("wan", {"blocks": dict(hidden_arg="encoder_hidden_states")}),  # the text read as the hidden states
    ],
    ids=["flux-swapped-streams", "wan-wrong-hidden-arg"],
)
def test_an_adapter_that_misreads_the_block_outputs_fails_on_the_first_call(monkeypatch, family, wrong):
    """An adapter whose return layout does not match the blocks' real outputs is caught on the first call by a
    self-check of the real outputs: a clear error, never a wrong image."""
    import dataclasses

    from dit_cache import api
    from dit_cache.testing import run, tiny_pipeline

    pipe = tiny_pipeline(family)
    spec = api.find_spec(pipe.transformer)
    groups = tuple(dataclasses.replace(g, **wrong.get(g.attr, {})) for g in spec.groups)
    monkeypatch.setattr(api, "find_spec", lambda transformer: dataclasses.replace(spec, groups=groups))
    dit_cache.apply(pipe, "teacache", threshold=0.0)
    with pytest.raises(TypeError, match=rf"adapter does not match what the \w+ blocks of `{next(iter(wrong))}`"):
        run(pipe, family, steps=2)
    dit_cache.remove(pipe)
