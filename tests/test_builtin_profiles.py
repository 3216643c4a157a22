"""Built-in profiles match the published checkpoints (by the config values of their real transformer configs) and
nothing else of the same class; `dit-cache info` and the README's family table show the same data."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import diffusers
import pytest
import torch

import dit_cache
from dit_cache import families
from dit_cache.calibration import builtin
from dit_cache.cli import main
from dit_cache.testing import run, tiny_pipeline

ROOT = Path(__file__).resolve().parent.parent

# Identifying values from the published checkpoints' transformer configs (diffusers' conversion scripts and the hub
# configs), the other dimensions tiny: the transformers are built on the meta device and only their config is read.
_WAN_I2V = dict(num_layers=40, num_attention_heads=40, in_channels=36, image_dim=1280, added_kv_proj_dim=5120)
_HUNYUAN = dict(num_layers=20, num_single_layers=40, num_attention_heads=24, in_channels=16, guidance_embeds=True)
_COG5B = dict(num_layers=42, num_attention_heads=48)
CHECKPOINTS = {
    # name: (class, config, built-in profile it gets automatically, or None)
    "FLUX.1-dev": ("FluxTransformer2DModel", dict(guidance_embeds=True), "flux.1-dev"),
    "FLUX.1-schnell": ("FluxTransformer2DModel", dict(guidance_embeds=False), None),
    "FLUX.1-Fill-dev": ("FluxTransformer2DModel", dict(guidance_embeds=True, in_channels=384), None),
    "Wan2.1-T2V-1.3B": ("WanTransformer3DModel", dict(num_layers=30, num_attention_heads=12), "wan2.1-t2v-1.3b"),
    "Wan2.1-T2V-14B": ("WanTransformer3DModel", dict(num_layers=40, num_attention_heads=40), "wan2.1-t2v-14b"),
    "Wan2.1-I2V-14B-480P": ("WanTransformer3DModel", _WAN_I2V, "wan2.1-i2v-14b-480p"),
    "Wan2.1-FLF2V-14B-720P": ("WanTransformer3DModel", {**_WAN_I2V, "pos_embed_seq_len": 514}, None),
    "Wan2.2-I2V-A14B": ("WanTransformer3DModel", dict(num_layers=40, num_attention_heads=40, in_channels=36), None),
    "Wan2.2-TI2V-5B": (
        "WanTransformer3DModel",
        dict(num_layers=30, num_attention_heads=24, in_channels=48, out_channels=48),
        None,
    ),
    "HunyuanVideo": ("HunyuanVideoTransformer3DModel", _HUNYUAN, "hunyuanvideo"),
    "HunyuanVideo-I2V": (
        "HunyuanVideoTransformer3DModel",
        {**_HUNYUAN, "in_channels": 33, "guidance_embeds": False, "image_condition_type": "latent_concat"},
        None,
    ),
    "CogVideoX-2b": ("CogVideoXTransformer3DModel", dict(num_layers=30, num_attention_heads=30), "cogvideox-2b"),
    "CogVideoX-5b": ("CogVideoXTransformer3DModel", _COG5B, "cogvideox-5b"),
    "CogVideoX-5b-I2V": ("CogVideoXTransformer3DModel", {**_COG5B, "in_channels": 32}, "cogvideox-5b-i2v"),
    "CogVideoX1.5-5B": ("CogVideoXTransformer3DModel", {**_COG5B, "patch_size_t": 2}, "cogvideox1.5-5b"),
    "CogVideoX1.5-5B-I2V": (
        "CogVideoXTransformer3DModel",
        {**_COG5B, "in_channels": 32, "patch_size_t": 2},
        "cogvideox1.5-5b-i2v",
    ),
    "ConsisID-preview": ("ConsisIDTransformer3DModel", {**_COG5B, "in_channels": 32}, "consisid"),
    "LTX-Video": ("LTXVideoTransformer3DModel", dict(num_layers=28, num_attention_heads=32), "ltx-video"),
    "mochi-1-preview": ("MochiTransformer3DModel", dict(num_layers=48, num_attention_heads=24), "mochi-1-preview"),
    "Qwen-Image": ("QwenImageTransformer2DModel", dict(num_layers=60), "qwen-image"),
    "Qwen-Image-Edit-2511": ("QwenImageTransformer2DModel", dict(num_layers=60, zero_cond_t=True), None),
    "Qwen-Image-Layered": (
        "QwenImageTransformer2DModel",
        dict(num_layers=60, use_additional_t_cond=True, use_layer3d_rope=True),
        None,
    ),
    # published for TeaCache, not shipped: the adapter's indicator is another quantity (builtin.UNMATCHED)
    "HiDream-I1-Full": ("HiDreamImageTransformer2DModel", dict(num_layers=16, num_single_layers=32), None),
}
# Tiny values of the dimensions that do not identify the checkpoint (each class's own constraints: RoPE axes sum
# to the head dim, Flux/Qwen patchify in_channels by 4).
_TINY = {
    "FluxTransformer2DModel": dict(attention_head_dim=8, num_attention_heads=2, axes_dims_rope=(2, 2, 4)),
    "WanTransformer3DModel": dict(attention_head_dim=6, ffn_dim=8, text_dim=8, freq_dim=8),
    "HunyuanVideoTransformer3DModel": dict(attention_head_dim=8, rope_axes_dim=(2, 2, 4), text_embed_dim=8),
    "CogVideoXTransformer3DModel": dict(attention_head_dim=8, time_embed_dim=4, text_embed_dim=8),
    "ConsisIDTransformer3DModel": dict(attention_head_dim=8, time_embed_dim=4, text_embed_dim=8),
    "LTXVideoTransformer3DModel": dict(attention_head_dim=2, cross_attention_dim=8, caption_channels=8),
    "MochiTransformer3DModel": dict(attention_head_dim=2, pooled_projection_dim=8, text_embed_dim=8),
    "QwenImageTransformer2DModel": dict(attention_head_dim=8, num_attention_heads=2, axes_dims_rope=(2, 2, 4)),
    "HiDreamImageTransformer2DModel": dict(
        patch_size=2,
        in_channels=16,
        attention_head_dim=8,
        num_attention_heads=2,
        axes_dims_rope=(2, 2, 4),
        caption_channels=[8, 8],
        text_emb_dim=8,
        llama_layers=list(range(48)),
    ),
}


def meta_transformer(class_name: str, config: dict) -> torch.nn.Module:
    with torch.device("meta"):
        return getattr(diffusers, class_name)(**{**_TINY[class_name], **config})


@pytest.mark.parametrize("checkpoint", list(CHECKPOINTS))
def test_builtin_profile_matches_its_published_checkpoint_only(checkpoint):
    class_name, config, expected = CHECKPOINTS[checkpoint]
    transformer = meta_transformer(class_name, config)
    found = {policy: builtin.find_builtin(transformer, policy) for policy in ("teacache", "magcache", "lemica")}
    names = {profile.name for profile in found.values() if profile is not None}
    assert names == ({expected} if expected else set()), checkpoint
    if expected:
        assert set(builtin.builtin_policies(expected)) == {p for p, profile in found.items() if profile is not None}


@pytest.mark.parametrize(
    "name, checkpoint",
    [
        ("flux.1-kontext-dev", "FLUX.1-dev"),
        ("wan2.1-i2v-14b-720p", "Wan2.1-I2V-14B-480P"),
        ("hunyuanvideo-544p", "HunyuanVideo"),
        ("qwen-image-edit", "Qwen-Image"),
    ],
)
def test_same_architecture_profiles_are_picked_by_name(name, checkpoint):
    """Checkpoints of one config (Kontext and FLUX.1-dev, I2V 720p and 480p...) match the first entry; the others
    are there by name, and fit the same model."""
    transformer = meta_transformer(*CHECKPOINTS[checkpoint][:2])
    assert builtin.builtin_profile(name).matches(transformer)
    assert builtin.find_builtin(transformer, "magcache").name != name


def test_every_published_calibration_is_shipped_or_listed_with_its_reason():
    published = json.loads((ROOT / "dit_cache/calibration/data/published_calibration.json").read_text())
    used = {
        (policy, getattr(entry, policy)) for entry in builtin.BUILTINS.values() for policy in ("teacache", "magcache")
    }
    used |= {("lemica", entry.lemica) for entry in builtin.BUILTINS.values() if entry.lemica}
    for policy in ("teacache", "magcache", "lemica"):
        for key, entry in published[policy]["models"].items():
            base = key.split("@")[0]
            shipped = (policy, key) in used or any((policy, k) in used for k in (f"{base}@ret_steps", base))
            assert shipped or key in builtin.UNMATCHED, f"published {policy} {key} is neither shipped nor listed"
            for other in entry.get("also_for", []):
                entry_of_other = builtin.BUILTINS.get(other)
                also = entry_of_other is not None and getattr(entry_of_other, policy) == key
                assert also or other in builtin.UNMATCHED, f"{key} also_for {other} is neither shipped nor listed"
    supported = set(dit_cache.supported_classes())
    for name, (policy, class_name, why) in builtin.UNMATCHED.items():
        assert policy in ("teacache", "magcache") and why
        if class_name in supported:  # a supported class is left out only for its indicator
            assert "indicator" in why, name
    # the shipped entries' data exists
    for name in builtin.builtin_names():
        assert builtin.builtin_profile(name).policies


def test_hidream_indicator_is_not_the_published_one():
    """The reason HiDream-I1's polynomial is not shipped: our indicator adds the pooled-text embedding to the
    timestep embedding, so its relative change differs from that of the timestep embedding TeaCache measured."""
    pipe = tiny_pipeline("hidream_image")
    seen = {}
    transformer = pipe.transformer
    transformer.t_embedder.register_forward_hook(lambda m, a, out: seen.setdefault("t", []).append(out.detach()))
    spec = dit_cache.adapters.find_spec(transformer)
    block = transformer.single_stream_blocks[0].block
    block.register_forward_pre_hook(
        lambda m, args, kwargs: seen.setdefault("temb", []).append(kwargs["temb"].detach()), with_kwargs=True
    )
    assert spec.indicator_doc.startswith("the timestep + pooled-text embedding")
    run(pipe, "hidream_image", cfg=False, steps=3)

    def rel_l1(a, b):
        return float((a - b).abs().mean() / b.abs().mean())

    ours = rel_l1(seen["temb"][1], seen["temb"][0])
    theirs = rel_l1(seen["t"][1], seen["t"][0])
    assert abs(ours - theirs) > 0.05 * theirs


def _wan14b_pipeline(family: str):
    # Wan 2.1 T2V-14B's identifying config; Wan 2.2 T2V-A14B's two experts have exactly this config too
    return tiny_pipeline(
        family, layers=40, num_attention_heads=40, attention_head_dim=2, in_channels=16, out_channels=16
    )


def test_wan22_experts_get_no_wan21_profile():
    """Wan 2.2 T2V-A14B's experts share Wan 2.1 T2V-14B's config; the published Wan 2.1 profiles are of one model
    running every step, so a two-expert pipeline gets none of them (MagCache then asks for a calibration)."""
    single = _wan14b_pipeline("wan")
    with dit_cache.cached(single, "magcache"):
        assert single.transformer._dit_cache.engine.policy.profile.name == "wan2.1-t2v-14b"
    experts = _wan14b_pipeline("wan22_a14b")
    with pytest.raises(dit_cache.ProfileError, match="no built-in profile matches"):
        dit_cache.apply(experts, "magcache")
    assert not dit_cache.is_applied(experts)
    with dit_cache.cached(experts, "teacache"):
        assert all(
            getattr(experts, name)._dit_cache.engine.policy.profile is None for name in ("transformer", "transformer_2")
        )
    # an expert applied on its own is still an expert
    assert builtin.find_builtin(experts.transformer_2, "magcache") is None
    # naming the profile is the user's choice
    with dit_cache.cached(experts, "magcache", profile="wan2.1-t2v-14b"):
        pass


def test_wan22_checkpoint_name_is_not_matched_to_wan21():
    transformer = meta_transformer("WanTransformer3DModel", dict(num_layers=40, num_attention_heads=40))
    assert builtin.find_builtin(transformer, "magcache").name == "wan2.1-t2v-14b"
    transformer.register_to_config(
        _name_or_path="/hub/models--Wan-AI--Wan2.2-T2V-A14B-Diffusers/snapshots/0/transformer"
    )
    assert builtin.find_builtin(transformer, "magcache") is None


def test_mochi_gets_the_published_teacache_polynomial_through_its_pipeline():
    pipe = tiny_pipeline("mochi", layers=48, num_attention_heads=24, attention_head_dim=2)
    published = json.loads((ROOT / "dit_cache/calibration/data/published_calibration.json").read_text())
    with dit_cache.cached(pipe, "teacache"):
        policy = pipe.transformer._dit_cache.engine.policy
        assert policy.profile.name == "mochi-1-preview"
        assert list(policy.coefficients) == published["teacache"]["models"]["mochi"]["coefficients"]
        assert policy.threshold == 0.09
        out = run(pipe, "mochi", cfg=False, steps=4)
    assert torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------------------- info / README
def test_info_lists_classes_policies_and_builtin_profiles(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line and not line.startswith(" ")}
    rows = families.catalog_rows()
    shipped = [row for row in rows if not row.refused]
    assert len(shipped) >= 40
    for row in rows:
        line = lines[row.transformer]
        for name in row.profiles:
            assert f"{name} ({', '.join(builtin.builtin_policies(name))})" in line
        if row.refused:
            assert "refused" in line and f"  {row.transformer}: {row.refused}" in out
    assert re.search(r"^MochiTransformer3DModel +all +mochi-1-preview \(teacache\)$", out, re.MULTILINE)
    assert re.search(r"^WanTransformer3DModel +all +wan2\.1-t2v-1\.3b \(teacache, magcache, lemica\)", out, re.M)
    assert re.search(r"^HiDreamImageTransformer2DModel +all +-$", out, re.MULTILINE)
    policies = next(line for line in out.splitlines() if line.startswith("policies:"))
    assert "recorder" not in policies and "teacache" in policies
    for name in builtin.UNMATCHED:
        assert f"  {name} (" in out


def _families_script():
    spec = importlib.util.spec_from_file_location("families_table", ROOT / "scripts/families_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_family_table_is_generated_from_the_same_data():
    readme = (ROOT / "README.md").read_text()
    script = _families_script()
    assert script.render(readme) == readme, "README.md is out of date: run python scripts/families_table.py"
    section = readme.split(script.START)[1].split(script.END)[0]
    for row in families.catalog_rows():
        assert f"| {row.transformer} |" in section
    stale = readme.replace("| MochiTransformer3DModel | mochi |", "| MochiTransformer3DModel | x |")
    assert script.render(stale) == readme
