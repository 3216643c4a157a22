"""Tiny random-weight pipelines of every supported family, for tests, benchmarks and calibration smoke runs.

They run the real diffusers pipeline classes with small transformer configs and no text encoder or VAE: prompt
embeddings are passed in and `output_type="latent"`. Random weights prove mechanics, not quality.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class TinyFamily:
    """A family's tiny pipeline as data: the transformer class and config, the random conditioning it takes."""

    pipeline: str  # diffusers pipeline class name
    transformer: str  # diffusers transformer class name
    config: dict  # tiny transformer config
    embeds: dict  # conditioning tensors: name -> shape without the batch dim; CFG adds "negative_<name>"
    size: dict  # height / width / num_frames and other fixed call arguments
    cfg_on: dict  # call arguments that switch classifier-free guidance on
    cfg_off: dict = field(default_factory=dict)
    masks: tuple[str, ...] = ()  # attention masks of the text tokens (all ones)
    scheduler: str = "FlowMatchEulerDiscreteScheduler"
    scheduler_kwargs: dict = field(default_factory=dict)
    # pipeline components besides transformer/scheduler: name -> value, a function that makes it (a tiny VAE), or
    # "transformer" for a second random transformer of the same config (Wan 2.2's `transformer_2`)
    components: dict = field(default_factory=dict)
    cfg: bool = True  # whether the pipeline runs classifier-free guidance at all
    mask_dtype: torch.dtype = torch.long
    known_gaps: dict = field(default_factory=dict)  # policy name -> why it does not work on this family yet
    fill_zeros: bool = False  # the class zero-initialises its modulation (blocks start as identities): fill it
    attributes: dict = field(default_factory=dict)  # pipeline attributes to set after construction
    embeds_as_list: bool = False  # the pipeline takes each embedding as a list, one (tokens, dim) tensor a prompt
    requires: tuple[str, ...] = ()  # modules the pipeline needs beyond the `dev` extra's core (ConsisID: cv2)
    caveat: str = ""  # a setting of the pipeline that caching does not support yet (shown in the family table)
    # (module, attribute, value) set while the pipeline runs: a hard-coded size too slow for a test (Qwen-Image-Edit
    # resizes its condition image to about 1024 x 1024)
    call_patches: tuple[tuple[str, str, Any], ...] = ()

    def make_transformer(self, layers: int | None = None, single_layers: int | None = None, **kw) -> torch.nn.Module:
        import diffusers

        config = dict(self.config)
        if layers is not None:
            config["num_layers"] = layers
        if single_layers is not None:
            config["num_single_layers"] = single_layers
        config.update(kw)
        model = getattr(diffusers, self.transformer)(**config)
        if self.fill_zeros:
            with torch.no_grad():
                for param in model.parameters():
                    if not param.any():
                        param.normal_(0.0, 0.1)
        return model

    def make_inputs(self, batch: int, cfg: bool, g: torch.Generator) -> dict:
        kw = {name: torch.randn(batch, *shape, generator=g) for name, shape in self.embeds.items()}
        kw.update({name: torch.ones(batch, TEXT_TOKENS, dtype=self.mask_dtype) for name in self.masks})
        if cfg:
            kw.update(
                {f"negative_{name}": torch.randn(batch, *shape, generator=g) for name, shape in self.embeds.items()}
            )
            kw.update(
                {f"negative_{name}": torch.ones(batch, TEXT_TOKENS, dtype=self.mask_dtype) for name in self.masks}
            )
        if self.embeds_as_list:  # Z-Image
            kw.update({name: list(kw[name].unbind(0)) for name in kw if name.removeprefix("negative_") in self.embeds})
        kw.update(self.size)
        kw.update(self.cfg_on if cfg else self.cfg_off)
        return kw


TEXT_TOKENS, TEXT_DIM = 8, 32
_TEXT = {"prompt_embeds": (TEXT_TOKENS, TEXT_DIM)}
_TEXT_POOLED = {**_TEXT, "pooled_prompt_embeds": (TEXT_DIM,)}
_HEADS = {"attention_head_dim": 16, "num_attention_heads": 2}

FAMILIES: dict[str, TinyFamily] = {
    "flux": TinyFamily(
        "FluxPipeline", "FluxTransformer2DModel",
        dict(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, joint_attention_dim=TEXT_DIM,
             pooled_projection_dim=TEXT_DIM, axes_dims_rope=[4, 4, 8], **_HEADS),
        _TEXT_POOLED, dict(height=64, width=64), dict(true_cfg_scale=3.0),
    ),
    "wan": TinyFamily(
        "WanPipeline", "WanTransformer3DModel",
        dict(patch_size=(1, 2, 2), in_channels=4, out_channels=4, text_dim=TEXT_DIM, freq_dim=32, ffn_dim=64,
             num_layers=3, rope_max_seq_len=32, **_HEADS),
        _TEXT, dict(height=64, width=64, num_frames=5), dict(guidance_scale=4.0), dict(guidance_scale=1.0),
    ),
    "hunyuan_video": TinyFamily(
        "HunyuanVideoPipeline", "HunyuanVideoTransformer3DModel",
        dict(in_channels=4, out_channels=4, num_layers=2, num_single_layers=2, num_refiner_layers=1, patch_size=2,
             patch_size_t=1, guidance_embeds=True, text_embed_dim=TEXT_DIM, pooled_projection_dim=TEXT_DIM,
             rope_axes_dim=(4, 6, 6), **_HEADS),
        _TEXT_POOLED, dict(height=64, width=64, num_frames=5), dict(true_cfg_scale=3.0), masks=("prompt_attention_mask",),
    ),
    "cogvideox": TinyFamily(
        "CogVideoXPipeline", "CogVideoXTransformer3DModel",
        dict(in_channels=4, out_channels=4, time_embed_dim=16, text_embed_dim=TEXT_DIM, num_layers=3, sample_width=8,
             sample_height=8, sample_frames=5, patch_size=2, temporal_compression_ratio=4,
             max_text_seq_length=TEXT_TOKENS, **_HEADS),
        _TEXT, dict(height=64, width=64, num_frames=5, max_sequence_length=TEXT_TOKENS), dict(guidance_scale=4.0),
        dict(guidance_scale=1.0), scheduler="CogVideoXDDIMScheduler", scheduler_kwargs={"timestep_spacing": "trailing"},
    ),
    "ltx": TinyFamily(
        "LTXPipeline", "LTXVideoTransformer3DModel",
        dict(in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, cross_attention_dim=TEXT_DIM, num_layers=3,
             caption_channels=TEXT_DIM, **_HEADS),
        _TEXT, dict(height=128, width=128, num_frames=9), dict(guidance_scale=3.0), dict(guidance_scale=1.0),
        masks=("prompt_attention_mask",),
    ),
    "sd3": TinyFamily(
        "StableDiffusion3Pipeline", "SD3Transformer2DModel",
        dict(sample_size=8, patch_size=2, in_channels=4, num_layers=3, caption_projection_dim=TEXT_DIM,
             joint_attention_dim=TEXT_DIM, pooled_projection_dim=TEXT_DIM, out_channels=4, **_HEADS),
        _TEXT_POOLED, dict(height=64, width=64), dict(guidance_scale=4.0), dict(guidance_scale=1.0),
    ),
    "pixart": TinyFamily(
        "PixArtAlphaPipeline", "PixArtTransformer2DModel",
        dict(sample_size=8, num_layers=3, patch_size=2, caption_channels=TEXT_DIM, in_channels=4,
             cross_attention_dim=TEXT_DIM, out_channels=8, attention_bias=True, activation_fn="gelu-approximate",
             num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
             **_HEADS),
        _TEXT, dict(height=64, width=64, use_resolution_binning=False),
        dict(guidance_scale=4.0, negative_prompt=None), dict(guidance_scale=1.0), masks=("prompt_attention_mask",),
        scheduler="DPMSolverMultistepScheduler",
    ),
    "qwenimage": TinyFamily(
        "QwenImagePipeline", "QwenImageTransformer2DModel",
        dict(patch_size=2, in_channels=16, out_channels=4, num_layers=3, joint_attention_dim=TEXT_DIM,
             guidance_embeds=False, axes_dims_rope=(4, 6, 6), **_HEADS),
        _TEXT, dict(height=64, width=64), dict(true_cfg_scale=3.0), dict(true_cfg_scale=1.0),
        masks=("prompt_embeds_mask",),
    ),
}  # fmt: skip

