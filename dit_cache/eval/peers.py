"""The peers: diffusers' built-in caches and cache-dit, each switched on with one knob that the evaluation tunes to
a target compute fraction (measured by counting the attention/MLP work that actually ran)."""

from __future__ import annotations

import importlib.util
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..calibration import keys
from ..schedulers.budget import search_threshold


@dataclass
class PeerContext:
    pipe: Any
    num_steps: int
    profile: Any  # a dit_cache profile of this model (MagCache ratios for diffusers' MagCache when no calibration)
    target: float
    calibration: list = field(default_factory=list)  # (prompt, seed) jobs a peer calibrates on (not scored ones)
    generate: Callable[[str, int], Any] | None = None  # one pipeline call of the evaluation's settings


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
    from ..compat import cache_mixin

    for name, module in pipe.components.items():
        if not name.startswith("transformer") or module is None:
            continue
        if getattr(module, "is_cache_enabled", False):
            module.disable_cache()
        elif getattr(module, "_cache_config", None) is not None:  # hooks placed on a model without CacheMixin
            cache_mixin().disable_cache(module)  # it reads only `_cache_config` and the hook registry


def _transformer_enable(ctx: PeerContext, config) -> None:
    """diffusers' cache `config` on every transformer: through `enable_cache`, or on a model without diffusers'
    CacheMixin (PixArt) through the same `apply_*` hook function that `enable_cache` dispatches to."""
    for name, module in ctx.pipe.components.items():
        if not name.startswith("transformer") or module is None:
            continue
        if hasattr(module, "enable_cache"):
            module.enable_cache(config)
            continue
        from diffusers import hooks

        appliers = {
            "FasterCacheConfig": hooks.apply_faster_cache, "FirstBlockCacheConfig": hooks.apply_first_block_cache,
            "MagCacheConfig": hooks.apply_mag_cache, "TaylorSeerCacheConfig": hooks.apply_taylorseer_cache,
            "PyramidAttentionBroadcastConfig": hooks.apply_pyramid_attention_broadcast,
        }  # fmt: skip
        apply = appliers.get(type(config).__name__)
        if apply is None:
            raise TypeError(f"{type(module).__name__} has no enable_cache and {type(config).__name__} no hook function")
        apply(module, config)
        module._cache_config = config  # what CacheMixin.disable_cache reads to take the hooks off


def _fbcache(ctx: PeerContext, threshold: float) -> None:
    from diffusers.hooks import FirstBlockCacheConfig

    _transformer_enable(ctx, FirstBlockCacheConfig(threshold=threshold))


_MAG_RATIOS: dict[tuple, list[float]] = {}  # (pipeline, steps, calibration jobs) -> ratios of MagCache's own mode


def _magcache_ratios(ctx: PeerContext) -> list[float]:
    """MagCache's ratios: recorded by its own calibration mode on the calibration jobs (the mean over jobs and
    branches of the lists it prints at the end of every run), else the dit_cache profile's (cond branch)."""
    if not ctx.calibration or ctx.generate is None:
        if ctx.profile is None or not ctx.profile.has(keys.MAG_RATIO):
            raise ValueError("diffusers' MagCache needs this model's magnitude ratios: pass a dit_cache profile")
        return ctx.profile.per_step("cond", keys.MAG_RATIO, ctx.num_steps).tolist()
    key = (id(ctx.pipe), ctx.num_steps, tuple(map(tuple, ctx.calibration)))
    if key not in _MAG_RATIOS:
        _MAG_RATIOS[key] = _calibrate_magcache(ctx)
    return _MAG_RATIOS[key]


def _calibrate_magcache(ctx: PeerContext) -> list[float]:
    import contextlib
    import io

    import numpy as np
    from diffusers.hooks import MagCacheConfig

    printed = io.StringIO()
    _transformer_enable(ctx, MagCacheConfig(calibrate=True, num_inference_steps=ctx.num_steps))
    try:
        with contextlib.redirect_stdout(printed):  # calibration mode prints its ratios at the end of each run
            for prompt, seed in ctx.calibration:
                ctx.generate(prompt, seed)
    finally:
        _transformer_disable(ctx.pipe)
    lists = [
        [float(v) for v in re.findall(r"[-+0-9.eE]+", line)]
        for line in printed.getvalue().splitlines()
        if line.startswith("[") and line.rstrip().endswith("]")
    ]
    lists = [values for values in lists if len(values) == ctx.num_steps]
    if not lists:
        raise ValueError(f"diffusers' MagCache calibration printed no ratios of {ctx.num_steps} steps")
    return np.mean(np.array(lists), axis=0).tolist()


def _magcache(ctx: PeerContext, threshold: float) -> None:
    from diffusers.hooks import MagCacheConfig

    ratios = _magcache_ratios(ctx)
    config = MagCacheConfig(
        threshold=threshold,
        max_skip_steps=max(3, math.ceil(2 * ctx.target)),
        retention_ratio=0.2,
        num_inference_steps=ctx.num_steps,
        mag_ratios=ratios,
    )
    _transformer_enable(ctx, config)


def _taylorseer(ctx: PeerContext, knob: tuple[int, ...], work: bool = True) -> None:
    from diffusers.hooks import TaylorSeerCacheConfig

    interval, warmup, *order = knob  # (interval, warmup[, max_order]); results written before the order was a knob
    config = TaylorSeerCacheConfig(
        cache_interval=interval, disable_cache_before_step=warmup, max_order=order[0] if order else 1,
        taylor_factors_dtype=torch_dtype(ctx.pipe.transformer),
    )  # fmt: skip
    if work:  # the paper's TaylorSeer: every attention and MLP output forecast (diffusers' default: attention only)
        config.cache_identifiers = _work_identifiers(ctx.pipe.transformer)
    else:
        config.cache_identifiers = _taylorseer_identifiers(ctx.pipe.transformer)
    _transformer_enable(ctx, config)


