"""The peers: diffusers' built-in caches and cache-dit, each switched on with one knob that the evaluation tunes to
a target compute fraction (measured by counting the attention/MLP work that actually ran)."""

from __future__ import annotations

import importlib.util
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..schedulers.budget import search_threshold


@dataclass
class PeerContext:
    pipe: Any
    num_steps: int
    profile: Any  # a dit_cache profile of this model (MagCache ratios for diffusers' MagCache)
    target: float


@dataclass(frozen=True)
class Peer:
    name: str
    package: str
    enable: Callable[[PeerContext, Any], None]
    disable: Callable[[Any], None]
    knob: str
    candidates: Callable[[PeerContext], list] | None = None  # discrete knob values; None: a continuous threshold

    def status(self) -> tuple[bool, str]:
        module = "cache_dit" if self.package == "cache-dit" else "diffusers"
        if importlib.util.find_spec(module) is None:
            return False, f"{self.package} is not installed (pip install {self.package})"
        return True, ""

    def tune(self, ctx: PeerContext, measure: Callable[[Any], float]) -> Any:
        """The knob value whose measured compute fraction is closest to 1 / target."""
        target = 1.0 / ctx.target
        if self.candidates is None:
            return search_threshold(measure, target, iterations=10)
        scored = [(abs(measure(value) - target), i, value) for i, value in enumerate(self.candidates(ctx))]
        return min(scored)[2]


def _transformer_disable(pipe) -> None:
    for name, module in pipe.components.items():
        if name.startswith("transformer") and module is not None and getattr(module, "is_cache_enabled", False):
            module.disable_cache()


def _transformer_enable(ctx: PeerContext, config) -> None:
    for name, module in ctx.pipe.components.items():
        if name.startswith("transformer") and module is not None:
            module.enable_cache(config)


def _fbcache(ctx: PeerContext, threshold: float) -> None:
    from diffusers.hooks import FirstBlockCacheConfig

    _transformer_enable(ctx, FirstBlockCacheConfig(threshold=threshold))


def _magcache(ctx: PeerContext, threshold: float) -> None:
    from diffusers.hooks import MagCacheConfig

    if ctx.profile is None or not ctx.profile.has("mag_ratio"):
        raise ValueError("diffusers' MagCache needs this model's magnitude ratios: pass a dit_cache profile")
    ratios = ctx.profile.per_step("cond", "mag_ratio", ctx.num_steps).tolist()
    config = MagCacheConfig(
        threshold=threshold,
        max_skip_steps=max(3, math.ceil(2 * ctx.target)),
        retention_ratio=0.2,
        num_inference_steps=ctx.num_steps,
        mag_ratios=ratios,
    )
    _transformer_enable(ctx, config)


def _taylorseer(ctx: PeerContext, knob: tuple[int, int]) -> None:
    from diffusers.hooks import TaylorSeerCacheConfig

    interval, warmup = knob
    config = TaylorSeerCacheConfig(cache_interval=interval, disable_cache_before_step=warmup, max_order=1)
    config.cache_identifiers = _taylorseer_identifiers(ctx.pipe.transformer)
    _transformer_enable(ctx, config)


def _taylorseer_identifiers(transformer) -> list[str] | None:
    """diffusers' default patterns ('^blocks.*attn', ...) are `re.fullmatch`ed, so they match no module of a model
    whose attentions are numbered (Wan's `blocks.0.attn1`); then the same patterns with the number allowed, which
    keeps their intent (the attention modules of the blocks). None (the defaults) where they match something."""
    from diffusers.hooks import taylorseer_cache

    defaults = taylorseer_cache._TRANSFORMER_BLOCK_IDENTIFIERS
    names = [name for name, _ in transformer.named_modules()]
    if any(re.fullmatch(p, n) for p in defaults for n in names):
        return None
    return [p + r"\d*" for p in defaults]


def _taylorseer_candidates(ctx: PeerContext) -> list[tuple[int, int]]:
    # predicted fraction (warmup + ceil((n - warmup) / interval)) / n; measure the few closest
    n, target = ctx.num_steps, 1.0 / ctx.target
    options = [(k, d) for k in range(2, 7) for d in range(1, n)]
    options.sort(key=lambda kd: abs((kd[1] + math.ceil((n - kd[1]) / kd[0])) / n - target))
    return options[:8]


def _pab(ctx: PeerContext, skip: int) -> None:
    from diffusers.hooks import PyramidAttentionBroadcastConfig

    pipe = ctx.pipe
    config = PyramidAttentionBroadcastConfig(
        spatial_attention_block_skip_range=skip,
        spatial_attention_timestep_skip_range=(-1, 1001),
        current_timestep_callback=lambda: pipe.current_timestep,
    )
    _transformer_enable(ctx, config)


def _cachedit(ctx: PeerContext, threshold: float, taylorseer: bool) -> None:
    os.environ.setdefault("CACHE_DIT_LOG_LEVEL", "warning")  # it logs every enable at info level
    import cache_dit

    config = cache_dit.DBCacheConfig(
        Fn_compute_blocks=1,
        Bn_compute_blocks=0,
        residual_diff_threshold=threshold,
        max_warmup_steps=2,
        num_inference_steps=ctx.num_steps,
    )
    calibrator = cache_dit.TaylorSeerCalibratorConfig(taylorseer_order=1) if taylorseer else None
    cache_dit.enable_cache(ctx.pipe, cache_config=config, calibrator_config=calibrator)


def _cachedit_off(pipe) -> None:
    import cache_dit

    cache_dit.disable_cache(pipe)


PEERS: dict[str, Peer] = {
    p.name: p
    for p in (
        Peer("diffusers-fbcache", "diffusers", _fbcache, _transformer_disable, "threshold"),
        Peer("diffusers-magcache", "diffusers", _magcache, _transformer_disable, "threshold"),
        Peer(
            "diffusers-taylorseer", "diffusers", _taylorseer, _transformer_disable, "(interval, warmup)",
            _taylorseer_candidates,
        ),
        Peer(
            "diffusers-pab", "diffusers", _pab, _transformer_disable, "attention skip range",
            lambda ctx: [2, 3, 4, 6, 8],
        ),
        Peer("cachedit-dbcache", "cache-dit", lambda c, t: _cachedit(c, t, False), _cachedit_off, "threshold"),
        Peer(
            "cachedit-dbcache-taylorseer", "cache-dit", lambda c, t: _cachedit(c, t, True), _cachedit_off, "threshold"
        ),
    )
}  # fmt: skip


def peer(name: str) -> Peer:
    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}; peers: {', '.join(PEERS)}")
    return PEERS[name]
