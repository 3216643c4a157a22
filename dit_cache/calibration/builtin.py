"""Built-in profiles: the published calibration of real models (TeaCache polynomials, MagCache ratios, a LeMiCa
schedule), shipped so that `apply(pipe, "teacache")` or `"magcache"` on a known model needs no calibration.

Each entry names the diffusers class and the config values that identify the published checkpoint. Models with the
same architecture (FLUX.1-dev and Kontext, Wan I2V 480p and 720p) match the first entry; pick another by name,
e.g. `profile="wan2.1-i2v-14b-720p"`.
"""

from __future__ import annotations

import functools
import json
from importlib import resources

import torch

from .profile import Profile, ProfileError

# name -> (class, identifying config values)
MODELS: dict[str, tuple[str, dict]] = {
    "flux.1-dev": ("FluxTransformer2DModel", {"num_layers": 19, "num_single_layers": 38, "guidance_embeds": True}),
    "flux.1-kontext-dev": (
        "FluxTransformer2DModel",
        {"num_layers": 19, "num_single_layers": 38, "guidance_embeds": True},
    ),
    "wan2.1-t2v-1.3b": (
        "WanTransformer3DModel",
        {"num_layers": 30, "num_attention_heads": 12, "in_channels": 16, "image_dim": None},
    ),
    "wan2.1-t2v-14b": (
        "WanTransformer3DModel",
        {"num_layers": 40, "num_attention_heads": 40, "in_channels": 16, "image_dim": None},
    ),
    "wan2.1-i2v-14b-480p": ("WanTransformer3DModel", {"num_layers": 40, "num_attention_heads": 40, "in_channels": 36}),
    "wan2.1-i2v-14b-720p": ("WanTransformer3DModel", {"num_layers": 40, "num_attention_heads": 40, "in_channels": 36}),
    "hunyuanvideo": (
        "HunyuanVideoTransformer3DModel",
        {"num_layers": 20, "num_single_layers": 40, "num_attention_heads": 24},
    ),
    "cogvideox-2b": ("CogVideoXTransformer3DModel", {"num_layers": 30, "num_attention_heads": 30}),
    "cogvideox-5b": (
        "CogVideoXTransformer3DModel",
        {"num_layers": 42, "num_attention_heads": 48, "in_channels": 16, "patch_size_t": None},
    ),
    "cogvideox-5b-i2v": (
        "CogVideoXTransformer3DModel",
        {"num_layers": 42, "num_attention_heads": 48, "in_channels": 32, "patch_size_t": None},
    ),
    "cogvideox1.5-5b": (
        "CogVideoXTransformer3DModel",
        {"num_layers": 42, "num_attention_heads": 48, "in_channels": 16, "patch_size_t": 2},
    ),
    "cogvideox1.5-5b-i2v": (
        "CogVideoXTransformer3DModel",
        {"num_layers": 42, "num_attention_heads": 48, "in_channels": 32, "patch_size_t": 2},
    ),
    "ltx-video": ("LTXVideoTransformer3DModel", {"num_layers": 28, "num_attention_heads": 32}),
    "qwen-image": ("QwenImageTransformer2DModel", {"num_layers": 60}),
    "qwen-image-edit": ("QwenImageTransformer2DModel", {"num_layers": 60}),
}

# Published names whose data belongs to an entry above under another name.
_ALIASES = {"hunyuanvideo-720p": "hunyuanvideo"}
# Wan's adapter reads the projected timestep embedding (e0), so it uses the polynomials fitted on e0.
_TEACACHE_VARIANT = {name: f"{name}@ret_steps" for name in MODELS if name.startswith("wan2.1")}
_MAGCACHE_FALLBACK_DEFAULTS = {"threshold": 0.12, "max_skip": 2, "retention": 0.2}


@functools.lru_cache(maxsize=1)
def _published() -> dict:
    text = resources.files(__package__).joinpath("data/published_calibration.json").read_text()
    return json.loads(text)


