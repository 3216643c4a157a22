"""The recorder: a policy that computes everything and writes down what the caching policies need to plan.

Per (branch, step) it records, as device scalars read once per pipeline call:
  x           rel-L1 change of TeaCache's indicator since the previous step
  y           rel-L1 change of the transformer's output since the previous step
  mag_ratio   mean over tokens of ||r_t|| / ||r_(t-1)||, r the block-stack residual (MagCache)
  fb_pairs    rel-L1 between this step's first-block residual and every earlier step's (first-block probe replay)
  res_pairs   rel-L1 between this step's block-stack residual and every earlier step's (LeMiCa's proxy edges)
  input_pairs / output_pairs   mean |a_t - a_j| of the block stack's input / output against every earlier step j,
              and mean |a_t| (EasyCache's transformation rates, replayed for its speedup=)
  output_gram mean v_t v_j of the transformer's output against every earlier step j and itself (ERTACache's
              timestep adjustment)
  block_input_change / block_residual_change   per block, rel-L1 change since the previous step
  unit_features  per attention/MLP unit (`unit_keys` order), a strided sample of UNIT_SAMPLES of its output values
                 (HyCa replays its solvers on them)
Per-block traces, unit features and the stack input/output and output tables (EasyCache's and ERTACache's options)
are recorded only with `block_traces=True` (they cost a few passes per block or call: calibration_cost.py).
Pairwise and per-block traces are measured on an evenly strided subset of at most `MAX_TRACE_TOKENS` tokens (the
stack input/output tables, means that need no more, on `RATE_TRACE_TOKENS`), so their memory and cost stay small on
large models; the MagCache ratio and x, y use every token.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import kernels
from ..adapters import BlockCall
from ..config import PolicyConfig
from ..distributed import GroupSync
from ..engine import BlockSlot
from ..policies.base import ModelContext, Policy, register_policy
from ..state import COMPUTE, CallInfo
from . import keys

MAX_TRACE_TOKENS = 1024
RATE_TRACE_TOKENS = 256  # input_pairs / output_pairs: two more histories per branch, kept a quarter as large
UNIT_SAMPLES = 512  # values sampled per unit and step: a few MB per trajectory on large models
UNIT_FEATURES = keys.UNIT_FEATURES


def unit_keys(slots: list[BlockSlot]) -> list[tuple[int, str]]:
    """The attention/MLP units of a model, (block index, submodule name), in the order unit features are stored."""
    return sorted((slot.index, name) for slot in slots for name in slot.work)


def unit_sample(output: Any) -> torch.Tensor | None:
    """UNIT_SAMPLES values of a unit's output (all its tensors, flattened), strided across tokens and channels (the
    stride shares no factor with the channel count, so every channel can be hit), zero-padded; None if not tensors."""
    if isinstance(output, torch.Tensor):
        tensors = [output]
    else:
        tensors = [o for o in output if isinstance(o, torch.Tensor)] if isinstance(output, tuple) else []
    if not tensors:
        return None
    flat = torch.cat([t.detach().float().reshape(-1) for t in tensors])
    stride = max(1, -(-flat.numel() // UNIT_SAMPLES))
    channels = tensors[0].shape[-1] if tensors[0].dim() else 1
    while stride > 1 and math.gcd(stride, channels) > 1:
        stride += 1
    sample = flat[::stride][:UNIT_SAMPLES]
    return torch.nn.functional.pad(sample, (0, UNIT_SAMPLES - sample.numel()))


def token_subset(x: torch.Tensor, limit: int = MAX_TRACE_TOKENS) -> torch.Tensor:
    """An evenly strided subset of at most `limit` tokens of a (batch, tokens, channels) tensor."""
    if x.dim() < 3 or x.shape[1] <= limit:
        return x.detach()
    stride = -(-x.shape[1] // limit)
    return x.detach()[:, ::stride].contiguous()


def model_output_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return getattr(output, "sample", None)


@dataclass(frozen=True)
class Recorder(PolicyConfig):
    """Computes every step and records trajectory statistics (used by `dit-cache calibrate`)."""

    progress: Any = field(default=None, compare=False)  # called once per newly reached step
    block_traces: bool = False  # per-block input/residual changes and unit features (for block-level policies)


@dataclass
class _Trace:
    previous: dict[str, Any] = field(default_factory=dict)
    front_history: _History = field(default_factory=lambda: _History())  # (steps so far, *token subset shape)
    residual_history: _History = field(default_factory=lambda: _History())
    input_history: _History = field(default_factory=lambda: _History())
    output_history: _History = field(default_factory=lambda: _History())
    model_output_history: _History = field(default_factory=lambda: _History())
    steps: dict[int, dict[str, Any]] = field(default_factory=dict)


# calibration's own policy: it caches nothing, so it is never offered to users
@register_policy("recorder", Recorder, level="none", internal=True)
class RecorderPolicy(Policy):
    def __init__(self, config: Recorder, model: ModelContext) -> None:
        super().__init__(config, model)
        self.last_block = len(model.slots) - 1
        self._reported_steps: set[int] = set()
        self.finished: dict[str, _Trace] = {}  # the traces of the last pipeline call, kept past its reset
        self.units = unit_keys(model.slots)
        self.uses_submodules = config.block_traces and bool(self.units)  # unit features come from their hooks

    def new_state(self) -> _Trace:
        return _Trace()

    def reset(self, states: dict[str, _Trace]) -> None:
        if states:
            self.finished = dict(states)
        self._reported_steps = set()

    def probe(self, call: CallInfo, state: Any, slot: BlockSlot, block: BlockCall) -> None:
        call.record.payload = self.model.spec.indicator(slot.module, block).detach()
        return None

    def decide(self, call: CallInfo, state: _Trace, values: list[float]) -> str:
        record = state.steps[call.step] = {
            "sigma": call.sigma, keys.BLOCK_INPUT_CHANGE: [], keys.BLOCK_RESIDUAL_CHANGE: [], "units": {},
        }  # fmt: skip
        self._change(state, record, "x", "indicator", call.record.payload)
        if self.config.progress is not None and call.step not in self._reported_steps:
            self._reported_steps.add(call.step)
            self.config.progress()
        return COMPUTE

    @staticmethod
    def _change(state: _Trace, record: dict, key: str, name: str, value: torch.Tensor, *, keep: bool = True) -> None:
        previous = state.previous.get(name)
        if previous is not None and previous.shape == value.shape:
            record[key] = kernels.rel_l1_parts(value, previous)
        if keep:
            state.previous[name] = value

    def run_block(self, call: CallInfo, state: _Trace, slot: BlockSlot, forward: Callable, block: BlockCall) -> Any:
        hidden_in = block.hidden
        output = forward(*block.args, **block.kwargs)
        hidden_out, _ = slot.group.split_output(output)
        record = state.steps[call.step]
        i = slot.index
        if i == 0:
            call.record.stack_input = (hidden_in, block.encoder)
        if self.config.block_traces or i == 0:
            sub_in = token_subset(hidden_in)
            sub_res = token_subset(hidden_out) - sub_in
        if self.config.block_traces:
            self._append_change(state, record, keys.BLOCK_INPUT_CHANGE, f"in{i}", sub_in)
            self._append_change(state, record, keys.BLOCK_RESIDUAL_CHANGE, f"res{i}", sub_res)
        if i == 0:
            record[keys.FB_PAIRS] = _pairs(sub_res, state.front_history)
            if self.config.block_traces:
                rate_in = token_subset(hidden_in, RATE_TRACE_TOKENS)
                record[keys.INPUT_PAIRS] = _pairs(rate_in, state.input_history, absolute=True)
        if i == self.last_block:
            residual = (hidden_out - call.record.stack_input[0]).detach()
            record[keys.RES_PAIRS] = _pairs(token_subset(residual), state.residual_history)
            if self.config.block_traces:
                record[keys.OUTPUT_PAIRS] = _pairs(
                    token_subset(hidden_out, RATE_TRACE_TOKENS), state.output_history, absolute=True
                )
            previous = state.previous.get("residual")
            if previous is not None and previous.shape == residual.shape:
                record["mag_ratio"] = kernels.magnitude_ratio(residual, previous)
                record["mag_tokens"] = residual.numel() // max(1, residual.shape[-1])
            state.previous["residual"] = residual
        return output

    def run_submodule(
        self, call: CallInfo, state: _Trace, slot: BlockSlot, name: str, forward: Callable, args: tuple, kwargs: dict
    ) -> Any:
        output = forward(*args, **kwargs)
        sample = unit_sample(output)
        if sample is not None:
            state.steps[call.step]["units"][(slot.index, name)] = sample
        return output

    @staticmethod
    def _append_change(state: _Trace, record: dict, key: str, name: str, value: torch.Tensor) -> None:
        previous = state.previous.get(name)
        if previous is not None and previous.shape == value.shape:
            record[key].append(kernels.rel_l1_parts(value, previous))
        state.previous[name] = value

    def finish(self, call: CallInfo, state: _Trace, output: Any) -> Any:
        tensor = model_output_tensor(output)
        if tensor is not None:
            record = state.steps[call.step]
            self._change(state, record, "y", "output", tensor.detach())
            if self.config.block_traces:
                record[keys.OUTPUT_GRAM] = _gram(token_subset(tensor), state.model_output_history)
        return output


class _History:
    """Earlier steps' token subsets, as one float32 (steps, ...) buffer written in place and grown by doubling: a
    step costs one row's copy, not a copy of every earlier row (a concatenation per step is quadratic in the steps),
    and the sums of |row| are kept per row."""

    def __init__(self) -> None:
        self.buffer: torch.Tensor | None = None
        self.count = 0
        self.abs_sums: torch.Tensor | None = None

    def push(self, current: torch.Tensor) -> torch.Tensor:
        """Append `current`; return the filled rows, `current` last."""
        current = current.detach()
        if self.buffer is None or self.buffer.shape[1:] != current.shape:
            if self.buffer is not None:
                raise ValueError(
                    f"calibration trace changed shape: {tuple(self.buffer.shape[1:])} -> {tuple(current.shape)}"
                )
            self.buffer = current.new_empty((8, *current.shape), dtype=torch.float32)
            self.abs_sums = self.buffer.new_empty(8)
        if self.count == len(self.buffer):
            grown = self.buffer.new_empty((2 * self.count, *current.shape))
            grown[: self.count] = self.buffer
            sums = self.abs_sums.new_empty(2 * self.count)
            sums[: self.count] = self.abs_sums
            self.buffer, self.abs_sums = grown, sums
        row = self.buffer[self.count]
        row.copy_(current)
        self.abs_sums[self.count] = row.abs().sum()
        self.count += 1
        return self.buffer[: self.count]


def _pairs(current: torch.Tensor, history: _History, *, absolute: bool = False) -> torch.Tensor | None:
    """[sum|current - h|, sum|h|] for every earlier step's h (one batched pass), `current` appended to `history`.
    absolute=True: [sum|current - h|, n] for every earlier h, then [sum|current|, n] (means once divided, the
    diagonal included)."""
    filled = history.push(current)
    count = history.count
    if count == 1 and not absolute:
        return None
    dims = tuple(range(1, filled.dim()))
    num = (filled[: count - 1] - filled[count - 1]).abs().sum(dim=dims)
    if absolute:
        num = torch.cat((num, history.abs_sums[count - 1 : count]))
        return torch.stack((num, torch.full_like(num, float(filled[0].numel()))), dim=1)
    return torch.stack((num, history.abs_sums[: count - 1].clone()), dim=1)


def _gram(current: torch.Tensor, history: _History) -> torch.Tensor:
    """[sum(current * h), n] for every earlier step's h and for current itself (means once divided), `current`
    appended to `history`."""
    filled = history.push(current)
    dims = tuple(range(1, filled.dim()))
    num = (filled * filled[-1]).sum(dim=dims)
    return torch.stack((num, torch.full_like(num, float(filled[0].numel()))), dim=1)


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else (0.0 if num == 0 else float("inf"))


def _mean(values: list[float]) -> float:
    """A mean as recorded: [mean], or [sum, count] after an all-reduce."""
    return values[0] if len(values) == 1 else _ratio(values[0], values[1])


def collect(states: dict[str, _Trace], sync: GroupSync | None = None) -> dict[str, dict[str, Any]]:
    """Host copies of one pipeline call's records, per branch (one device-to-host transfer for all of them).

    Per-step lists; None where a value is undefined (the first step has no previous one). With `sync` (context
    parallelism: each rank recorded its shard of the tokens) the sums are all-reduced first, in one collective, so
    every rank gets the statistics of the whole sequence; the MagCache ratio, a mean over tokens, travels as
    (mean x tokens, tokens).
    """
    pending: list[torch.Tensor] = []

    def mag(r: dict) -> int:
        if sync is None:
            return later(r["mag_ratio"])
        tokens = float(r["mag_tokens"])
        return later(torch.stack((r["mag_ratio"].float() * tokens, r["mag_ratio"].new_tensor(tokens).float())))

    def later(t: torch.Tensor) -> int:
        pending.append(t.detach().float().reshape(-1))
        return len(pending) - 1

    layout = {}
    for branch, trace in states.items():
        steps = sorted(trace.steps)
        rows = []
        for s in steps:
            r = trace.steps[s]
            rows.append(
                {
                    "sigma": r["sigma"],
                    "x": later(r["x"]) if "x" in r else None,
                    "y": later(r["y"]) if "y" in r else None,
                    "mag_ratio": mag(r) if "mag_ratio" in r else None,
                    **{key: later(r[key]) if r.get(key) is not None else None for key in keys.PAIR_KINDS},
                    **{key: [later(p) for p in r[key]] for key in keys.BLOCK_KINDS},
                    UNIT_FEATURES: torch.stack([r["units"][k] for k in sorted(r["units"])]) if r["units"] else None,
                }
            )
        layout[branch] = (steps, rows)
    flat = torch.cat([p.to(pending[0].device) for p in pending]) if pending else torch.zeros(0)
    if sync is not None and flat.numel():
        flat = sync.all_reduce(flat)
    flat = flat.cpu().tolist()
    offsets, position = [], 0
    for p in pending:
        offsets.append(position)
        position += p.numel()

    def values(index: int) -> list[float]:
        return flat[offsets[index] : offsets[index] + pending[index].numel()]

    def rel(index: int | None) -> float | None:
        return None if index is None else _ratio(*values(index))

    result = {}
    for branch, (steps, rows) in layout.items():
        result[branch] = {
            keys.STEPS: steps,
            keys.SIGMA: [r["sigma"] for r in rows],
            keys.X: [rel(r["x"]) for r in rows],
            keys.Y: [rel(r["y"]) for r in rows],
            keys.MAG_RATIO: [1.0 if r["mag_ratio"] is None else _mean(values(r["mag_ratio"])) for r in rows],
            **{
                key: [
                    [] if r[key] is None else [_ratio(*pair) for pair in zip(*[iter(values(r[key]))] * 2)] for r in rows
                ]
                for key in keys.PAIR_KINDS
            },
            **{key: [[rel(i) for i in r[key]] for r in rows] for key in keys.BLOCK_KINDS},
            UNIT_FEATURES: _unit_table([r[UNIT_FEATURES] for r in rows]),
        }
    return result


def _unit_table(per_step: list[torch.Tensor | None]) -> torch.Tensor | None:
    """(steps, units, UNIT_SAMPLES) on the host, or None unless every step sampled the same units."""
    if not per_step or any(t is None or t.shape != per_step[0].shape for t in per_step):
        return None
    return torch.stack(per_step).cpu()