# More families, tested by tests/test_families.py (tests/test_pipelines.py keeps to FAMILIES above: its many
# policies x settings per family would cost minutes per family).
_WAN = dict(patch_size=(1, 2, 2), in_channels=4, out_channels=4, text_dim=TEXT_DIM, freq_dim=32, ffn_dim=64,
            num_layers=2, rope_max_seq_len=32, **_HEADS)  # fmt: skip
_VIDEO = dict(height=32, width=32, num_frames=5)
_GUIDED = dict(guidance_scale=4.0), dict(guidance_scale=1.0)


def _guider():
    from diffusers.guiders import ClassifierFreeGuidance

    return ClassifierFreeGuidance(guidance_scale=4.0)


def _apg_guider():
    from diffusers.guiders import AdaptiveProjectedGuidance

    return AdaptiveProjectedGuidance()


def _tiny_image(size: int = 32):
    import numpy as np
    from PIL import Image

    return Image.fromarray((np.arange(size * size * 3).reshape(size, size, 3) % 251).astype("uint8"))


def _tiny_clip_vision():
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=16)  # fmt: skip
    return CLIPVisionModel(config).eval()


def _tiny_clip_processor(size: int = 32):
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def _tiny_clip_vision_4():
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(hidden_size=4, projection_dim=4, num_hidden_layers=2, num_attention_heads=2,
                              image_size=4, intermediate_size=16, patch_size=1)  # fmt: skip
    return CLIPVisionModelWithProjection(config).eval()


def _tiny_siglip():
    from transformers import SiglipVisionConfig, SiglipVisionModel

    config = SiglipVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                                image_size=32, patch_size=16)  # fmt: skip
    return SiglipVisionModel(config).eval()


def _tiny_siglip_processor():
    from transformers import SiglipImageProcessor

    return SiglipImageProcessor(size={"height": 32, "width": 32})


def _tiny_hunyuan_vae():
    from diffusers import AutoencoderKLHunyuanVideo

    return AutoencoderKLHunyuanVideo(
        in_channels=3, out_channels=3, latent_channels=4, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        norm_num_groups=4, scaling_factor=0.476986, spatial_compression_ratio=8, temporal_compression_ratio=4,
    ).eval()  # fmt: skip


def _tiny_ltx2_vae():
    from diffusers import AutoencoderKLLTX2Video

    vae = AutoencoderKLLTX2Video(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,), decoder_block_out_channels=(8,),
        layers_per_block=(1,), decoder_layers_per_block=(1, 1), spatio_temporal_scaling=(True,),
        decoder_spatio_temporal_scaling=(True,), decoder_inject_noise=(False, False), downsample_type=("spatial",),
        upsample_residual=(False,), upsample_factor=(1,), timestep_conditioning=False, patch_size=1, patch_size_t=1,
        encoder_causal=True, decoder_causal=False,
    ).eval()  # fmt: skip
    vae.use_framewise_encoding = vae.use_framewise_decoding = False
    return vae


def _tiny_ltx2_audio_vae():
    from diffusers import AutoencoderKLLTX2Audio

    return AutoencoderKLLTX2Audio(
        base_channels=4, output_channels=2, ch_mult=(1,), num_res_blocks=1, attn_resolutions=None, in_channels=2,
        resolution=32, latent_channels=2, norm_type="pixel", causality_axis="height", dropout=0.0,
        mid_block_add_attention=False, sample_rate=16000, mel_hop_length=160, is_causal=True, mel_bins=8,
    ).eval()  # fmt: skip


def _tiny_ltx2_connectors():
    from diffusers.pipelines.ltx2.connectors import LTX2TextConnectors

    return LTX2TextConnectors(
        caption_channels=TEXT_DIM, text_proj_in_factor=2, video_connector_num_attention_heads=2,
        video_connector_attention_head_dim=16, video_connector_num_layers=1,
        video_connector_num_learnable_registers=None, audio_connector_num_attention_heads=2,
        audio_connector_attention_head_dim=16, audio_connector_num_layers=1,
        audio_connector_num_learnable_registers=None, connector_rope_base_seq_len=32, rope_double_precision=False,
        rope_type="split",
    ).eval()  # fmt: skip


def _tiny_smollm3():
    from transformers import SmolLM3Config, SmolLM3ForCausalLM

    config = SmolLM3Config(vocab_size=len(TINY_VOCAB) + 3, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, pad_token_id=0)  # fmt: skip
    return SmolLM3ForCausalLM(config).eval()


def _tiny_fibo_vae():
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(base_dim=4, decoder_base_dim=4, num_res_blocks=1, out_channels=12, patch_size=2,
                            scale_factor_spatial=16, scale_factor_temporal=4, temperal_downsample=[False, True, True],
                            z_dim=16).eval()  # fmt: skip


def _tiny_qwen25vl():
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    text = dict(
        vocab_size=len(TINY_VOCAB) + 3,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
    )
    vision = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32)  # fmt: skip
    return Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(text_config=text, vision_config=vision)).eval()


def _tiny_magvit():
    from diffusers import AutoencoderKLMagvit

    down = ("SpatialDownBlock3D",) + ("SpatialTemporalDownBlock3D",) * 3
    up = ("SpatialUpBlock3D",) + ("SpatialTemporalUpBlock3D",) * 3
    return AutoencoderKLMagvit(in_channels=3, out_channels=3, down_block_types=down, up_block_types=up,
                               block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1,
                               norm_num_groups=2, spatial_group_norm=False).eval()  # fmt: skip


