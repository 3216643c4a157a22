"""Tiny random-weight pipelines of every supported family, for tests, benchmarks and calibration smoke runs.

They run the real diffusers pipeline classes with small transformer configs and no text encoder or VAE: prompt
embeddings are passed in and `output_type="latent"`. Random weights prove mechanics, not quality.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class TinyFamily:
    pipeline: str  # diffusers pipeline class name
    make_transformer: Callable[..., torch.nn.Module]
    make_inputs: Callable[[int, bool, torch.Generator], dict]  # (batch, cfg, generator) -> call kwargs
    scheduler: str = "FlowMatchEulerDiscreteScheduler"
    scheduler_kwargs: dict | None = None
    cfg_kwargs: dict | None = None  # call kwargs that turn CFG on
    no_cfg_kwargs: dict | None = None  # call kwargs that turn CFG off


def _randn(*shape: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(*shape, generator=generator)


# ------------------------------------------------------------------------------------------------ transformers
def _flux(layers: int = 2, single_layers: int = 2, **kw) -> torch.nn.Module:
    from diffusers import FluxTransformer2DModel

    cfg = dict(
        patch_size=1,
        in_channels=16,
        num_layers=layers,
        num_single_layers=single_layers,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8],
    )
    cfg.update(kw)
    return FluxTransformer2DModel(**cfg)


def _flux_inputs(batch: int, cfg: bool, g: torch.Generator) -> dict:
    kw = dict(
        prompt_embeds=_randn(batch, 8, 32, generator=g),
        pooled_prompt_embeds=_randn(batch, 32, generator=g),
        height=64,
        width=64,
    )
    if cfg:
        kw.update(
            negative_prompt_embeds=_randn(batch, 8, 32, generator=g),
            negative_pooled_prompt_embeds=_randn(batch, 32, generator=g),
            true_cfg_scale=3.0,
        )
    return kw


def _wan(layers: int = 3, **kw) -> torch.nn.Module:
    from diffusers import WanTransformer3DModel

    cfg = dict(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=4,
        text_dim=32,
        freq_dim=32,
        ffn_dim=64,
        num_layers=layers,
        rope_max_seq_len=32,
    )
    cfg.update(kw)
    return WanTransformer3DModel(**cfg)


def _wan_inputs(batch: int, cfg: bool, g: torch.Generator) -> dict:
    kw = dict(prompt_embeds=_randn(batch, 8, 32, generator=g), height=64, width=64, num_frames=5)
    if cfg:
        kw.update(negative_prompt_embeds=_randn(batch, 8, 32, generator=g), guidance_scale=4.0)
    else:
        kw.update(guidance_scale=1.0)
    return kw


def _hunyuan(layers: int = 2, single_layers: int = 2, **kw) -> torch.nn.Module:
    from diffusers import HunyuanVideoTransformer3DModel

    cfg = dict(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=16,
        num_layers=layers,
        num_single_layers=single_layers,
        num_refiner_layers=1,
        patch_size=2,
        patch_size_t=1,
        guidance_embeds=True,
        text_embed_dim=32,
        pooled_projection_dim=32,
        rope_axes_dim=(4, 6, 6),
    )
    cfg.update(kw)
    return HunyuanVideoTransformer3DModel(**cfg)


def _hunyuan_inputs(batch: int, cfg: bool, g: torch.Generator) -> dict:
    kw = dict(
        prompt_embeds=_randn(batch, 8, 32, generator=g),
        pooled_prompt_embeds=_randn(batch, 32, generator=g),
        prompt_attention_mask=torch.ones(batch, 8, dtype=torch.long),
        height=64,
        width=64,
        num_frames=5,
    )
    if cfg:
        kw.update(
            negative_prompt_embeds=_randn(batch, 8, 32, generator=g),
            negative_pooled_prompt_embeds=_randn(batch, 32, generator=g),
            negative_prompt_attention_mask=torch.ones(batch, 8, dtype=torch.long),
            true_cfg_scale=3.0,
        )
    return kw


def _cogvideox(layers: int = 3, **kw) -> torch.nn.Module:
    from diffusers import CogVideoXTransformer3DModel

    cfg = dict(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=4,
        time_embed_dim=16,
        text_embed_dim=32,
        num_layers=layers,
        sample_width=8,
        sample_height=8,
        sample_frames=5,
        patch_size=2,
        temporal_compression_ratio=4,
        max_text_seq_length=8,
    )
    cfg.update(kw)
    return CogVideoXTransformer3DModel(**cfg)


def _cogvideox_inputs(batch: int, cfg: bool, g: torch.Generator) -> dict:
    kw = dict(
        prompt_embeds=_randn(batch, 8, 32, generator=g),
        height=64,
        width=64,
        num_frames=5,
        max_sequence_length=8,
    )
    if cfg:
        kw.update(negative_prompt_embeds=_randn(batch, 8, 32, generator=g), guidance_scale=4.0)
    else:
        kw.update(guidance_scale=1.0)
    return kw


def _ltx(layers: int = 3, **kw) -> torch.nn.Module:
    from diffusers import LTXVideoTransformer3DModel

    cfg = dict(
        in_channels=8,
        out_channels=8,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=2,
        attention_head_dim=16,
        cross_attention_dim=32,
        num_layers=layers,
        caption_channels=32,
    )
    cfg.update(kw)
    return LTXVideoTransformer3DModel(**cfg)


def _ltx_inputs(batch: int, cfg: bool, g: torch.Generator) -> dict:
    kw = dict(
        prompt_embeds=_randn(batch, 8, 32, generator=g),
        prompt_attention_mask=torch.ones(batch, 8, dtype=torch.long),
        height=128,
        width=128,
        num_frames=9,
    )
    if cfg:
        kw.update(
            negative_prompt_embeds=_randn(batch, 8, 32, generator=g),
            negative_prompt_attention_mask=torch.ones(batch, 8, dtype=torch.long),
            guidance_scale=3.0,
        )
    else:
        kw.update(guidance_scale=1.0)
    return kw


def _sd3(layers: int = 3, **kw) -> torch.nn.Module:
    from diffusers import SD3Transformer2DModel

    cfg = dict(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        num_layers=layers,
        attention_head_dim=16,
        num_attention_heads=2,
        caption_projection_dim=32,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        out_channels=4,
    )
    cfg.update(kw)
    return SD3Transformer2DModel(**cfg)


def _sd3_inputs(batch: int, cfg: bool, g: torch.Generator) -> dict:
    kw = dict(
        prompt_embeds=_randn(batch, 8, 32, generator=g),
        pooled_prompt_embeds=_randn(batch, 32, generator=g),
        height=64,
        width=64,
    )
    if cfg:
        kw.update(
            negative_prompt_embeds=_randn(batch, 8, 32, generator=g),
            negative_pooled_prompt_embeds=_randn(batch, 32, generator=g),
            guidance_scale=4.0,
        )
    else:
        kw.update(guidance_scale=1.0)
    return kw


def _pixart(layers: int = 3, **kw) -> torch.nn.Module:
    from diffusers import PixArtTransformer2DModel

    cfg = dict(
        sample_size=8,
        num_layers=layers,
        patch_size=2,
        attention_head_dim=16,
        num_attention_heads=2,
        caption_channels=32,
        in_channels=4,
        cross_attention_dim=32,
        out_channels=8,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    )
    cfg.update(kw)
    return PixArtTransformer2DModel(**cfg)


def _pixart_inputs(batch: int, cfg: bool, g: torch.Generator) -> dict:
    kw = dict(
        prompt_embeds=_randn(batch, 8, 32, generator=g),
        prompt_attention_mask=torch.ones(batch, 8, dtype=torch.long),
        height=64,
        width=64,
        use_resolution_binning=False,
    )
    if cfg:
        kw.update(
            negative_prompt_embeds=_randn(batch, 8, 32, generator=g),
            negative_prompt_attention_mask=torch.ones(batch, 8, dtype=torch.long),
            negative_prompt=None,
            guidance_scale=4.0,
        )
    else:
        kw.update(guidance_scale=1.0)
    return kw


def _qwen(layers: int = 3, **kw) -> torch.nn.Module:
    from diffusers import QwenImageTransformer2DModel

    cfg = dict(
        patch_size=2,
        in_channels=16,
        out_channels=4,
        num_layers=layers,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        guidance_embeds=False,
        axes_dims_rope=(4, 6, 6),
    )
    cfg.update(kw)
    return QwenImageTransformer2DModel(**cfg)


def _qwen_inputs(batch: int, cfg: bool, g: torch.Generator) -> dict:
    kw = dict(
        prompt_embeds=_randn(batch, 8, 32, generator=g),
        prompt_embeds_mask=torch.ones(batch, 8, dtype=torch.long),
        height=64,
        width=64,
    )
    if cfg:
        kw.update(
            negative_prompt_embeds=_randn(batch, 8, 32, generator=g),
            negative_prompt_embeds_mask=torch.ones(batch, 8, dtype=torch.long),
            true_cfg_scale=3.0,
        )
    else:
        kw.update(true_cfg_scale=1.0)
    return kw


FAMILIES: dict[str, TinyFamily] = {
    "flux": TinyFamily("FluxPipeline", _flux, _flux_inputs),
    "wan": TinyFamily("WanPipeline", _wan, _wan_inputs),
    "hunyuan_video": TinyFamily("HunyuanVideoPipeline", _hunyuan, _hunyuan_inputs),
    "cogvideox": TinyFamily(
        "CogVideoXPipeline",
        _cogvideox,
        _cogvideox_inputs,
        scheduler="CogVideoXDDIMScheduler",
        scheduler_kwargs={"timestep_spacing": "trailing"},
    ),
    "ltx": TinyFamily("LTXPipeline", _ltx, _ltx_inputs),
    "sd3": TinyFamily("StableDiffusion3Pipeline", _sd3, _sd3_inputs),
    "pixart": TinyFamily("PixArtAlphaPipeline", _pixart, _pixart_inputs, scheduler="DPMSolverMultistepScheduler"),
    "qwenimage": TinyFamily("QwenImagePipeline", _qwen, _qwen_inputs),
}


def tiny_pipeline(family: str, seed: int = 0, **transformer_kwargs: Any):
    """A real diffusers pipeline of `family` with a tiny random transformer and no text encoder or VAE."""
    import diffusers

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; families: {', '.join(FAMILIES)}")
    spec = FAMILIES[family]
    torch.manual_seed(seed)
    transformer = spec.make_transformer(**transformer_kwargs).eval()
    scheduler = getattr(diffusers, spec.scheduler)(**(spec.scheduler_kwargs or {}))
    pipeline_cls = getattr(diffusers, spec.pipeline)
    import inspect

    params = inspect.signature(pipeline_cls.__init__).parameters
    components = {name: None for name in params if name not in ("self", "args", "kwargs")}
    components.update(transformer=transformer, scheduler=scheduler)
    for name, param in params.items():
        if param.default is not inspect.Parameter.empty and name not in ("transformer", "scheduler"):
            components.pop(name, None)
    pipe = pipeline_cls(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_inputs(family: str, *, cfg: bool = True, batch: int = 1, seed: int = 0, steps: int = 6) -> dict:
    """Call kwargs for `tiny_pipeline(family)`: prompt embeddings, size, steps, a seeded generator, latent output."""
    g = torch.Generator().manual_seed(seed)
    kw = FAMILIES[family].make_inputs(batch, cfg, g)
    kw.update(num_inference_steps=steps, generator=torch.Generator().manual_seed(seed + 1), output_type="latent")
    return kw


def run(pipe, family: str, **kw) -> torch.Tensor:
    """Call the pipeline with `tiny_inputs(family, **kw)` and return its (latent) output as a tensor."""
    out = pipe(**tiny_inputs(family, **kw))
    for attr in ("images", "frames"):
        if hasattr(out, attr):
            return torch.as_tensor(getattr(out, attr))
    return torch.as_tensor(out[0])


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
        transformer=_flux(**transformer_kwargs).eval(),
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