def torch_dtype(module):
    """The module's parameter dtype: Taylor factors kept at the model's precision (diffusers' default is bfloat16,
    which rounds a float32 model's forecasts)."""
    return next(module.parameters()).dtype


def _work_identifiers(transformer) -> list[str]:
    """The exact names of the attention and MLP submodules dit_cache forecasts (and WorkCounter counts)."""
    from ..adapters import find_spec
    from ..engine import build_slots

    names = {id(m): n for n, m in transformer.named_modules()}
    units = [module for slot in build_slots(transformer, find_spec(transformer)) for module in slot.work.values()]
    return [re.escape(names[id(m)]) for m in units if id(m) in names]


def _taylorseer_identifiers(transformer) -> list[str] | None:
    """diffusers' default patterns ('^blocks.*attn', ...) are `re.fullmatch`ed, so they match no module of a model
    whose attentions are numbered (Wan's `blocks.0.attn1`); then the same patterns with the number allowed, which
    keeps their intent (the attention modules of the blocks). None (the defaults) where they match something."""
    from ..compat import taylorseer_default_identifiers

    defaults = taylorseer_default_identifiers()
    names = [name for name, _ in transformer.named_modules()]
    if any(re.fullmatch(p, n) for p in defaults for n in names):
        return None
    return [p + r"\d*" for p in defaults]


def _taylorseer_candidates(ctx: PeerContext) -> list[tuple[int, int, int]]:
    """(interval, warmup, order): orders 1 and 2, the warm-ups whose predicted fraction is closest to the target
    for every interval that can reach it; diffusers computes steps < warmup and every interval-th after it."""
    n, target = ctx.num_steps, 1.0 / ctx.target

    def fraction(k, d):
        return sum(1 for s in range(n) if s < d or (s - d - 1) % k == 0) / n

    options = [(k, d) for k in range(2, 9) for d in range(1, n // 2)]
    options.sort(key=lambda kd: (abs(fraction(*kd) - target), kd[1]))
    return [(k, d, order) for k, d in options[:3] for order in (1, 2)]


def _pab(ctx: PeerContext, skip: int) -> None:
    from diffusers.hooks import PyramidAttentionBroadcastConfig

    pipe = ctx.pipe
    config = PyramidAttentionBroadcastConfig(
        spatial_attention_block_skip_range=skip,
        spatial_attention_timestep_skip_range=(-1, 1001),
        current_timestep_callback=lambda: pipe.current_timestep,
    )
    _transformer_enable(ctx, config)


def _fastercache(ctx: PeerContext, knob: tuple[int, int]) -> None:
    """FasterCache: spatial attention reused over `attention` steps and the unconditional branch recomputed every
    `uncond` steps (its CFG cache, which diffusers applies to a batch that concatenates both branches)."""
    from diffusers.hooks import FasterCacheConfig

    attention, uncond = knob
    pipe = ctx.pipe
    config = FasterCacheConfig(
        spatial_attention_block_skip_range=attention,
        spatial_attention_timestep_skip_range=(-1, 1001),
        unconditional_batch_skip_range=uncond,
        unconditional_batch_timestep_skip_range=(-1, 1001),
        current_timestep_callback=lambda: pipe.current_timestep,
        attention_weight_callback=lambda _: 0.5,
        tensor_format="BCFHW" if "3D" in type(pipe.transformer).__name__ else "BCHW",  # video (Wan) or image
    )
    _transformer_enable(ctx, config)


def _cachedit(ctx: PeerContext, threshold: float, taylorseer: bool, back: int = 0) -> None:
    os.environ.setdefault("CACHE_DIT_LOG_LEVEL", "warning")  # it logs every enable at info level
    import cache_dit

    config = cache_dit.DBCacheConfig(
        Fn_compute_blocks=1,
        Bn_compute_blocks=back,
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
            "diffusers-taylorseer", "diffusers", _taylorseer, _transformer_disable, "(interval, warmup, order)",
            _taylorseer_candidates,
        ),
        Peer(
            "diffusers-pab", "diffusers", _pab, _transformer_disable, "attention skip range",
            lambda ctx: [2, 3, 4, 6, 8],
        ),
        Peer(
            "diffusers-taylorseer-attention", "diffusers", lambda c, k: _taylorseer(c, k, work=False),
            _transformer_disable, "(interval, warmup, order)", _taylorseer_candidates,
        ),
        Peer(
            "diffusers-fastercache", "diffusers", _fastercache, _transformer_disable, "(attention skip, uncond skip)",
            lambda ctx: [(a, u) for a in (2, 3, 4) for u in (2, 3, 5)],
        ),
        Peer("cachedit-dbcache", "cache-dit", lambda c, t: _cachedit(c, t, False), _cachedit_off, "threshold"),
        Peer("cachedit-dbcache-b1", "cache-dit", lambda c, t: _cachedit(c, t, False, 1), _cachedit_off, "threshold"),
        Peer(
            "cachedit-dbcache-taylorseer", "cache-dit", lambda c, t: _cachedit(c, t, True), _cachedit_off, "threshold"
        ),
        Peer(
            "cachedit-dbcache-b1-taylorseer", "cache-dit", lambda c, t: _cachedit(c, t, True, 1), _cachedit_off,
            "threshold",
        ),
    )
}  # fmt: skip


def peer(name: str) -> Peer:
    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}; peers: {', '.join(PEERS)}")
    return PEERS[name]
