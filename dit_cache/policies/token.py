"""ToCa-style token caching (Zou et al. 2024). Every `interval`-th step computes everything and caches each MLP and
cross-attention output with the input that produced it; the partial steps in between recompute only a share of the
tokens through those submodules and scatter them into the cached output (`kernels.token_scatter_gate`), while
self-attention is reused or computed in full. Per-token work is exact for the tokens recomputed: MLPs act token by
token, and cross-attention queries attend to the full text whichever queries run.

Token score, SDPA-friendly (no attention map): the change of the token's submodule input since its last refresh
(relative to the mean change), plus `age_weight` x steps since that refresh / interval; the best token of every
`spread` x `spread` cell of the token grid gets a bonus so that the picks cover the image. Scores, picks and
scatters stay on the device: partial steps add no host read.

Units: a partial MLP/cross-attention call counts as (tokens recomputed / tokens) of a call, so `stats()` reports the
share of token-FLOPs of those submodules actually computed (self-attention: 1 when computed, 0 when reused).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import kernels
from ..config import (
    PolicyConfig,
    _check_int,
    _check_number,
    _check_open_fraction,
    _check_speedup,
    _check_weight,
)
from ..engine import BlockSlot
from ..schedulers.targets import check_ceiling, check_reached, floor_over_step_counts, nearest
from ..state import COMPUTE, PARTIAL, CallInfo
from .base import Locate, ModelContext, Policy, register_policy
from .grid import Grid, cell_ids, text_tokens

logger = logging.getLogger(__name__)
DEFAULT_FRACTION = 0.3
_EPS = 1e-12


@dataclass(frozen=True)
class ToCa(PolicyConfig):
    """ToCa-style token caching (Zou et al. 2024): every `interval`-th step computes everything; on the partial steps
    in between, MLP and cross-attention recompute only a share of the tokens and scatter them into their cached
    output, while self-attention is reused (`self_attention="reuse"`) or computed in full (`"compute"`).

    fraction: share of tokens recomputed on partial steps, in (0, 1] (None: 0.3, or the share that gives `speedup`).
        The share of one place is `fraction * (1 + depth_weight * (depth - 1/2)) * (1 + step_weight * (1/2 -
        progress)) * (cross_attention_scale for cross-attention)`, depth and progress in [0, 1], clipped to (0, 1].
    Tokens are picked by score: the change of the token's input since it was last recomputed (relative to the mean
    change), plus `age_weight` x steps since that refresh / interval; the best token of each `spread` x `spread`
    cell of the token grid gets a bonus so the recomputed tokens cover the image (spread=1: no spreading).
    """

    fraction: float | None = None
    interval: int = 3
    self_attention: str = "reuse"
    depth_weight: float = 0.5
    step_weight: float = 0.0
    cross_attention_scale: float = 0.5
    age_weight: float = 0.5
    spread: int = 2
    speedup: float | None = None

    def __post_init__(self):
        if self.fraction is not None:
            _check_open_fraction("toca", "fraction", self.fraction)
        _check_int("toca", "interval", self.interval, low=1, allow_none=False)
        if self.self_attention not in ("reuse", "compute"):
            raise ValueError(f"toca: self_attention must be 'reuse' or 'compute', got {self.self_attention!r}")
        _check_weight("toca", "depth_weight", self.depth_weight)
        _check_weight("toca", "step_weight", self.step_weight)
        if isinstance(self.cross_attention_scale, bool) or not isinstance(self.cross_attention_scale, (int, float)):
            raise ValueError(
                f"toca: cross_attention_scale must be a positive number, got {self.cross_attention_scale!r}"
            )
        _check_number("toca", "cross_attention_scale", self.cross_attention_scale, allow_none=False)
        if self.cross_attention_scale == 0:
            raise ValueError("toca: cross_attention_scale must be > 0 (it scales the share of tokens recomputed)")
        _check_number("toca", "age_weight", self.age_weight, allow_none=False)
        _check_int("toca", "spread", self.spread, low=1, allow_none=False)
        _check_speedup("toca", self.speedup)
        if self.speedup is not None and self.fraction is not None:
            raise ValueError("toca: give fraction or speedup, not both (speedup picks the fraction)")


@dataclass
class TokenPlace:
    """One MLP / cross-attention submodule's cache: its output and, per token, the input of its last refresh."""

    output: torch.Tensor  # (B, N, C_out)
    reference: torch.Tensor  # (B, N, C_in)
    age: torch.Tensor  # (N,) steps since each token was recomputed
    cells: torch.Tensor  # (N,) spatial cell of each token
    cell_count: int


