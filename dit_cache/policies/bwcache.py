"""Per-block similarity reuse (BWCache-style): each block decides for itself. A block is reused (its input plus the
residual it produced when it last ran, for the image and the text stream) while its own input has drifted by less
than `threshold` (rel-L1) since it last ran; otherwise it runs and refreshes its reference input and residual.

One host read per call: block i's input at step t exists only once blocks < i ran at step t, so reading each
block's drift on the spot would cost a host sync per block. Instead every block measures, on the device, the drift
of its input against its reference (per batch row, `rel_l1_rows`, written into a per-branch (blocks, rows, 2)
buffer; a block's drift is that of the sample that drifted most), and the next call of the branch reads the whole
buffer with its step. The decision at step t then uses

    rate_i = drift_i(measured at the previous call) / steps between that call and block i's reference
    predicted_i(t) = rate_i * (t - step block i last ran)        reuse block i  <=>  predicted_i(t) < threshold

(a linear drift model), at most `max_skip` reuses in a row. A block without a reference, a residual or a measured
rate runs. threshold=0 never reuses.

speedup= needs a profile calibrated with per-block traces (`dit-cache calibrate --block-traces`): the rule is
replayed on the recorded per-step input changes of every block (drift since a computation taken as the sum of the
per-step changes since then) to find the threshold.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .. import kernels
from ..adapters import BlockCall
from ..calibration import ProfileError, keys, resolve_profile
from ..calibration.resample import resample_increments
from ..config import (
    PolicyConfig,
    _check_int,
    _check_number,
    _check_speedup,
)
from ..engine import BlockSlot
from ..schedulers.budget import search_threshold
from ..schedulers.targets import TOLERANCE, SpeedupError, check_ceiling, check_reached
from ..state import COMPUTE, PARTIAL, REUSE, CallInfo
from .base import ModelContext, Policy, register_policy, shared_tuning
from .step import rel_l1_rows, rel_l1_value


@dataclass(frozen=True)
class BWCache(PolicyConfig):
    """Per-block similarity reuse (BWCache-style): each block is reused (its input plus the residual it produced
    when it last ran) while its own input has changed by less than `threshold` (rel-L1) since it last ran,
    independently of the other blocks; at most `max_skip` reuses in a row per block.

    The change at step t is known only once the earlier blocks ran at step t, so to keep one host read per call the
    decision uses each block's change measured at the previous call, extrapolated one step (linear drift).
    """

    threshold: float = 0.1
    max_skip: int | None = None
    profile: Any = None
    speedup: float | None = None

    def __post_init__(self):
        _check_number("bwcache", "threshold", self.threshold, allow_none=False)
        _check_int("bwcache", "max_skip", self.max_skip, low=0)
        _check_speedup("bwcache", self.speedup)


@dataclass
class BlockMemory:
    """Host-side bookkeeping of one block (all plain numbers: the rule runs on the host)."""

    last_computed: int | None = None
    skips: int = 0
    rate: float | None = None  # drift per step
    measured_gap: int = 0  # steps between the reference and the pending measurement (0: none)


@dataclass
class BWState:
    blocks: list[BlockMemory]
    inputs: list[torch.Tensor | None]  # each block's hidden input when it last ran
    residuals: list[tuple[torch.Tensor, torch.Tensor | None] | None]
    encoder_out: list[bool]
    pending: torch.Tensor | None = None  # (blocks, rows, 2) [sum|x - ref|, sum|ref|] measured during the last call
    reuse: list[bool] = field(default_factory=list)


def choose(
    blocks: list[BlockMemory], step: int, threshold: float, max_skip: int | None, measured: list[float | None]
) -> tuple[list[bool], float | None]:
    """The rule: update each block's drift rate from its measurement, predict its drift now, decide. Returns the
    reuse flags and the mean predicted drift (the stats indicator)."""
    flags, predictions = [], []
    for memory, drift in zip(blocks, measured):
        if drift is not None and memory.measured_gap > 0:
            memory.rate = drift / memory.measured_gap
        if memory.last_computed is None or memory.rate is None:
            flags.append(False)
            continue
        predicted = memory.rate * (step - memory.last_computed)
        predictions.append(predicted)
        flags.append(predicted < threshold and (max_skip is None or memory.skips < max_skip))
    return flags, (sum(predictions) / len(predictions) if predictions else None)


@register_policy(
    "bwcache", BWCache, level="block", needs_profile="optional", speedup_by="profile", in_default_eval=True
)
class BWCachePolicy(Policy):
    def __init__(self, config: BWCache, model: ModelContext) -> None:
        super().__init__(config, model)
        self.count = len(model.slots)
        self.profile = None
        self._tuned: dict[tuple, float] = shared_tuning(self)  # the threshold planned per step grid (speedup=)
        self.check_ceiling_at_apply()
        if config.speedup is not None:
            self.profile = resolve_profile(config.profile, model.transformer, "bwcache")
            if self.profile is None or not self.profile.has_array(keys.BLOCK_INPUT_CHANGE):
                raise ProfileError(
                    "bwcache: speedup= needs a profile with per-block traces; record one with "
                    "`dit-cache calibrate --block-traces ...` and pass profile=PATH (see docs/calibration.md)"
                )

    def check_ceiling_at_apply(self) -> None:
        """Each block runs at least once in every max_skip + 1 steps: no step count goes under 1 / (max_skip + 1)."""
        config = self.config
        if config.speedup is not None and config.speedup > 1 and config.max_skip is not None:
            check_ceiling(
                "bwcache", config.speedup, 1.0 / (config.max_skip + 1),
                f"running every block at least once in every max_skip + 1 = {config.max_skip + 1} steps",
                "Ask for less or raise max_skip",
            )  # fmt: skip

    def new_state(self) -> BWState:
        n = self.count
        return BWState([BlockMemory() for _ in range(n)], [None] * n, [None] * n, [False] * n)

    # ------------------------------------------------------------------------------------------ decision
    def probe(self, call: CallInfo, state: BWState | None, slot: BlockSlot, block: BlockCall) -> torch.Tensor | None:
        return state.pending if state is not None else None

    @property
    def threshold(self) -> float:
        """The configured threshold, or with a speedup target the one planned for the step grid planned last (each
        call reads the plan of its own grid)."""
        if self.config.speedup is not None and self._tuned:
            return next(reversed(self._tuned.values()))
        return self.config.threshold

    def decide(self, call: CallInfo, state: BWState, values: list[float]) -> str:
        """Pure in the policy: reads the plan of the call's step grid, changes only `state`."""
        threshold = self.config.threshold
        if self.config.speedup is not None:
            threshold = self.threshold_for(call.num_steps, call.sigmas)
        measured: list[float | None] = [None] * self.count
        per_block = len(values) // self.count if self.count else 0
        if per_block >= 2 and per_block % 2 == 0 and per_block * self.count == len(values):
            for i in range(self.count):
                measured[i] = rel_l1_value(values[i * per_block : (i + 1) * per_block])
        flags, call.record.indicator = choose(state.blocks, call.step, threshold, self.config.max_skip, measured)
        flags = [f and state.residuals[i] is not None for i, f in enumerate(flags)]
        state.reuse = flags
        if all(flags):
            return REUSE
        return PARTIAL if any(flags) else COMPUTE

    # ------------------------------------------------------------------------------------------ mechanism
    def run_block(self, call: CallInfo, state: BWState, slot: BlockSlot, forward: Callable, block: BlockCall) -> Any:
        if state is None:
            return forward(*block.args, **block.kwargs)
        i = slot.index
        memory = state.blocks[i]
        hidden, encoder = block.hidden, block.encoder
        reference = state.inputs[i]
        if reference is not None and reference.shape == hidden.shape:
            drift = rel_l1_rows(hidden, reference)
            if state.pending is None or state.pending.shape[1:] != drift.shape or state.pending.device != drift.device:
                state.pending = torch.zeros(self.count, *drift.shape, device=drift.device)
            state.pending[i].copy_(drift)
            memory.measured_gap = call.step - memory.last_computed
        else:
            memory.measured_gap = 0
        if state.reuse[i] and reference is not None and reference.shape == hidden.shape:
            memory.skips += 1
            call.record.skipped_units += slot.units
            hidden_res, encoder_res = state.residuals[i]
            hidden_out = kernels.apply_residual(hidden, hidden_res)
            if not state.encoder_out[i]:
                encoder_out = None
            elif encoder_res is None or encoder is None or encoder.shape != encoder_res.shape:
                encoder_out = encoder
            else:
                encoder_out = kernels.apply_residual(encoder, encoder_res)
            return slot.group.make_output(hidden_out, encoder_out)
        output = forward(*block.args, **block.kwargs)
        hidden_out, encoder_out = slot.group.split_output(output)
        old = state.residuals[i] if state.residuals[i] is not None and not torch.is_grad_enabled() else (None, None)
        if hidden_out.shape == hidden.shape:
            hidden_res = kernels.store_residual(hidden_out, hidden, old[0])
            encoder_res = None
            if encoder_out is not None and encoder is not None and encoder_out.shape == encoder.shape:
                encoder_res = kernels.store_residual(encoder_out, encoder, old[1])
            state.residuals[i] = (hidden_res, encoder_res)
            state.encoder_out[i] = encoder_out is not None
            state.inputs[i] = hidden.detach()
        memory.last_computed, memory.skips = call.step, 0
        return output

    # ------------------------------------------------------------------------------------------ speedup
    def threshold_for(self, num_steps: int, sigmas: list[float] | None) -> float:
        key = (num_steps, tuple(sigmas) if sigmas else None)
        if key not in self._tuned:
            traces = self._traces(num_steps, sigmas)
            target = 1.0 / self.config.speedup
            best = search_threshold(lambda t: self.replay_fraction(traces, num_steps, t), target)
            floor = self.replay_fraction(traces, num_steps, 1e12)
            if floor > target + TOLERANCE:
                raise SpeedupError(
                    f"bwcache: speedup={self.config.speedup:g} is above what the rule reaches on this profile at "
                    f"{num_steps} steps (at most {1 / floor:.2f}x); ask for less or raise max_skip"
                )
            check_reached(
                "bwcache", self.config.speedup, self.replay_fraction(traces, num_steps, best), num_steps,
                f"compute fractions {floor:.3f}-1, in jumps (a threshold moves whole blocks on these traces)",
                "Ask for a target near the closest, or calibrate on more prompts (smoother traces)",
            )  # fmt: skip
            self._tuned[key] = best
        return self._tuned[key]

    def _traces(self, num_steps: int, sigmas: list[float] | None) -> list[np.ndarray]:
        """Per recorded trajectory and branch: (steps, blocks) per-step input changes at this step count."""
        profile = self.profile
        dst = profile.call_grid(num_steps, sigmas)
        traces = []
        for record in profile.job_records():
            for branch in record.branches:
                table = profile.record_table(record.index, branch, keys.BLOCK_INPUT_CHANGE)
                if table is None or table.shape[1] != self.count:
                    continue
                grid = profile.grid(branch)
                columns = [resample_increments(table[:, b].tolist(), grid, dst) for b in range(self.count)]
                traces.append(np.stack(columns, axis=1))
        if not traces:
            raise ProfileError(f"bwcache: profile {profile.name!r} has no per-block traces for {self.count} blocks")
        return traces

    def replay_fraction(self, traces: list[np.ndarray], num_steps: int, threshold: float) -> float:
        """Mean share of block units computed when the rule runs on the recorded changes."""
        units = np.array([slot.units for slot in self.model.slots], dtype=np.float64)
        fractions = []
        for increments in traces:  # the device flow of `run_block`, on the host
            blocks = [BlockMemory() for _ in range(self.count)]
            drift = np.zeros(self.count)  # each block's input change since it last ran
            pending: list[float | None] = [None] * self.count
            computed = 0.0
            for step in range(num_steps):
                if step > 0:
                    drift += increments[step]
                flags, _ = choose(blocks, step, threshold, self.config.max_skip, pending)
                for i, memory in enumerate(blocks):
                    if memory.last_computed is None:
                        pending[i], memory.measured_gap = None, 0
                    else:
                        pending[i], memory.measured_gap = float(drift[i]), step - memory.last_computed
                    if flags[i]:
                        memory.skips += 1
                    else:
                        memory.last_computed, memory.skips = step, 0
                        drift[i] = 0.0
                        computed += units[i]
            fractions.append(computed / (units.sum() * num_steps))
        return float(np.mean(fractions))
