"""The policy contract and the registry: `@register_policy(name, Config)` on a policy class makes `name` select
`Config` in `apply(pipe, name, ...)` and this class run it. A policy is one file (policies/<name>.py: its config,
state and policy class); its capabilities are class attributes of the policy, read by the evaluation, the CLI and
the generated docs, so no list of policy names is kept anywhere else."""

from __future__ import annotations

import dataclasses
import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..adapters import BlockCall, ModelSpec
from ..config import PolicyConfig, config_class, policy_names, register_config
from ..engine import BlockSlot, Locate
from ..state import COMPUTE, CallInfo
from ..stats import StepRecord

_POLICIES: dict[type[PolicyConfig], type[Policy]] = {}

LEVELS = ("step", "block", "token", "cfg", "mixed", "auto", "none")
PROFILE_NEEDS = ("none", "optional", "required", "recorded", "candidates")
TARGETS = (None, "profile", "schedule", "interval")


def register_policy(
    name: str,
    config_cls: type[PolicyConfig],
    *,
    level: str = "step",
    needs_profile: str = "none",
    speedup_by: str | None = None,
    cfg_inner: bool = True,
    in_default_eval: bool = False,
    internal: bool = False,
):
    """Class decorator: `name` selects `config_cls` (`apply(pipe, name)`, `make_config(name)`), the decorated policy
    class runs configs of that class, and the capabilities become its class attributes (see `Policy`; all of them
    are set here, so a subclass never inherits another policy's by accident)."""
    capabilities = dict(level=level, needs_profile=needs_profile, speedup_by=speedup_by, cfg_inner=cfg_inner,
                        in_default_eval=in_default_eval, internal=internal)  # fmt: skip
    for attr, valid in (("level", LEVELS), ("needs_profile", PROFILE_NEEDS), ("speedup_by", TARGETS)):
        if capabilities[attr] not in valid:
            raise ValueError(f"policy {name!r}: {attr}={capabilities[attr]!r} is not one of {valid}")

    def wrap(cls: type[Policy]) -> type[Policy]:
        register_config(name)(config_cls)
        _POLICIES[config_cls] = cls
        cls.config_class = config_cls
        for attr, value in capabilities.items():
            setattr(cls, attr, value)
        return cls

    return wrap


def policy_class(config: PolicyConfig) -> type[Policy]:
    for cls in type(config).__mro__:
        if cls in _POLICIES:
            return _POLICIES[cls]
    raise TypeError(f"no policy is registered for {type(config).__name__}")


def policy_info(name: str) -> type[Policy]:
    """The policy class that runs policy `name`: its capabilities are class attributes (`level`, `needs_profile`,
    `speedup_by`, `cfg_inner`, `in_default_eval`, `internal`)."""
    return _POLICIES[config_class(name)]


def policies_where(**capabilities: Any) -> list[str]:
    """The user policies (sorted names) whose capabilities have the given values, e.g. `policies_where(level="step")`;
    a value may be a tuple of accepted values."""

    def accepts(value: Any, wanted: Any) -> bool:
        return value in wanted if isinstance(wanted, tuple) else value == wanted

    return [
        name
        for name in policy_names()
        if all(accepts(getattr(policy_info(name), key), wanted) for key, wanted in capabilities.items())
    ]


# transformer -> {(policy class, config key): (objects the key names by id, the tuned settings)}
_SHARED_TUNING: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def shared_tuning(policy: Policy) -> dict:
    """The dict in which a policy keeps what its speedup target resolved to (per step count and sigma grid), shared
    by every application of the same config to the same transformer: re-applying a policy (the evaluation does it
    between timed runs) does not repeat the search. Unhashable option values (a Profile object) count by identity
    and are kept alive with the entry, so an identity is never reused by another object."""
    per_model = _SHARED_TUNING.setdefault(policy.model.transformer, {})
    key, keep = [], []
    for f in dataclasses.fields(policy.config):
        value = getattr(policy.config, f.name)
        try:
            hash(value)
        except TypeError:
            keep.append(value)
            value = ("object", id(value))
        if f.name == "profile" and isinstance(value, (str, os.PathLike)) and os.path.exists(value):
            value = (os.fspath(value), os.stat(value).st_mtime_ns)  # a file recalibrated in place is new
        key.append((f.name, value))
    return per_model.setdefault((type(policy), tuple(key)), (keep, {}))[1]


