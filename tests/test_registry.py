"""The policy registry (issue 14, item 1) and pure decisions (item 3): a policy is one file registered by a
decorator, its capabilities are class attributes the evaluation and the CLI read, the names do not depend on import
order; `decide` changes only the branch state, the call is read-only once located, replays run on copies."""

import dataclasses
import inspect
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from dummy import DummyDiT, FakeScheduler, drive

import dit_cache
from dit_cache.calibration import Profile, model_fingerprint
from dit_cache.calibration.resample import position_grid
from dit_cache.config import PolicyConfig, config_class, policy_names
from dit_cache.policies import Policy, policies_where, policy_info, register_policy
from dit_cache.policies.base import _POLICIES, LEVELS, PROFILE_NEEDS, TARGETS
from dit_cache.schedulers.budget import replay
from dit_cache.state import COMPUTE, REUSE, CallInfo

ROOT = Path(__file__).resolve().parents[1]


def test_policy_names_do_not_depend_on_what_was_imported_first():
    """The recorder's module imported first (it once added "recorder" to the names): the same user names, and the
    recorder only among the internal ones. (One fresh interpreter: importing dit_cache costs seconds.)"""
    code = (
        "import dit_cache.calibration.recorder\nfrom dit_cache.config import policy_names\n"
        "print(','.join(policy_names())); print(','.join(policy_names(internal=True)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    users, everything = (line.split(",") for line in out.split())
    assert users == policy_names() and "recorder" not in users and "teacache" in users
    assert everything == sorted([*users, "recorder"])


@pytest.mark.parametrize("name", policy_names(internal=True))
def test_each_policy_is_one_file_with_valid_capabilities(name):
    """The config class and the policy class live in one module, and the capabilities are declared values."""
    cls = policy_info(name)
    assert cls.config_class is config_class(name) and cls.config_class.policy_name == name
    assert inspect.getmodule(cls) is inspect.getmodule(cls.config_class)
    assert cls.level in LEVELS and cls.needs_profile in PROFILE_NEEDS and cls.speedup_by in TARGETS
    if cls.speedup_by in ("profile", "schedule"):
        assert "speedup" in {f.name for f in dataclasses.fields(cls.config_class)}
    if cls.speedup_by == "interval":
        assert "interval" in {f.name for f in dataclasses.fields(cls.config_class)}


def test_configs_stay_importable_from_config():
    from dit_cache.config import FORA, TeaCache

    assert TeaCache is dit_cache.TeaCache and FORA is dit_cache.FORA
    with pytest.raises(ImportError):
        from dit_cache.config import NoSuchConfig  # noqa: F401


def test_the_eval_and_the_cli_read_the_capabilities(capsys):
    from dit_cache.cli import main
    from dit_cache.eval.methods import needs_profile
    from dit_cache.eval.runner import DEFAULT_POLICIES

    assert DEFAULT_POLICIES == (*policies_where(in_default_eval=True), "uniform")
    assert needs_profile("magcache") and needs_profile("teacache") and not needs_profile("fora")
    assert main(["info"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    assert rows["magcache"][1:4] == ["step", "required", "profile"] and rows["fora"][1:4] == [
        "block",
        "none",
        "interval",
    ]
    assert "recorder" not in rows


@dataclass(frozen=True)
class EveryOther(PolicyConfig):
    """A policy written in one place (here): reuse the stack output of the last step on odd steps."""


def test_adding_a_policy_is_one_decorated_class(monkeypatch):
    """A policy defined in one place is applied by name, listed, and offered to CFG reuse, with nothing else edited."""

    class EveryOtherPolicy(Policy):
        level = "step"

        def decide(self, call, state, values):
            return REUSE if call.step % 2 else COMPUTE

    monkeypatch.setattr("dit_cache.config._CONFIGS", dict(dit_cache.config._CONFIGS))
    monkeypatch.setattr("dit_cache.policies.base._POLICIES", dict(_POLICIES))
    register_policy("every-other", EveryOther)(EveryOtherPolicy)
    assert "every-other" in policy_names() and "every-other" in policies_where(cfg_inner=True)
    model, sched = DummyDiT(), FakeScheduler(4)
    dit_cache.apply(model, "every-other", scheduler=sched)
    drive(model, sched, [0.0] * 4)
    assert dit_cache.stats(model).decisions() == ["computed", "reused", "computed", "reused"]
    dit_cache.remove(model)


# ---------------------------------------------------------------------------------------------- pure decisions
def test_a_located_call_is_read_only_and_the_policy_writes_its_record():
    call = CallInfo("cond", None, step=2, num_steps=4)
    call.sigma = 0.5  # the engine fills a call in while locating it
    call.seal()
    with pytest.raises(AttributeError, match="call.record"):
        call.step = 3
    call.record.indicator = 0.25
    moved = call.on_branch("uncond")
    assert (moved.branch, moved.step, moved.sigma, moved.located) == ("uncond", 2, 0.5, True)
    assert moved.record is call.record


def _block_profile(model, steps: int, change: float) -> Profile:
    profile = Profile(fingerprint=model_fingerprint(model))
    table = torch.full((steps, len(model.blocks)), change)
    table[0] = float("nan")
    profile.records = [{"index": 0, "branches": {"batch": {"steps": list(range(steps))}}}]
    profile.arrays = {"records/0/batch/block_input_change": table}
    profile.branches["batch"] = {"grid": position_grid(steps).tolist()}
    return profile


@pytest.mark.parametrize(
    ("policy", "options"),
    [
        ("teacache", dict(threshold=0.3)),
        ("fbcache", dict(threshold=0.3)),
        ("easycache", dict(tolerance=0.3)),
        ("bwcache", dict(speedup=2.0)),
    ],
)
def test_decide_changes_nothing_but_the_state(policy, options):
    """After the first call (plans made once per step grid), further calls leave every attribute of the policy as it
    was: no threshold written per call."""
    model, sched = DummyDiT(num_blocks=2), FakeScheduler(8)
    if policy == "bwcache":
        options = dict(options, profile=_block_profile(model, 8, 0.05))
    dit_cache.apply(model, policy, scheduler=sched, **options)
    live = model._dit_cache.engine.policy
    temb = [0.1, 0.11, 0.12, 0.5, 0.51, 0.52, 0.9, 0.91]
    hidden = [torch.full((1, 4, 2), 1.05**t) for t in range(8)]
    first = drive(model, sched, temb, hidden=hidden)
    before = dict(vars(live))
    threshold = live.threshold
    again = drive(model, sched, temb, hidden=hidden)
    assert all(vars(live)[key] is value for key, value in before.items()) and vars(live).keys() == before.keys()
    assert live.threshold == threshold and all(torch.equal(a, b) for a, b in zip(first, again))
    dit_cache.remove(model)


def test_the_budget_replay_runs_a_copy_at_its_threshold():
    model, sched = DummyDiT(num_blocks=2), FakeScheduler(6)
    dit_cache.apply(model, "teacache", threshold=0.1, scheduler=sched)
    live = model._dit_cache.engine.policy
    trial = live.fixed(10.0)
    decisions = replay(trial, "cond", 6, None, lambda step, state: [0.05, 1.0] if step else [])
    assert decisions == ["computed", "reused", "reused", "reused", "reused", "computed"]
    assert live.threshold == 0.1 and trial.threshold == 10.0 and live.speedup is None
    dit_cache.remove(model)