def _tiny_hunyuan15_vae():
    from diffusers import AutoencoderKLHunyuanVideo15

    return AutoencoderKLHunyuanVideo15(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 16),
                                       layers_per_block=1, spatial_compression_ratio=4, temporal_compression_ratio=2,
                                       downsample_match_channel=False, upsample_match_channel=False).eval()  # fmt: skip


def _tiny_wan_vae(z_dim: int = 4):
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(base_dim=3, z_dim=z_dim, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True], latents_mean=[0.0] * z_dim,
                            latents_std=[1.0] * z_dim).eval()  # fmt: skip


def _tiny_flux2_vae():
    from diffusers import AutoencoderKLFlux2

    return AutoencoderKLFlux2(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                              block_out_channels=(8, 8), layers_per_block=1, latent_channels=4,
                              norm_num_groups=4).eval()  # fmt: skip


def _tiny_cogvideox_vae():
    from diffusers import AutoencoderKLCogVideoX

    return AutoencoderKLCogVideoX(in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
                                  up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8),
                                  latent_channels=4, layers_per_block=1, norm_num_groups=2,
                                  temporal_compression_ratio=4).eval()  # fmt: skip


class TextOnlyProcessor:
    """What QwenImage21Pipeline reads of its Qwen3-VL processor when prompts come as `prompt_embeds`: the chat
    template (its constructor counts the system prompt's tokens) and the tokenizer (the image-pad token id). A real
    Qwen3VLProcessor cannot be built here: its video processor needs torchvision, which has no CPU wheel on PyPI."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def apply_chat_template(self, conversation, **kwargs):  # a processor's template takes a batch
        return self.tokenizer.apply_chat_template([conversation], **kwargs)


def _tiny_qwen3vl_text_processor():
    tokenizer = word_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<|image_pad|>"]})
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}{{ c['text'] }}{% endfor %}"
        "<|im_end|>\n{% endfor %}"
    )
    return TextOnlyProcessor(tokenizer)


# ConsisID's face features (what its insightface / EVA-CLIP helpers compute): an identity vector and one ViT
# feature map per scale of the tiny LocalFacialExtractor
_FACE = torch.Generator().manual_seed(3)
_CONSISID_FACE = dict(id_cond=torch.randn(1, 8, generator=_FACE),
                      id_vit_hidden=[torch.randn(1, 5, 8, generator=_FACE) for _ in range(2)])  # fmt: skip


def _tiny_qwen_vae():
    from diffusers import AutoencoderKLQwenImage

    return AutoencoderKLQwenImage(base_dim=4, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                  temperal_downsample=[False, True, True], latents_mean=[0.0] * 4,
                                  latents_std=[1.0] * 4).eval()  # fmt: skip


_COGVIDEOX = dict(FAMILIES["cogvideox"].config, in_channels=8, num_layers=2)  # image latents on the channels

# HiDream's Llama features: (layers, batch, tokens, dim), layer first (the batch-first `embeds` cannot say it)
_LLAMA = torch.randn(2, 3, 1, TEXT_TOKENS, 16, generator=torch.Generator().manual_seed(0))

MORE_FAMILIES: dict[str, TinyFamily] = {
    "wan22_a14b": TinyFamily(
        "WanPipeline", "WanTransformer3DModel", _WAN, _TEXT, _VIDEO, *_GUIDED,
        components=dict(transformer_2="transformer", boundary_ratio=0.5),
    ),
    "wan22_ti2v": TinyFamily(
        "WanPipeline", "WanTransformer3DModel", _WAN, _TEXT, _VIDEO, *_GUIDED,
        components=dict(expand_timesteps=True),
    ),
    "skyreels_v2": TinyFamily(
        "SkyReelsV2Pipeline", "SkyReelsV2Transformer3DModel", _WAN, _TEXT, _VIDEO, *_GUIDED,
        scheduler="UniPCMultistepScheduler", scheduler_kwargs=dict(flow_shift=8.0, use_flow_sigmas=True, prediction_type="flow_prediction"),
    ),
    "wan_vace": TinyFamily(
        "WanVACEPipeline", "WanVACETransformer3DModel", {**_WAN, "vace_layers": [0, 1], "vace_in_channels": 72},
        _TEXT, _VIDEO, *_GUIDED, components=dict(vae=_tiny_wan_vae),
    ),
    "flux2": TinyFamily(
        "Flux2Pipeline", "Flux2Transformer2DModel",
        dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=2, joint_attention_dim=TEXT_DIM,
             timestep_guidance_channels=32, axes_dims_rope=(4, 4, 4, 4), **_HEADS),
        _TEXT, dict(height=64, width=64, guidance_scale=4.0), {}, cfg=False,
    ),
    "chroma": TinyFamily(
        "ChromaPipeline", "ChromaTransformer2DModel",
        dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=2, joint_attention_dim=TEXT_DIM,
             axes_dims_rope=[4, 4, 8], approximator_hidden_dim=32, approximator_layers=1, approximator_num_channels=16,
             **_HEADS),
        _TEXT, dict(height=64, width=64), dict(guidance_scale=4.0), dict(guidance_scale=1.0),
        masks=("prompt_attention_mask",), mask_dtype=torch.bool,
    ),
    "mochi": TinyFamily(
        "MochiPipeline", "MochiTransformer3DModel",
        dict(patch_size=2, num_layers=2, pooled_projection_dim=16, in_channels=12, text_embed_dim=TEXT_DIM,
             time_embed_dim=4, max_sequence_length=TEXT_TOKENS, **_HEADS),
        _TEXT, dict(height=32, width=32, num_frames=7), *_GUIDED, masks=("prompt_attention_mask",),
    ),
    "sana": TinyFamily(
        "SanaPipeline", "SanaTransformer2DModel",
        dict(patch_size=1, in_channels=4, out_channels=4, num_layers=2, num_cross_attention_heads=2,
             cross_attention_head_dim=16, cross_attention_dim=32, caption_channels=TEXT_DIM, sample_size=4, **_HEADS),
        _TEXT, dict(height=128, width=128, use_resolution_binning=False),
        dict(guidance_scale=4.0, negative_prompt=None), dict(guidance_scale=1.0),
        masks=("prompt_attention_mask",), scheduler="DPMSolverMultistepScheduler",
    ),
    "cogview4": TinyFamily(
        "CogView4Pipeline", "CogView4Transformer2DModel",
        dict(patch_size=2, in_channels=4, out_channels=4, num_layers=2, text_embed_dim=TEXT_DIM, time_embed_dim=8,
             condition_dim=4, sample_size=8, rope_axes_dim=(8, 8), **_HEADS),
        _TEXT, dict(height=64, width=64), *_GUIDED,
    ),
    "hunyuan_video15": TinyFamily(
        "HunyuanVideo15Pipeline", "HunyuanVideo15Transformer3DModel",
        dict(in_channels=9, out_channels=4, num_layers=2, num_refiner_layers=1, mlp_ratio=2.0, text_embed_dim=TEXT_DIM,
             text_embed_2_dim=TEXT_DIM, image_embed_dim=12, rope_axes_dim=(4, 6, 6), target_size=16, task_type="t2v",
             **_HEADS),
        {**_TEXT, "prompt_embeds_2": (TEXT_TOKENS, TEXT_DIM)}, dict(height=16, width=16, num_frames=5), {}, {},
        masks=("prompt_embeds_mask", "prompt_embeds_mask_2"), components=dict(guider=_guider, vae=_tiny_hunyuan15_vae),
    ),
    "auraflow": TinyFamily(
        "AuraFlowPipeline", "AuraFlowTransformer2DModel",
        dict(sample_size=8, patch_size=2, in_channels=4, num_mmdit_layers=1, num_single_dit_layers=2,
             caption_projection_dim=32, joint_attention_dim=TEXT_DIM, out_channels=4, pos_embed_max_size=64,
             **_HEADS),
        _TEXT, dict(height=64, width=64), *_GUIDED, masks=("prompt_attention_mask",),
    ),
    "allegro": TinyFamily(
        "AllegroPipeline", "AllegroTransformer3DModel",
        dict(in_channels=4, out_channels=4, num_layers=2, cross_attention_dim=24, sample_width=4, sample_height=4,
             sample_frames=4, caption_channels=TEXT_DIM, attention_head_dim=12, num_attention_heads=2),
        _TEXT, dict(height=32, width=32, num_frames=5), dict(guidance_scale=4.0, negative_prompt=None),
        dict(guidance_scale=1.0), masks=("prompt_attention_mask",), scheduler="DDIMScheduler",
    ),
    "bria": TinyFamily(
        "BriaPipeline", "BriaTransformer2DModel",
        dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, joint_attention_dim=TEXT_DIM,
             pooled_projection_dim=None, axes_dims_rope=[0, 8, 8], **_HEADS),
        _TEXT, dict(height=64, width=64), dict(guidance_scale=4.0, negative_prompt=None), dict(guidance_scale=1.0),
        components=dict(vae=lambda: _tiny_vae()),
    ),
    "ovis_image": TinyFamily(
        "OvisImagePipeline", "OvisImageTransformer2DModel",
        dict(patch_size=1, in_channels=16, out_channels=16, num_layers=1, num_single_layers=1,
             joint_attention_dim=TEXT_DIM, axes_dims_rope=(4, 4, 8), **_HEADS),
        _TEXT, dict(height=64, width=64), dict(guidance_scale=4.0, negative_prompt=None), dict(guidance_scale=1.0),
    ),
    "motif_video": TinyFamily(
        "MotifVideoPipeline", "MotifVideoTransformer3DModel",
        dict(in_channels=9, out_channels=4, num_layers=1, num_single_layers=1, text_embed_dim=TEXT_DIM,
             rope_axes_dim=(4, 4, 4), attention_head_dim=12, num_attention_heads=2),
        _TEXT, _VIDEO, {}, {}, masks=("prompt_attention_mask",), components=dict(guider=_apg_guider, vae=_tiny_wan_vae),
    ),
    "hunyuanimage": TinyFamily(
        "HunyuanImagePipeline", "HunyuanImageTransformer2DModel",
        dict(in_channels=4, out_channels=4, num_layers=1, num_single_layers=1, num_refiner_layers=1,
             patch_size=(1, 1), guidance_embeds=False, text_embed_dim=TEXT_DIM, text_embed_2_dim=TEXT_DIM,
             rope_axes_dim=(8, 8), **_HEADS),
        {**_TEXT, "prompt_embeds_2": (TEXT_TOKENS, TEXT_DIM)}, dict(height=64, width=64), {}, {},
        masks=("prompt_embeds_mask", "prompt_embeds_mask_2"), cfg=False,
    ),
    "easyanimate": TinyFamily(
        "EasyAnimatePipeline", "EasyAnimateTransformer3DModel",
        dict(in_channels=4, out_channels=4, time_embed_dim=8, text_embed_dim=TEXT_DIM, num_layers=2, sample_width=16,
             sample_height=16, patch_size=2, **_HEADS),
        _TEXT, dict(height=64, width=64, num_frames=5), *_GUIDED, masks=("prompt_attention_mask",),
        components=dict(vae=_tiny_magvit),
    ),
    "cogview3plus": TinyFamily(
        "CogView3PlusPipeline", "CogView3PlusTransformer2DModel",
        dict(patch_size=2, in_channels=4, num_layers=2, out_channels=4, text_embed_dim=TEXT_DIM, time_embed_dim=8,
             condition_dim=2, pos_embed_max_size=8, sample_size=8, **_HEADS),
        _TEXT, dict(height=64, width=64), *_GUIDED, scheduler="CogVideoXDDIMScheduler",
    ),
    "kandinsky5": TinyFamily(
        "Kandinsky5T2VPipeline", "Kandinsky5Transformer3DModel",
        dict(in_visual_dim=4, in_text_dim=TEXT_DIM, in_text_dim2=TEXT_DIM, time_dim=16, out_visual_dim=4,
             patch_size=(1, 2, 2), model_dim=32, ff_dim=64, num_text_blocks=1, num_visual_blocks=2,
             axes_dims=(4, 6, 6), visual_cond=False, attention_type="regular"),
        {"prompt_embeds_qwen": (TEXT_TOKENS, TEXT_DIM), "prompt_embeds_clip": (TEXT_DIM,)},
        dict(_VIDEO, prompt_cu_seqlens=torch.tensor([0, TEXT_TOKENS], dtype=torch.int32)),
        dict(guidance_scale=4.0, negative_prompt_cu_seqlens=torch.tensor([0, TEXT_TOKENS], dtype=torch.int32)),
        dict(guidance_scale=1.0), fill_zeros=True,
    ),
    "sana_video": TinyFamily(
        "SanaVideoPipeline", "SanaVideoTransformer3DModel",
        dict(in_channels=4, out_channels=4, num_layers=2, num_cross_attention_heads=2, cross_attention_head_dim=16,
             cross_attention_dim=32, caption_channels=TEXT_DIM, sample_size=8, patch_size=(1, 2, 2),
             qk_norm="rms_norm_across_heads", rope_max_seq_len=32, **_HEADS),
        _TEXT, dict(height=64, width=64, frames=5, use_resolution_binning=False),
        dict(guidance_scale=4.0, negative_prompt=None), dict(guidance_scale=1.0), masks=("prompt_attention_mask",),
        scheduler="DPMSolverMultistepScheduler",
    ),
    "hunyuandit": TinyFamily(
        "HunyuanDiTPipeline", "HunyuanDiT2DModel",
        dict(sample_size=8, num_layers=2, patch_size=2, in_channels=4, cross_attention_dim=TEXT_DIM,
             cross_attention_dim_t5=TEXT_DIM, pooled_projection_dim=16, hidden_size=32,
             activation_fn="gelu-approximate", text_len=TEXT_TOKENS, text_len_t5=TEXT_TOKENS, **_HEADS),
        {**_TEXT, "prompt_embeds_2": (TEXT_TOKENS, TEXT_DIM)}, dict(height=64, width=64, use_resolution_binning=False),
        *_GUIDED, masks=("prompt_attention_mask", "prompt_attention_mask_2"), scheduler="DDPMScheduler",
    ),
    "dit": TinyFamily(
        "DiTPipeline", "DiTTransformer2DModel",
        dict(sample_size=8, num_layers=2, patch_size=2, in_channels=4, out_channels=8, attention_bias=True,
             activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_zero",
             norm_elementwise_affine=False, **_HEADS),
        {}, dict(class_labels=[1]), *_GUIDED, scheduler="DDIMScheduler", components=dict(id2label={0: "a", 1: "b"}, vae=lambda: _tiny_vae()),
    ),
    "pixart_sigma": TinyFamily(
        "PixArtSigmaPipeline", "PixArtTransformer2DModel", {**FAMILIES["pixart"].config, "num_layers": 2}, _TEXT,
        dict(height=64, width=64, use_resolution_binning=False), dict(guidance_scale=4.0, negative_prompt=None),
        dict(guidance_scale=1.0), masks=("prompt_attention_mask",), scheduler="DPMSolverMultistepScheduler",
    ),
    "latte": TinyFamily(
        "LattePipeline", "LatteTransformer3DModel",
        dict(sample_size=8, num_layers=2, patch_size=2, caption_channels=TEXT_DIM, in_channels=4, video_length=3,
             cross_attention_dim=32, out_channels=8, attention_bias=True, activation_fn="gelu-approximate",
             num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
             **_HEADS),
        _TEXT, dict(height=64, width=64, video_length=3), dict(guidance_scale=4.0, negative_prompt=None),
        dict(guidance_scale=1.0), scheduler="DDIMScheduler",
    ),
    "krea2": TinyFamily(
        "Krea2Pipeline", "Krea2Transformer2DModel",
        dict(in_channels=16, num_layers=2, attention_head_dim=8, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=32, timestep_embed_dim=8, text_hidden_dim=16, num_text_layers=3,
             text_num_attention_heads=2, text_num_key_value_heads=1, text_intermediate_size=16,
             num_layerwise_text_blocks=1, num_refiner_text_blocks=1, axes_dims_rope=(4, 2, 2), rope_theta=1000.0),
        {"prompt_embeds": (TEXT_TOKENS, 3, 16)}, dict(height=64, width=64), dict(guidance_scale=4.0),
        dict(guidance_scale=0.0), masks=("prompt_embeds_mask",), mask_dtype=torch.bool,
        components=dict(text_encoder_select_layers=(0, 1, 2)),
    ),
    "prx": TinyFamily(
        "PRXPipeline", "PRXTransformer2DModel",
        dict(patch_size=1, in_channels=4, context_in_dim=TEXT_DIM, hidden_size=32, mlp_ratio=2.0, num_heads=2,
             depth=2, axes_dim=[8, 8]),
        _TEXT, dict(height=64, width=64, use_resolution_binning=False),
        dict(guidance_scale=4.0, negative_prompt=None), dict(guidance_scale=1.0), masks=("prompt_attention_mask",),
        mask_dtype=torch.bool, fill_zeros=True,
    ),
    "chronoedit": TinyFamily(
        "ChronoEditPipeline", "ChronoEditTransformer3DModel",
        {**_WAN, "in_channels": 12, "image_dim": 32, "added_kv_proj_dim": 32}, _TEXT,
        dict(_VIDEO, image=_tiny_image()), dict(guidance_scale=4.0), dict(guidance_scale=1.0),
        components=dict(vae=_tiny_wan_vae, image_encoder=_tiny_clip_vision, image_processor=_tiny_clip_processor),
    ),
    # image-conditioned pipelines: the reference image's tokens join the sequence (Kontext, FLUX.2: `img_ids` tell
    # them apart) or its latents the channels and its CLIP embedding the cross-attention (Wan 2.1 I2V)
    "flux_kontext": TinyFamily(
        "FluxKontextPipeline", "FluxTransformer2DModel", FAMILIES["flux"].config, _TEXT_POOLED,
        dict(image=_tiny_image(64), height=64, width=64, max_area=64 * 64, _auto_resize=False),
        dict(true_cfg_scale=3.0), dict(true_cfg_scale=1.0),
        components=dict(vae=lambda: _tiny_vae()),
    ),
    "flux2_edit": TinyFamily(
        "Flux2Pipeline", "Flux2Transformer2DModel",
        dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=2, joint_attention_dim=TEXT_DIM,
             timestep_guidance_channels=32, axes_dims_rope=(4, 4, 4, 4), **_HEADS),
        _TEXT, dict(image=[_tiny_image(64), _tiny_image(64).rotate(90)], height=32, width=32, guidance_scale=4.0), {},
        cfg=False, components=dict(vae=_tiny_flux2_vae),  # two references; the pipeline refuses them under 64 px
    ),
    "wan_i2v": TinyFamily(
        "WanImageToVideoPipeline", "WanTransformer3DModel",
        {**_WAN, "in_channels": 12, "image_dim": 32, "added_kv_proj_dim": 32}, _TEXT, dict(_VIDEO, image=_tiny_image()),
        *_GUIDED,
        components=dict(vae=_tiny_wan_vae, image_encoder=_tiny_clip_vision, image_processor=_tiny_clip_processor),
    ),
    "ernie_image": TinyFamily(
        "ErnieImagePipeline", "ErnieImageTransformer2DModel",
        dict(hidden_size=32, num_attention_heads=2, num_layers=2, ffn_hidden_size=64, in_channels=16, out_channels=16,
             text_in_dim=TEXT_DIM, rope_axes_dim=(4, 6, 6)),
        _TEXT, dict(height=64, width=64, use_pe=False), dict(guidance_scale=4.0, negative_prompt=None),
        dict(guidance_scale=1.0), fill_zeros=True,
    ),
    "hunyuan_video_framepack": TinyFamily(
        "HunyuanVideoFramepackPipeline", "HunyuanVideoFramepackTransformer3DModel",
        dict(in_channels=4, out_channels=4, num_layers=1, num_single_layers=1, num_refiner_layers=1, patch_size=2,
             patch_size_t=1, guidance_embeds=True, text_embed_dim=TEXT_DIM, pooled_projection_dim=TEXT_DIM,
             rope_axes_dim=(4, 6, 6), image_condition_type=None, has_image_proj=True, image_proj_dim=32,
             has_clean_x_embedder=True, **_HEADS),
        _TEXT_POOLED, dict(image=_tiny_image(64), height=64, width=64, num_frames=9, latent_window_size=2),
        dict(true_cfg_scale=3.0), dict(true_cfg_scale=1.0), masks=("prompt_attention_mask",),
        components=dict(vae=_tiny_hunyuan_vae, image_encoder=_tiny_siglip, feature_extractor=_tiny_siglip_processor),
    ),
    "ltx2": TinyFamily(
        "LTX2Pipeline", "LTX2VideoTransformer3DModel",
        dict(in_channels=4, out_channels=4, patch_size=1, patch_size_t=1, cross_attention_dim=32, audio_in_channels=4,
             audio_out_channels=4, audio_num_attention_heads=2, audio_attention_head_dim=8,
             audio_cross_attention_dim=16, num_layers=2, qk_norm="rms_norm_across_heads", caption_channels=TEXT_DIM,
             rope_double_precision=False, rope_type="split", **_HEADS),
        {"prompt_embeds": (TEXT_TOKENS, TEXT_DIM * 2)},
        dict(height=32, width=32, num_frames=5, frame_rate=25.0, stg_scale=0.0, modality_scale=1.0,
             guidance_rescale=0.0, audio_guidance_scale=1.0, audio_stg_scale=0.0, audio_modality_scale=1.0,
             audio_guidance_rescale=0.0, spatio_temporal_guidance_blocks=None, use_cross_timestep=False),
        dict(guidance_scale=3.0, negative_prompt=None), dict(guidance_scale=1.0), masks=("prompt_attention_mask",),
        components=dict(vae=_tiny_ltx2_vae, audio_vae=_tiny_ltx2_audio_vae, connectors=_tiny_ltx2_connectors),
    ),
    "wan_animate": TinyFamily(
        "WanAnimatePipeline", "WanAnimateTransformer3DModel",
        dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=36, latent_channels=16,
             out_channels=16, text_dim=TEXT_DIM, freq_dim=32, ffn_dim=32, num_layers=2, image_dim=4,
             rope_max_seq_len=32, motion_encoder_channel_sizes={"4": 16, "8": 16, "16": 16}, motion_encoder_size=16,
             motion_style_dim=8, motion_dim=4, motion_encoder_dim=16, face_encoder_hidden_dim=16,
             face_encoder_num_heads=2, inject_face_latents_blocks=2),
        _TEXT,
        dict(image=_tiny_image(16), pose_video=[_tiny_image(16)] * 9, face_video=[_tiny_image(16)] * 9, height=16,
             width=16, segment_frame_length=9, mode="animate", guidance_scale=1.0),
        {}, cfg=False,
        components=dict(vae=lambda: _tiny_wan_vae(16), image_encoder=_tiny_clip_vision_4,
                        image_processor=lambda: _tiny_clip_processor(4)),
    ),
    "bria_fibo": TinyFamily(
        "BriaFiboPipeline", "BriaFiboTransformer2DModel",
        dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=2, attention_head_dim=16,
             num_attention_heads=2, joint_attention_dim=64, text_encoder_dim=32, pooled_projection_dim=None,
             axes_dims_rope=[0, 8, 8]),
        {}, dict(prompt="a red circle", height=64, width=64, max_sequence_length=TEXT_TOKENS),
        dict(guidance_scale=4.0, negative_prompt="a blue square"), dict(guidance_scale=1.0),
        components=dict(text_encoder=_tiny_smollm3, tokenizer=lambda: word_tokenizer(), vae=_tiny_fibo_vae),
    ),
    "glm_image": TinyFamily(
        "GlmImagePipeline", "GlmImageTransformer2DModel",
        dict(patch_size=2, in_channels=4, out_channels=4, num_layers=2, text_embed_dim=TEXT_DIM, time_embed_dim=16,
             condition_dim=8, prior_vq_quantizer_codebook_size=128, **_HEADS),
        _TEXT, dict(height=64, width=64, prior_token_ids=torch.arange(64)[None] * 7 % 128), dict(guidance_scale=4.0),
        dict(guidance_scale=1.0),  # prior tokens given (no GLM autoregressive model)
        components=dict(vae=lambda: _tiny_vae()),
    ),
    "hidream_image": TinyFamily(
        "HiDreamImagePipeline", "HiDreamImageTransformer2DModel",
        dict(patch_size=2, in_channels=4, out_channels=4, num_layers=1, num_single_layers=2, attention_head_dim=8,
             num_attention_heads=4, caption_channels=[TEXT_DIM, 16], text_emb_dim=64, num_routed_experts=4,
             num_activated_experts=2, axes_dims_rope=(4, 2, 2), max_resolution=(32, 32), llama_layers=(0, 1, 2)),
        {"prompt_embeds_t5": (TEXT_TOKENS, TEXT_DIM), "pooled_prompt_embeds": (64,)},
        dict(height=64, width=64, prompt_embeds_llama3=_LLAMA[0]),
        dict(guidance_scale=4.0, negative_prompt_embeds_llama3=_LLAMA[1]), dict(guidance_scale=1.0),
        components=dict(vae=lambda: _tiny_vae()), attributes=dict(default_sample_size=16),  # it resizes to this area
    ),
    "longcat_image": TinyFamily(
        "LongCatImagePipeline", "LongCatImageTransformer2DModel",
        dict(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, joint_attention_dim=TEXT_DIM,
             axes_dims_rope=(4, 4, 8), **_HEADS),
        {}, dict(prompt="a red circle", height=64, width=64, enable_prompt_rewrite=False),
        dict(guidance_scale=4.0, negative_prompt="a blue square"), dict(guidance_scale=1.0),
        components=dict(text_encoder=_tiny_qwen25vl, tokenizer=lambda: word_tokenizer(), vae=lambda: _tiny_vae()),
        attributes=dict(tokenizer_max_length=TEXT_TOKENS),  # its pipeline cannot take prompt_embeds (0.42.1)
    ),
    "cogvideox_i2v": TinyFamily(
        "CogVideoXImageToVideoPipeline", "CogVideoXTransformer3DModel", _COGVIDEOX, _TEXT,
        dict(image=_tiny_image(64), height=64, width=64, num_frames=5, max_sequence_length=TEXT_TOKENS), *_GUIDED,
        scheduler="CogVideoXDDIMScheduler", scheduler_kwargs={"timestep_spacing": "trailing"},
        components=dict(vae=_tiny_cogvideox_vae),
    ),
    "consisid": TinyFamily(
        "ConsisIDPipeline", "ConsisIDTransformer3DModel",
        dict(_COGVIDEOX, num_attention_heads=3, is_train_face=True, cross_attn_interval=1, cross_attn_dim_head=8,
             cross_attn_num_heads=2, LFE_id_dim=8, LFE_vit_dim=8, LFE_depth=2, LFE_dim_head=8, LFE_num_heads=2,
             LFE_num_id_token=2, LFE_num_querie=4, LFE_output_dim=32, LFE_ff_mult=1, LFE_num_scale=2,
             use_rotary_positional_embeddings=True),  # 3 heads: its face cross-attention reads 2/3 of the width
        _TEXT, dict(image=_tiny_image(64), height=64, width=64, num_frames=5, max_sequence_length=TEXT_TOKENS,
                    **_CONSISID_FACE),
        *_GUIDED, scheduler="CogVideoXDPMScheduler", scheduler_kwargs={"timestep_spacing": "trailing"},
        components=dict(vae=_tiny_cogvideox_vae), requires=("cv2",),
    ),
    "bria_fibo2": TinyFamily(
        "BriaFibo2Pipeline", "BriaFibo2Transformer2DModel",
        dict(in_channels=4, patch_size=2, dim=32, n_layers=2, n_refiner_layers=1, n_heads=2, cap_feat_dim=TEXT_DIM,
             injection_layer_ids=(1,), perceiver_num_layers=1, min_num_gist_tokens=4, max_num_gist_tokens=8,
             gist_step=4, gist_min_text_len=8, gist_max_text_len=16, axes_dims=(4, 6, 6), axes_lens=(64, 32, 32)),
        {"prompt_embeds": (2, TEXT_TOKENS, TEXT_DIM)},  # the Perceiver's bundle, then one per injection block
        dict(height=64, width=64), *_GUIDED,
    ),
    "qwen_image_edit": TinyFamily(
        "QwenImageEditPipeline", "QwenImageTransformer2DModel", FAMILIES["qwenimage"].config, _TEXT,
        dict(image=_tiny_image(64)), dict(true_cfg_scale=3.0), dict(true_cfg_scale=1.0),
        masks=("prompt_embeds_mask",), components=dict(vae=_tiny_qwen_vae),
        call_patches=(("diffusers.pipelines.qwenimage.pipeline_qwenimage_edit", "calculate_dimensions",
                       lambda area, ratio: (64, 64, None)),),  # it resizes the condition image to ~1024 x 1024
    ),
    "qwenimage21": TinyFamily(
        "QwenImage21Pipeline", "QwenImage21Transformer2DModel",
        dict(patch_size=1, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=2,
             context_in_dim=TEXT_DIM, mlp_ratio=2, axes_dims_rope=(4, 6, 6)),
        _TEXT, dict(height=64, width=64, use_kv_cache=False), dict(true_cfg_scale=3.0), dict(true_cfg_scale=1.0),
        masks=("prompt_embeds_mask",), components=dict(processor=_tiny_qwen3vl_text_processor),
    ),  # use_kv_cache=False keeps the family test fast; test_qwenimage21_kv_cache_steps_change_the_token_count runs it on
    "z_image": TinyFamily(
        "ZImagePipeline", "ZImageTransformer2DModel",
        dict(in_channels=4, dim=32, n_layers=2, n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=TEXT_DIM,
             axes_dims=[4, 6, 6], axes_lens=[64, 32, 32]),
        _TEXT, dict(height=64, width=64), dict(guidance_scale=4.0), dict(guidance_scale=0.0), embeds_as_list=True,
    ),
    "lumina2": TinyFamily(
        "Lumina2Pipeline", "Lumina2Transformer2DModel",
        dict(sample_size=8, patch_size=2, in_channels=4, hidden_size=32, num_layers=2, num_refiner_layers=1,
             num_attention_heads=2, num_kv_heads=2, multiple_of=16, axes_dim_rope=(4, 4, 8), axes_lens=(32, 32, 32),
             cap_feat_dim=TEXT_DIM),
        _TEXT, dict(height=64, width=64), dict(guidance_scale=4.0), dict(guidance_scale=1.0),
        masks=("prompt_attention_mask",),
    ),
}  # fmt: skip

ALL_FAMILIES: dict[str, TinyFamily] = {**FAMILIES, **MORE_FAMILIES}


# ---------------------------------------------------------------------------------------------- without a pipeline
@dataclass(frozen=True)
class LoopFamily:
    """A transformer whose pipeline cannot run here (`why`), tested through `loop_run`: a hand-written
    flow-matching Euler loop that calls it the way its pipeline would."""

    transformer: str
    config: dict
    latent_shape: tuple  # (batch 1, ...) as the transformer takes `hidden_states`
    why: str
    conditioning: Any  # generator -> the call's other keyword arguments
    timestep_scale: float = 1.0  # the transformer gets the scheduler's timestep divided by this
    cfg: bool = False  # batch [cond, uncond] in one call and guide with scale 3 (OmniGen's pipeline)

    def make_transformer(self) -> torch.nn.Module:
        import diffusers

        return getattr(diffusers, self.transformer)(**self.config).eval()


def _positions(frame: int, height: int, width: int, text: int = 0) -> torch.Tensor:
    """(h * w, 4) FLUX.2/3-style (t, h, w, l) ids of one image, or (text, 4) ids of text tokens."""
    if text:
        return torch.cat([torch.zeros(text, 3, dtype=torch.long), torch.arange(text)[:, None]], dim=1)
    grid = torch.stack(torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij"), dim=-1)
    column = torch.full((height * width, 1), frame)
    return torch.cat([column, grid.reshape(-1, 2), torch.zeros_like(column)], dim=1)


def _flux3_conditioning(g: torch.Generator) -> dict:
    return dict(
        encoder_hidden_states=torch.randn(1, TEXT_TOKENS, TEXT_DIM, generator=g),
        img_ids=_positions(0, 4, 4),
        txt_ids=_positions(0, 0, 0, text=TEXT_TOKENS),
        image_cond_hidden_states=torch.randn(1, 4, 16, generator=g),  # one 2 x 2 reference image
        image_cond_ids=_positions(1, 2, 2),
    )


def _omnigen_conditioning(g: torch.Generator) -> dict:
    tokens = 1 + 4 + 16  # text tokens, the time token, 4 x 4 image patches
    return dict(
        input_ids=torch.randint(1, 64, (2, 4), generator=g),  # [cond, uncond] prompts
        input_img_latents=[],
        input_image_sizes={},
        attention_mask=torch.ones(2, tokens, tokens),
        position_ids=torch.arange(tokens).expand(2, tokens),
    )


LOOP_FAMILIES: dict[str, LoopFamily] = {
    "flux3": LoopFamily(
        "Flux3Transformer2DModel",
        dict(in_channels=16, cond_in_channels=16, num_layers=1, num_single_layers=2, attention_head_dim=16,
             num_attention_heads=2, joint_attention_dim=TEXT_DIM, timestep_channels=32, mlp_ratio=2.0,
             axes_dims_rope=(4, 4, 4, 4)),
        (1, 16, 16), "no FLUX.3 pipeline in diffusers 0.42.1", _flux3_conditioning, timestep_scale=1000.0,
    ),
    "omnigen": LoopFamily(
        "OmniGenTransformer2DModel",
        dict(in_channels=4, patch_size=2, hidden_size=32, num_attention_heads=2, num_key_value_heads=2,
             intermediate_size=64, num_layers=2, pad_token_id=0, vocab_size=64, max_position_embeddings=256,
             original_max_position_embeddings=128, rope_scaling={"short_factor": [1.0] * 8, "long_factor": [1.0] * 8},
             pos_embed_max_size=16, time_step_dim=32),
        (1, 4, 8, 8), "OmniGenPipeline's multimodal processor needs torchvision (no CPU wheel on PyPI)",
        _omnigen_conditioning, cfg=True,
    ),
}  # fmt: skip


def loop_run(transformer: torch.nn.Module, family: str, scheduler: Any, steps: int = 4, seed: int = 0) -> torch.Tensor:
    """Denoise `LOOP_FAMILIES[family]`'s latents with `scheduler` (a FlowMatchEulerDiscreteScheduler), calling
    `transformer` once per step as its pipeline would; returns the final latents."""
    spec = LOOP_FAMILIES[family]
    g = torch.Generator().manual_seed(seed)
    conditioning = spec.conditioning(g)
    latents = torch.randn(spec.latent_shape, generator=g)
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        batch = torch.cat([latents, latents]) if spec.cfg else latents
        timestep = (t / spec.timestep_scale).expand(batch.shape[0])
        out = transformer(hidden_states=batch, timestep=timestep, return_dict=False, **conditioning)[0]
        if spec.cfg:
            cond, uncond = out.chunk(2)
            out = uncond + 3.0 * (cond - uncond)
        latents = scheduler.step(out, t, latents, return_dict=False)[0]
    return latents


def tiny_pipeline(family: str, seed: int = 0, **transformer_kwargs: Any):
    """A real diffusers pipeline of `family` with a tiny random transformer and no text encoder or VAE."""
    import diffusers

    if family not in ALL_FAMILIES:
        raise ValueError(f"unknown family {family!r}; families: {', '.join(ALL_FAMILIES)}")
    spec = ALL_FAMILIES[family]
    torch.manual_seed(seed)
    transformer = spec.make_transformer(**transformer_kwargs).eval()
    extra = {name: _component(spec, value, transformer_kwargs) for name, value in spec.components.items()}
    scheduler = getattr(diffusers, spec.scheduler)(**spec.scheduler_kwargs)
    pipeline_cls = getattr(diffusers, spec.pipeline)
    params = inspect.signature(pipeline_cls.__init__).parameters
    components = {name: None for name in params if name not in ("self", "args", "kwargs")}
    components.update(transformer=transformer, scheduler=scheduler)
    for name, param in params.items():
        if param.default is not inspect.Parameter.empty and name not in ("transformer", "scheduler"):
            components.pop(name, None)
    components.update(extra)
    pipe = pipeline_cls(**components)
    if spec.call_patches:
        pipe.__class__ = _patched_calls(pipeline_cls, spec.call_patches)
    for name, value in spec.attributes.items():
        setattr(pipe, name, value)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _patched_calls(cls: type, patches: tuple) -> type:
    """A subclass of pipeline class `cls` (same name) whose calls run with `patches` in place, restored after."""
    import importlib

    def __call__(self, *args, **kwargs):
        saved = []
        try:
            for module, name, value in patches:
                target = importlib.import_module(module)
                saved.append((target, name, getattr(target, name)))
                setattr(target, name, value)
            return cls.__call__(self, *args, **kwargs)
        finally:
            for target, name, value in reversed(saved):
                setattr(target, name, value)

    return type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__})


def _component(spec: TinyFamily, value: Any, transformer_kwargs: dict) -> Any:
    if value == "transformer":  # a second random transformer of the same config
        return spec.make_transformer(**transformer_kwargs).eval()
    return value() if inspect.isfunction(value) else value


def tiny_inputs(family: str, *, cfg: bool = True, batch: int = 1, seed: int = 0, steps: int = 6) -> dict:
    """Call kwargs for `tiny_pipeline(family)`: prompt embeddings, size, steps, a seeded generator, latent output."""
    g = torch.Generator().manual_seed(seed)
    kw = ALL_FAMILIES[family].make_inputs(batch, cfg, g)
    kw.update(num_inference_steps=steps, generator=torch.Generator().manual_seed(seed + 1), output_type="latent")
    return kw


def run(pipe, family: str, **kw) -> torch.Tensor:
    """Call the pipeline with `tiny_inputs(family, **kw)` and return its (latent) output as a tensor."""
    out = pipe(**tiny_inputs(family, **kw))
    value = next((getattr(out, attr) for attr in ("images", "frames") if hasattr(out, attr)), None)
    value = out[0] if value is None else value
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
        return torch.cat([part.flatten() for part in value])  # one latent per section (FramePack)
    return torch.as_tensor(value)


# ------------------------------------------------------------------------------------------------ with text encoders
TINY_VOCAB = (
    "a an the red green blue yellow white black circle square triangle star on over with stripes dots checker "
    "plain moving left right up down big small cat dog tree house car sky sea"
).split()


def word_tokenizer(max_length: int = 77, words=TINY_VOCAB):
    """A word-level fast tokenizer over `words`, built offline (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1, "</s>": 2}
    vocab.update({w: i + 3 for i, w in enumerate(dict.fromkeys(words))})
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>", eos_token="</s>", model_max_length=max_length
    )


def tiny_text_flux(seed: int = 0, vae: bool = False, **transformer_kwargs: Any):
    """A FluxPipeline with a tiny transformer, tiny random CLIP and T5 text encoders and a word tokenizer: it takes
    text prompts (`max_sequence_length=16` is set by `TINY_TEXT_CALL`) and runs offline. With `vae=True` it also has
    a tiny random AutoencoderKL, so it can decode images (output_type "np"/"pil")."""
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    tokenizer = word_tokenizer()
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=77, eos_token_id=2, pad_token_id=0,
        )
    ).eval()  # fmt: skip
    t5 = T5EncoderModel(
        T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4)
    ).eval()
    pipe = diffusers.FluxPipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(),
        vae=_tiny_vae() if vae else None,
        text_encoder=clip,
        tokenizer=tokenizer,
        text_encoder_2=t5,
        tokenizer_2=word_tokenizer(16),
        transformer=FAMILIES["flux"].make_transformer(**transformer_kwargs).eval(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 8, 8), latent_channels=4,
        norm_num_groups=4, layers_per_block=1, shift_factor=0.0, scaling_factor=1.0,
    ).eval()  # fmt: skip


TINY_TEXT_CALL = {"height": 64, "width": 64, "max_sequence_length": 16}