@dataclass
class ModelContext:
    """What a policy knows of the model it runs on."""

    transformer: nn.Module
    spec: ModelSpec
    slots: list[BlockSlot]


class Policy:
    """Decides, per (branch, step, place), compute / reuse / forecast, and owns the per-branch state it needs.

    Hooks call, in order: `probe` once per transformer call at block `decision_block` (device values to read with the
    step, in the same host sync), `decide` with those values, then `run_block` for every block, `run_submodule`
    for every attention/MLP submodule (only when `uses_submodules`), and `finish` with the transformer's output.
    `decide` is pure in the policy: it reads plans made once per step grid and changes only `state` (and the call's
    record), so replays of the rule on recorded traces run on fresh states of the same policy.
    """

    decision_block: int = 0
    uses_submodules: bool = False
    intercepts_calls: bool = False  # sees whole transformer calls through `intercept_call`

    # ---- capabilities: class attributes set by `register_policy` (read by the evaluation, `dit-cache info` and the
    # generated docs); the values below are its defaults
    config_class: ClassVar[type[PolicyConfig]]
    level: ClassVar[str] = "step"  # what it caches: step, block, token, cfg, mixed (several), auto (picks a policy)
    # "none", "optional" (better with one), "required" (a built-in or calibrated one), "recorded" (calibrated
    # traces only), "candidates" (calibrated candidate runs)
    needs_profile: ClassVar[str] = "none"
    # how speedup= is met: "profile" (searched on a profile's traces), "schedule" (planned from the step count),
    # "interval" (an integer interval is the target), None (no target)
    speedup_by: ClassVar[str | None] = None
    cfg_inner: ClassVar[bool] = True  # may run as CFG reuse's inner policy (CFGCache(step=...))
    in_default_eval: ClassVar[bool] = False  # compared by `dit-cache eval` when no --policies are given
    internal: ClassVar[bool] = False  # never listed to users (the calibration recorder)

    def __init__(self, config: PolicyConfig, model: ModelContext) -> None:
        self.config = config
        self.model = model
        if self.uses_submodules and not any(slot.work for slot in model.slots):
            block = type(model.slots[0].module).__name__ if model.slots else "?"
            raise TypeError(
                f"{config.policy_name} caches attention and MLP submodules, and the {model.spec.name} adapter finds "
                f"none in the {block} blocks of {type(model.transformer).__name__}; use a step or block policy "
                f"({', '.join(policies_where(level=('step', 'block'), uses_submodules=False))}) or register a "
                "ModelSpec whose BlockGroup "
                "names them (attention=..., mlp=...; see docs/adapters.md)"
            )

    @property
    def name(self) -> str:
        return self.config.policy_name

    def new_state(self) -> Any:
        return None

    def reset(self, states: dict[str, Any]) -> None:
        """Called with the per-branch states about to be dropped (end of a pipeline call, a restart, an error)."""

    def probe(self, call: CallInfo, state: Any, slot: BlockSlot, block: BlockCall) -> torch.Tensor | None:
        return None

    def decide(self, call: CallInfo, state: Any, values: list[float]) -> str:
        return COMPUTE

    def run_block(self, call: CallInfo, state: Any, slot: BlockSlot, forward: Callable, block: BlockCall) -> Any:
        return forward(*block.args, **block.kwargs)

    def run_submodule(
        self, call: CallInfo, state: Any, slot: BlockSlot, name: str, forward: Callable, args: tuple, kwargs: dict
    ) -> Any:
        return forward(*args, **kwargs)

    def finish(self, call: CallInfo, state: Any, output: Any) -> Any:
        """Sees (and may replace) the transformer's return value at the end of a prepared call."""
        return output

    def intercept_call(self, call: CallInfo, args: tuple, kwargs: dict, forward: Callable, locate: Locate) -> Any:
        """Runs the whole transformer call (only when `intercepts_calls`): it may call `locate` to learn the step
        before the transformer runs, skip `forward` (then set `call.record.prepared`, `.decision`, `.skipped_units`
        itself) or run it on other arguments (`locate.on_branch`: on another branch's state)."""
        return forward(*args, **kwargs)

    def split_record(self, call: CallInfo, record: StepRecord) -> list[StepRecord]:
        """The stats records of one call (one, unless a call did the work of several branches)."""
        return [record]