@dataclass
class TokenState:
    last_full: int | None = None
    places: dict[tuple[int, str], TokenPlace] = field(default_factory=dict)
    attention: dict[tuple[int, str], Any] = field(default_factory=dict)  # self-attention outputs of the last full step
    zeros: dict[tuple, torch.Tensor] = field(default_factory=dict)


def _token_input(args: tuple, kwargs: dict) -> tuple[torch.Tensor | None, Callable[[torch.Tensor], tuple]]:
    """The (B, N, C) token input of a submodule call, and a function giving the call's (args, kwargs) with it
    replaced."""
    if args and isinstance(args[0], torch.Tensor):
        return args[0], lambda x: ((x, *args[1:]), kwargs)
    x = kwargs.get("hidden_states")
    if isinstance(x, torch.Tensor):
        return x, lambda x_new: (args, {**kwargs, "hidden_states": x_new})
    return None, lambda x: (args, kwargs)


class TokenMechanism:
    """Full / partial execution of the work submodules; shared by ToCa and the mixture."""

    def __init__(
        self,
        model: ModelContext,
        *,
        self_attention: str = "reuse",
        depth_weight: float = 0.5,
        step_weight: float = 0.0,
        cross_attention_scale: float = 0.5,
        age_weight: float = 0.5,
        age_scale: float = 3.0,
        spread: int = 2,
    ) -> None:
        self.model = model
        self.self_attention = self_attention
        self.depth_weight, self.step_weight = depth_weight, step_weight
        self.cross_attention_scale = cross_attention_scale
        self.age_weight, self.age_scale = age_weight, age_scale
        self.spread = spread
        count = len(model.slots)
        self.depth = {slot.index: slot.index / (count - 1) if count > 1 else 0.5 for slot in model.slots}
        self.kind: dict[tuple[int, str], str] = {}
        for slot in model.slots:
            for name in slot.work:
                group = slot.group
                kind = "cross" if name in group.cross_attention else "attention" if name in group.attention else "mlp"
                self.kind[(slot.index, name)] = kind
        self._warned: set[str] = set()

    def share(self, fraction: float, key: tuple[int, str], step: int, num_steps: int) -> float:
        """The share of tokens a place recomputes on a partial step (before the one-token floor)."""
        progress = step / (num_steps - 1) if num_steps > 1 else 0.0
        share = fraction * (1 + self.depth_weight * (self.depth[key[0]] - 0.5))
        share *= 1 + self.step_weight * (0.5 - progress)
        if self.kind[key] == "cross":
            share *= self.cross_attention_scale
        return min(1.0, max(0.0, share))

    def units(self, fraction: float, step: int, num_steps: int) -> float:
        """Units computed on a partial step at `step` (as counted in stats), for speedup planning."""
        total = 0.0
        for key, kind in self.kind.items():
            if kind == "attention":
                total += 1.0 if self.self_attention == "compute" else 0.0
            else:
                total += self.share(fraction, key, step, num_steps)
        return total

    def run(
        self,
        call: CallInfo,
        state: TokenState,
        slot: BlockSlot,
        name: str,
        forward: Callable,
        args: tuple,
        kwargs: dict,
        fraction: float | None,
    ) -> Any:
        """fraction None: full compute (refresh the caches); else a partial step at that base fraction."""
        key = (slot.index, name)
        kind = self.kind[key]
        if kind == "attention":
            if fraction is None or self.self_attention == "compute" or key not in state.attention:
                output = forward(*args, **kwargs)
                if fraction is None and self.self_attention == "reuse":
                    state.attention[key] = output
                return output
            call.record.skipped_units += 1
            return state.attention[key]
        x, with_input = _token_input(args, kwargs)
        place = state.places.get(key)
        if fraction is None or place is None or x is None or x.dim() != 3 or place.reference.shape != x.shape:
            output = forward(*args, **kwargs)
            if fraction is None:
                self._store(call, state, key, x, output)
            return output
        n = x.shape[1]
        count = min(n, max(1, math.ceil(self.share(fraction, key, call.step, call.num_steps) * n - 1e-9)))
        index = self._pick(place, x, count)
        rows_args, rows_kwargs = with_input(x.index_select(1, index))
        rows = forward(*rows_args, **rows_kwargs)
        zeros = self._zeros(state, place.output)
        output = kernels.token_scatter_gate(zeros, place.output, index, rows)
        place.reference.index_copy_(1, index, x.index_select(1, index).to(place.reference.dtype))
        place.age.add_(1).index_fill_(0, index, 0)
        call.record.skipped_units += 1 - count / n
        return output

    def _store(self, call: CallInfo, state: TokenState, key: tuple[int, str], x: torch.Tensor | None, output) -> None:
        if x is None or x.dim() != 3 or not isinstance(output, torch.Tensor) or output.shape[:2] != x.shape[:2]:
            if key[1] not in self._warned:
                self._warned.add(key[1])
                logger.info("dit_cache toca: %s does not map tokens to tokens; it is always computed in full", key[1])
            return
        n = x.shape[1]
        old = state.places.get(key)
        if old is not None and old.output.shape == output.shape and old.reference.shape == x.shape:
            old.output.copy_(output)  # reuse the buffers of the last refresh
            old.reference.copy_(x)
            old.age.zero_()
            return
        layout = call.record
        cells, cell_count = cell_ids(n, layout.grid, self.spread, x.device, layout.positions, layout.text_tokens)
        state.places[key] = TokenPlace(
            output=output.detach().clone(),
            reference=x.detach().clone(),
            age=torch.zeros(n, device=x.device, dtype=torch.float32),
            cells=cells,
            cell_count=cell_count,
        )

    def _pick(self, place: TokenPlace, x: torch.Tensor, count: int) -> torch.Tensor:
        # per token, the change of the sample that changed most: a batch refreshes what any of its samples needs
        change = (x.float() - place.reference.float()).abs().mean(dim=2).amax(dim=0)
        score = change / (change.mean() + _EPS) + self.age_weight * place.age / self.age_scale
        if self.spread > 1:
            best = torch.full((place.cell_count,), -math.inf, device=score.device)
            best = best.scatter_reduce(0, place.cells, score, reduce="amax")
            winners = score >= best[place.cells]
            score = score + winners * (score.max().abs() + 1.0)
        return score.topk(count, sorted=False).indices

    @staticmethod
    def _zeros(state: TokenState, like: torch.Tensor) -> torch.Tensor:
        key = (tuple(like.shape), like.dtype, like.device)
        if key not in state.zeros:
            state.zeros[key] = torch.zeros_like(like)
        return state.zeros[key]