def _warmup_fraction(note: str | None, steps: int = 50) -> float:
    """TeaCache's forced first steps from the published note ('first 5 steps ...', 'first 10% of steps')."""
    if not note:
        return 0.0
    words = note.replace("%", " % ").split()
    if "first" in words and len(words) > words.index("first") + 1:
        count = words[words.index("first") + 1]
        if count.replace(".", "").isdigit():
            value = float(count)
            return value / 100 if "%" in words else value / steps
    return 0.0


def _teacache_entry(name: str) -> dict | None:
    models = _published()["teacache"]["models"]
    key = _TEACACHE_VARIANT.get(name, name)
    entry = models.get(key)
    if entry is None:
        entry = next((m for m in models.values() if name in m.get("also_for", [])), None)
    if entry is None:
        return None
    base = models.get(name, entry)
    threshold = base.get("default_threshold")
    if threshold is None and base.get("threshold_range"):
        threshold = base["threshold_range"][0]
    return {
        "coefficients": entry["coefficients"],
        "indicator": entry["indicator"],
        "threshold": threshold,
        "warmup": _warmup_fraction(entry.get("always_compute")),
        "threshold_speedups": base.get("threshold_speedups"),
        "source": _published()["teacache"]["source"],
    }


def _magcache_branches(name: str) -> tuple[dict, dict] | None:
    published = _published()["magcache"]["models"]
    entry = published.get(name) or published.get(name + "-720p")
    if entry is None:
        return None
    steps = entry["calibrated_steps"]
    interleaved = entry["layout"].startswith("interleaved")
    pad = len(entry["leading_pad"]) or (2 if interleaved else 1)
    full = [1.0] * pad + list(entry["ratios"])
    if interleaved:
        branches = {"cond": full[0::2], "uncond": full[1::2]}
    else:
        branches = {"cond": full}
    for ratios in branches.values():
        if len(ratios) != steps:
            raise ProfileError(f"published MagCache ratios of {name} do not cover {steps} steps")
        ratios[0] = 1.0
    defaults = dict(_MAGCACHE_FALLBACK_DEFAULTS)
    published_defaults = entry.get("defaults", {})
    defaults.update(
        {
            k: published_defaults[src]
            for k, src in (("threshold", "threshold"), ("max_skip", "max_skip_steps"), ("retention", "retention_ratio"))
            if src in published_defaults
        }
    )
    defaults["source"] = _published()["magcache"]["source"]
    return branches, defaults


def builtin_names() -> list[str]:
    return list(MODELS)


@functools.cache
def _builtin(name: str) -> Profile:
    class_name, match = MODELS[name]
    profile = Profile(
        fingerprint={"class": class_name, "name": name, "match": match},
        grid_kind="position",
        source=f"builtin:{name}",
    )
    teacache = _teacache_entry(name)
    if teacache:
        profile.policies["teacache"] = teacache
    mag = _magcache_branches(name)
    if mag:
        branches, defaults = mag
        for branch, ratios in branches.items():
            profile.branches.setdefault(branch, {})["mag_ratio"] = ratios
        profile.policies["magcache"] = defaults
        profile.sampler["steps"] = len(next(iter(branches.values())))
    lemica = _published()["lemica"]["models"].get(name)
    if lemica:
        profile.policies["lemica"] = {
            "num_steps": lemica["num_inference_steps"],
            "schedules": {"17": lemica["budget_17_compute_steps"]},
            "source": _published()["lemica"]["source"],
        }
    return profile


def builtin_profile(name: str) -> Profile:
    """The built-in profile `name` (see `builtin_names()`)."""
    name = _ALIASES.get(name, name)
    if name not in MODELS:
        raise ProfileError(f"unknown built-in profile {name!r}; built-in profiles: {', '.join(MODELS)}")
    return _builtin(name)


def find_builtin(transformer: torch.nn.Module, policy: str) -> Profile | None:
    """The first built-in profile that matches `transformer` and has data for `policy`, or None."""
    for name in MODELS:
        profile = _builtin(name)
        if policy in profile.policies and profile.matches(transformer):
            return profile
    return None
