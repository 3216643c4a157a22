"""Built-in profiles: the published calibration of real models (TeaCache polynomials, MagCache ratios, a LeMiCa
schedule), shipped so that `apply(pipe, "teacache")` or `"magcache"` on a known model needs no calibration.

Each entry names the diffusers class and the config values that identify the published checkpoint, and which
published entry each policy's data comes from. Models with the same architecture (FLUX.1-dev and Kontext, Wan I2V
480p and 720p, HunyuanVideo 720p and 544p) match the first entry; pick another by name, e.g.
`profile="wan2.1-i2v-14b-720p"`. Published calibrations that fit no supported class, or whose indicator is not the
one our adapter reads, are listed in `UNMATCHED` with the reason.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import weakref
from dataclasses import dataclass, field
from importlib import resources

import torch

from . import keys
from .profile import Profile, ProfileError
from .sections import LeMiCaSection, MagCacheDefaults, TeaCacheFit

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Builtin:
    """One built-in profile: the class and config values of the published checkpoint (`checkpoint`), and the key of
    its data in each block of published_calibration.json (None: nothing published for that policy)."""

    class_name: str
    match: dict
    checkpoint: str
    teacache: str | None = None
    magcache: str | None = None
    lemica: str | None = None
    # `_name_or_path` patterns of checkpoints with the same config that are other models (Wan 2.2 A14B's experts)
    not_names: tuple[str, ...] = field(default=())


_FLUX_DEV = {"num_layers": 19, "num_single_layers": 38, "guidance_embeds": True, "in_channels": 64}
# Wan 2.2 T2V-A14B's experts have exactly Wan 2.1 T2V-14B's transformer config: told apart by the pipeline (two
# experts, see `note_experts`) or by the checkpoint's name.
_WAN22 = (r"wan[-_ ]?2[._]2",)
_WAN_T2V = {"in_channels": 16, "image_dim": None}
# Wan 2.1 I2V has a CLIP image branch (image_dim 1280); Wan 2.2 I2V-A14B (also in_channels 36) has none; FLF2V-14B
# adds a position embedding of the two frames (pos_embed_seq_len 514).
_WAN_I2V = {
    "num_layers": 40,
    "num_attention_heads": 40,
    "in_channels": 36,
    "image_dim": 1280,
    "pos_embed_seq_len": None,
}
# HunyuanVideo-I2V has the same layers with image_condition_type "latent_concat" (in_channels 33) or "token_replace"
_HUNYUAN = {"num_layers": 20, "num_single_layers": 40, "num_attention_heads": 24, "in_channels": 16,
            "guidance_embeds": True, "image_condition_type": None}  # fmt: skip
_COG5B = {"num_layers": 42, "num_attention_heads": 48}
# Qwen-Image-Edit-2511 (zero_cond_t) and Qwen-Image-Layered (additional t cond, layer-3D RoPE) are other models
_QWEN = {"num_layers": 60, "zero_cond_t": False, "use_additional_t_cond": False, "use_layer3d_rope": False}

BUILTINS: dict[str, Builtin] = {
    "flux.1-dev": Builtin(
        "FluxTransformer2DModel", _FLUX_DEV, "black-forest-labs/FLUX.1-dev", teacache="flux.1-dev",
        magcache="flux.1-dev",
    ),
    "flux.1-kontext-dev": Builtin(
        "FluxTransformer2DModel", _FLUX_DEV, "black-forest-labs/FLUX.1-Kontext-dev", magcache="flux.1-kontext-dev"
    ),
    # Wan's adapter reads the projected timestep embedding (e0): the polynomials fitted on e0 (`@ret_steps`)
    "wan2.1-t2v-1.3b": Builtin(
        "WanTransformer3DModel", {"num_layers": 30, "num_attention_heads": 12, **_WAN_T2V},
        "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", teacache="wan2.1-t2v-1.3b@ret_steps", magcache="wan2.1-t2v-1.3b",
        lemica="wan2.1-t2v-1.3b", not_names=_WAN22,
    ),
    "wan2.1-t2v-14b": Builtin(
        "WanTransformer3DModel", {"num_layers": 40, "num_attention_heads": 40, **_WAN_T2V},
        "Wan-AI/Wan2.1-T2V-14B-Diffusers", teacache="wan2.1-t2v-14b@ret_steps", magcache="wan2.1-t2v-14b",
        not_names=_WAN22,
    ),
    "wan2.1-i2v-14b-480p": Builtin(
        "WanTransformer3DModel", _WAN_I2V, "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers",
        teacache="wan2.1-i2v-14b-480p@ret_steps", magcache="wan2.1-i2v-14b-480p", not_names=_WAN22,
    ),
    "wan2.1-i2v-14b-720p": Builtin(
        "WanTransformer3DModel", _WAN_I2V, "Wan-AI/Wan2.1-I2V-14B-720P-Diffusers",
        teacache="wan2.1-i2v-14b-720p@ret_steps", magcache="wan2.1-i2v-14b-720p", not_names=_WAN22,
    ),
    "hunyuanvideo": Builtin(
        "HunyuanVideoTransformer3DModel", _HUNYUAN, "hunyuanvideo-community/HunyuanVideo (720p)",
        teacache="hunyuanvideo", magcache="hunyuanvideo-720p",
    ),
    "hunyuanvideo-544p": Builtin(
        "HunyuanVideoTransformer3DModel", _HUNYUAN, "hunyuanvideo-community/HunyuanVideo (544p)",
        teacache="hunyuanvideo", magcache="hunyuanvideo-544p",
    ),
    "cogvideox-2b": Builtin(
        "CogVideoXTransformer3DModel", {"num_layers": 30, "num_attention_heads": 30}, "THUDM/CogVideoX-2b",
        teacache="cogvideox-2b",
    ),
    "cogvideox-5b": Builtin(
        "CogVideoXTransformer3DModel", {**_COG5B, "in_channels": 16, "patch_size_t": None}, "THUDM/CogVideoX-5b",
        teacache="cogvideox-5b",
    ),
    "cogvideox-5b-i2v": Builtin(
        "CogVideoXTransformer3DModel", {**_COG5B, "in_channels": 32, "patch_size_t": None}, "THUDM/CogVideoX-5b-I2V",
        teacache="cogvideox-5b",
    ),
    "cogvideox1.5-5b": Builtin(
        "CogVideoXTransformer3DModel", {**_COG5B, "in_channels": 16, "patch_size_t": 2}, "THUDM/CogVideoX1.5-5B",
        teacache="cogvideox1.5-5b",
    ),
    "cogvideox1.5-5b-i2v": Builtin(
        "CogVideoXTransformer3DModel", {**_COG5B, "in_channels": 32, "patch_size_t": 2}, "THUDM/CogVideoX1.5-5B-I2V",
        teacache="cogvideox1.5-5b-i2v",
    ),
    # TeaCache4ConsisID uses CogVideoX-5B's polynomial on the same indicator (the time embedding the blocks get)
    "consisid": Builtin(
        "ConsisIDTransformer3DModel", {**_COG5B, "in_channels": 32}, "BestWishYsh/ConsisID-preview",
        teacache="cogvideox-5b",
    ),
    "ltx-video": Builtin(
        "LTXVideoTransformer3DModel", {"num_layers": 28, "num_attention_heads": 32}, "Lightricks/LTX-Video",
        teacache="ltx-video",
    ),
    # TeaCache4Mochi reads transformer_blocks[0].norm1(hidden_states, temb)[0], the mochi adapter's indicator
    "mochi-1-preview": Builtin(
        "MochiTransformer3DModel", {"num_layers": 48, "num_attention_heads": 24, "in_channels": 12},
        "genmo/mochi-1-preview", teacache="mochi",
    ),
    "qwen-image": Builtin("QwenImageTransformer2DModel", _QWEN, "Qwen/Qwen-Image", magcache="qwen-image"),
    "qwen-image-edit": Builtin("QwenImageTransformer2DModel", _QWEN, "Qwen/Qwen-Image-Edit", magcache="qwen-image-edit"),
}  # fmt: skip

# Published names whose data belongs to an entry above under another name.
_ALIASES = {"hunyuanvideo-720p": "hunyuanvideo", "mochi": "mochi-1-preview"}

# Published calibrations shipped as no built-in profile: published name -> (policy, class, why).
UNMATCHED: dict[str, tuple[str, str, str]] = {
    "hidream-i1": (
        "teacache",
        "HiDreamImageTransformer2DModel",
        "TeaCache4HiDream-I1 fitted its polynomial on the relative L1 change of t_embedder(timestep) alone; the "
        "hidream_image adapter's indicator is the blocks' `temb` = t_embedder(timestep) + p_embedder(pooled text), "
        "whose change is divided by a prompt-dependent magnitude, so the polynomial would be fed another quantity",
    ),
    "lumina-next": (
        "teacache",
        "LuminaNextDiT2DModel",
        "no adapter: LuminaPipeline (Lumina-Next-SFT) has no tiny entry to test one with, and it passes the timestep "
        "as 1 - t / 1000 (as Lumina 2 does), so its adapter needs a timestep map to locate the step",
    ),
}

# Transformers that run only part of the steps of their pipeline (Wan 2.2 A14B's two experts), as noted by `apply`.
# Every published calibration is of a single model running all steps, so no built-in profile matches them.
_EXPERTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def note_experts(transformers: list[torch.nn.Module]) -> None:
    """Record that `transformers` share the steps of one pipeline (called by `apply` with a pipeline's denoising
    transformers: more than one means experts, like Wan 2.2 A14B's `transformer` and `transformer_2`). An expert
    stays one when it is later applied on its own: its weights are still those of an expert."""
    if len(transformers) < 2:
        return
    for transformer in transformers:
        _EXPERTS[transformer] = len(transformers)


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


def _teacache_entry(key: str) -> TeaCacheFit:
    models = _published()["teacache"]["models"]
    entry = models[key]
    base = models.get(key.split("@")[0], entry)  # a `@ret_steps` variant's thresholds are published on its base
    threshold = base.get("default_threshold")
    if threshold is None and base.get("threshold_range"):
        threshold = base["threshold_range"][0]
    return TeaCacheFit(
        coefficients=entry["coefficients"],
        indicator=entry["indicator"],
        threshold=threshold,
        warmup=_warmup_fraction(entry.get("always_compute")),
        threshold_speedups=base.get("threshold_speedups"),
        source=_published()["teacache"]["source"],
    )


def _magcache_branches(key: str) -> tuple[dict, MagCacheDefaults]:
    entry = _published()["magcache"]["models"][key]
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
            raise ProfileError(f"published MagCache ratios of {key} do not cover {steps} steps")
        ratios[0] = 1.0
    published_defaults = entry.get("defaults", {})
    published = {
        k: published_defaults[src]
        for k, src in (("threshold", "threshold"), ("max_skip", "max_skip_steps"), ("retention", "retention_ratio"))
        if src in published_defaults
    }  # the others: the policy's defaults (MagCacheDefaults')
    return branches, MagCacheDefaults(**published, source=_published()["magcache"]["source"])


def builtin_names() -> list[str]:
    return list(BUILTINS)


def builtin_policies(name: str) -> list[str]:
    """The policies built-in profile `name` has published data for."""
    entry = BUILTINS[name]
    return [policy for policy in ("teacache", "magcache", "lemica") if getattr(entry, policy)]


@functools.cache
def _builtin(name: str) -> Profile:
    entry = BUILTINS[name]
    profile = Profile(
        fingerprint={"class": entry.class_name, "name": name, "match": entry.match},
        grid_kind="position",
        source=f"builtin:{name}",
    )
    if entry.teacache:
        profile.policies[keys.TEACACHE] = _teacache_entry(entry.teacache).to_dict()
    if entry.magcache:
        branches, defaults = _magcache_branches(entry.magcache)
        for branch, ratios in branches.items():
            profile.branches.setdefault(branch, {})[keys.MAG_RATIO] = ratios
        profile.policies[keys.MAGCACHE] = defaults.to_dict()
        profile.sampler["steps"] = len(next(iter(branches.values())))
    if entry.lemica:
        lemica = _published()["lemica"]["models"][entry.lemica]
        profile.policies[keys.LEMICA] = LeMiCaSection(
            num_steps=lemica["num_inference_steps"],
            schedules={"17": lemica["budget_17_compute_steps"]},
            source=_published()["lemica"]["source"],
        ).to_dict()
    return profile


def builtin_profile(name: str) -> Profile:
    """The built-in profile `name` (see `builtin_names()`)."""
    name = _ALIASES.get(name, name)
    if name not in BUILTINS:
        raise ProfileError(f"unknown built-in profile {name!r}; built-in profiles: {', '.join(BUILTINS)}")
    return _builtin(name)


def _other_model(name: str, transformer: torch.nn.Module) -> str | None:
    """Why `transformer`, whose config matches built-in `name`, is still another model than the published one."""
    if _EXPERTS.get(transformer, 1) > 1:
        return "it is one of several experts that share the pipeline's steps (Wan 2.2 A14B)"
    origin = str((getattr(transformer, "config", None) or {}).get("_name_or_path") or "")
    if any(re.search(pattern, origin, re.IGNORECASE) for pattern in BUILTINS[name].not_names):
        return f"it was loaded from {origin}"
    return None


def find_builtin(transformer: torch.nn.Module, policy: str) -> Profile | None:
    """The first built-in profile that matches `transformer` and has data for `policy`, or None."""
    for name in BUILTINS:
        profile = _builtin(name)
        if policy in profile.policies and profile.matches(transformer):
            why = _other_model(name, transformer)
            if why is None:
                return profile
            logger.info(
                "dit_cache: built-in profile %s not used for this %s: %s", name, type(transformer).__name__, why
            )
    return None


def profiles_of_class(class_name: str) -> list[str]:
    """The built-in profiles made for `class_name`, in matching order."""
    return [name for name, entry in BUILTINS.items() if entry.class_name == class_name]