def grid_of_call(model: ModelContext, args: tuple, kwargs: dict) -> Grid | None:
    """The token grid of a transformer call, as the family's adapter reads it (`ModelSpec.tokens`)."""
    hidden = args[0] if args else kwargs.get("hidden_states")
    return model.spec.tokens.grid(model.transformer, hidden, kwargs)


def positions_of_call(model: ModelContext, kwargs: dict) -> torch.Tensor | None:
    """Per-token positions of a transformer call, where the family's calls carry them (`ModelSpec.tokens`)."""
    return model.spec.tokens.positions(kwargs)


def read_token_layout(call: CallInfo, model: ModelContext, args: tuple, kwargs: dict, *, keep_grid: bool) -> None:
    """Write the call's token layout (grid, positions, text tokens) into its record; `keep_grid`: a grid already read
    (by CFG reuse, on the whole batch) stays."""
    record = call.record
    if not (keep_grid and record.grid_read):
        record.grid, record.grid_read = grid_of_call(model, args, kwargs), True
    record.positions = positions_of_call(model, kwargs)
    record.text_tokens = text_tokens(kwargs)


@register_policy("toca", ToCa, level="token", speedup_by="schedule", in_default_eval=True)
class ToCaPolicy(Policy):
    """Full steps every `interval` steps; partial token steps in between."""

    uses_submodules = True
    intercepts_calls = True  # only to read the token grid from the call's arguments

    def __init__(self, config: ToCa, model: ModelContext) -> None:
        super().__init__(config, model)
        self.mechanism = TokenMechanism(
            model,
            self_attention=config.self_attention,
            depth_weight=config.depth_weight,
            step_weight=config.step_weight,
            cross_attention_scale=config.cross_attention_scale,
            age_weight=config.age_weight,
            age_scale=float(config.interval),
            spread=config.spread,
        )
        self._fractions: dict[int, float] = {}
        self.check_ceiling_at_apply()
        if not any(kind == "cross" for kind in self.mechanism.kind.values()):
            logger.info(
                "dit_cache toca: %s has no cross-attention; partial steps recompute tokens through the MLPs only",
                type(model.transformer).__name__,
            )

    def fraction(self, num_steps: int) -> float:
        config = self.config
        if config.speedup is None:
            return config.fraction if config.fraction is not None else DEFAULT_FRACTION
        if num_steps not in self._fractions:
            self._fractions[num_steps] = self._fraction_for_speedup(num_steps)
        return self._fractions[num_steps]

    def planned(self, fraction: float, num_steps: int) -> float:
        """The compute fraction of a call of `num_steps` steps at base share `fraction` (host arithmetic only;
        fraction >= 1 computes every step in full)."""
        if fraction >= 1.0:
            return 1.0
        total = sum(slot.units for slot in self.model.slots)
        full = sum(1 for s in range(num_steps) if s % self.config.interval == 0)
        partial = sum(
            self.mechanism.units(fraction, s, num_steps) for s in range(num_steps) if s % self.config.interval
        )
        return (full * total + partial) / (num_steps * total)

    def _fraction_for_speedup(self, num_steps: int) -> float:
        """The base share whose planned compute fraction is closest to 1 / speedup: bisected over the partial steps'
        range, or 1 (every step in full) when that is closer; out of reach raises."""
        config = self.config
        target = 1.0 / config.speedup
        low, high = self.planned(1e-9, num_steps), self.planned(1.0 - 1e-9, num_steps)
        lo, hi = 1e-9, 1.0 - 1e-9
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if self.planned(mid, num_steps) > target else (mid, hi)
        fraction, share = nearest({1.0: 1.0, self.planned(lo, num_steps): lo}, target)
        check_reached(
            "toca", config.speedup, fraction, num_steps,
            f"compute fractions {low:.3f}-{high:.3f} (partial steps at interval={config.interval}) or 1 (all in full)",
            f"{'Raise' if fraction > target else 'Lower'} interval, or ask for a target in that range",
        )  # fmt: skip
        return share

    def check_ceiling_at_apply(self) -> None:
        config = self.config
        if config.speedup is None or config.speedup == 1:
            return
        check_ceiling(
            "toca", config.speedup, floor_over_step_counts(lambda n: self.planned(1e-9, n)),
            f"one full step in every {config.interval} and "
            f"{'computed' if config.self_attention == 'compute' else 'reused'} self-attention",
            "Raise interval or ask for less", where=f"with interval={config.interval}",
        )  # fmt: skip

    def new_state(self) -> TokenState:
        return TokenState()

    def intercept_call(self, call: CallInfo, args: tuple, kwargs: dict, forward: Callable, locate: Locate) -> Any:
        read_token_layout(call, self.model, args, kwargs, keep_grid=False)
        return forward(*args, **kwargs)

    def decide(self, call: CallInfo, state: TokenState, values: list[float]) -> str:
        fraction = self.fraction(call.num_steps)
        if fraction >= 1.0 or state.last_full is None or call.step - state.last_full >= self.config.interval:
            state.last_full = call.step
            return COMPUTE
        call.record.indicator = fraction
        return PARTIAL

    def run_submodule(
        self,
        call: CallInfo,
        state: TokenState,
        slot: BlockSlot,
        name: str,
        forward: Callable,
        args: tuple,
        kwargs: dict,
    ) -> Any:
        fraction = None if call.record.decision == COMPUTE else self.fraction(call.num_steps)
        return self.mechanism.run(call, state, slot, name, forward, args, kwargs, fraction)
