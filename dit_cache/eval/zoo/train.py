"""Build and train a zoo model from scratch, then save it as a diffusers pipeline folder.

    python -m dit_cache.eval.zoo.train --name shapes-image [--out DIR] [--steps N]
    python -m dit_cache.eval.zoo.train --name shapes-video [--out DIR] [--steps N]
    python -m dit_cache.eval.zoo.train --name shapes-pixart [--out DIR] [--steps N] [--max-minutes M]
    python -m dit_cache.eval.zoo.train --name shapes-image --render docs/images/zoo-shapes-image.png

Everything is built here (nothing is downloaded):

1. a word-level tokenizer over the prompt vocabulary of :mod:`.shapes`;
2. tiny text encoders of the classes the pipeline expects, left at their (seeded) random initialisation:
   the transformer learns to read them;
3. a tiny VAE of the pipeline's class, trained to reconstruct the procedural shapes (PixArt reuses
   ``shapes-image``'s), with its latent normalisation (Flux: ``scaling_factor``/``shift_factor``; Wan:
   ``latents_mean``/``latents_std``; PixArt: ``scaling_factor``) measured on the training set;
4. the transformer, trained by flow matching (PixArt's shipped scheduler is DPM-Solver++ on flow sigmas; with
   ``--objective epsilon`` DDPM epsilon prediction on PixArt's linear-beta schedule instead) on precomputed VAE
   latents and text embeddings (computed with the pipeline's own ``encode_prompt``, so training sees exactly what
   inference feeds it).

Flow matching follows diffusers' Flux/SD3/Wan training scripts: ``x_t = (1 - s) x_0 + s eps``, target
``eps - x_0``, ``s = shift * u / (1 + (shift - 1) u)`` with ``u`` uniform (the scheduler's shift), 10% of the
conditions dropped to the empty prompt (so classifier-free guidance works), AdamW with warm-up and cosine decay,
gradient clipping at 1, and an EMA of the weights, which is what is saved.

Run it single-threaded and niced on shared machines: it sets ``torch.set_num_threads(--threads)`` (default 1).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time

import numpy as np
import torch

from . import MAX_SEQUENCE_LENGTH, names
from . import path as zoo_path
from . import prompts as zoo_prompts
from . import settings as zoo_settings
from . import shapes as S

TEXT_DIM = 32

CONFIGS: dict[str, dict] = {
    "shapes-image": {
        "kind": "image",
        "seed": 0,
        "size": 64,
        "vae": {"block_out_channels": [16, 32, 32], "latent_channels": 16, "layers_per_block": 1},
        "vae_steps": 1000,
        "vae_batch": 16,
        "vae_lr": 1e-3,
        "vae_kl": 1e-6,  # per latent element, against L1 + MSE per pixel: latents nearly deterministic
        "vae_edge": 0.5,
        "vae_shape_weight": 0.0,
        "vae_crop": None,
        "decoder_steps": 600,
        "decoder_shape_weight": 4.0,
        "transformer": {
            "num_layers": 2,
            "num_single_layers": 4,
            "attention_head_dim": 32,
            "num_attention_heads": 4,
            "axes_dims_rope": [8, 12, 12],
        },
        "dataset": 20000,
        "steps": 2500,
        "batch": 32,
        "lr": 1e-3,
        "continue_lr": 5e-4,
        "warmup": 200,
        "ema": 0.999,
        "shift": 2.0,
        "cond_dropout": 0.1,
        "short_prompt_p": 0.2,
        # 2.3 M parameters: float32 would not leave room for the VAE in 10 MB. diffusers upcasts to float32 on load.
        "transformer_dtype": "float16",
    },
    "shapes-video": {
        "kind": "video",
        "seed": 0,
        "size": 64,
        "num_frames": 9,
        # patchify 2x2 -> one 2x down stage (2x in time): latents 1/4 the size, 1 + (frames - 1) / 2 latent frames
        "vae": {
            "base_dim": 16,
            "z_dim": 16,
            "dim_mult": [1, 2],
            "num_res_blocks": 1,
            "temperal_downsample": [True],
            "patch_size": 2,
        },
        "vae_steps": 1900,
        "vae_frame_steps": 1500,
        "vae_frame_batch": 16,
        "vae_batch": 4,
        "vae_mix_lengths": True,
        "vae_logvar_init": -12.0,
        "vae_lr": 1e-3,
        "vae_kl": 1e-6,  # per latent element, against L1 + MSE per pixel: latents nearly deterministic
        "vae_edge": 0.5,
        "vae_shape_weight": 4.0,
        "vae_crop": None,
        "decoder_steps": 150,
        "decoder_frame_steps": 150,
        "decoder_shape_weight": 4.0,
        "transformer": {
            "patch_size": [1, 2, 2],
            "num_attention_heads": 4,
            "attention_head_dim": 32,
            "ffn_dim": 512,
            "num_layers": 5,
            "freq_dim": 256,
        },
        "dataset": 3000,
        "steps": 2000,
        "batch": 16,
        "lr": 1e-3,
        "continue_lr": 5e-4,
        "warmup": 200,
        "ema": 0.999,
        "shift": 3.0,
        "cond_dropout": 0.1,
        "short_prompt_p": 0.2,
        "transformer_dtype": "float32",
    },
    # PixArt-Sigma: a cross-attention DiT whose pipeline batches CFG into one call ([uncond, cond]) and opens no
    # cache_context. It reuses shapes-image's trained VAE (16 latent channels, 4x down) and is trained on the
    # objective of the scheduler it ships: flow matching, sampled by DPM-Solver++ on flow sigmas (SANA's setup).
    # PixArt's own DDPM epsilon objective (--objective epsilon) learnt far slower here: 5/8 colours and several
    # blobs per image after 1,500 steps, where flow matching had 8/8 and one shape after 500 (docs/zoo.md).
    "shapes-pixart": {
        "kind": "image",
        "pipeline": "pixart",
        "seed": 0,
        "size": 64,
        "vae_from": "shapes-image",
        "vae_steps": 0,
        "decoder_steps": 0,
        "transformer": {
            "num_layers": 6,
            "num_attention_heads": 4,
            "attention_head_dim": 32,
            "patch_size": 2,
        },
        "objective": "flow",  # or "epsilon" (--objective)
        "shift": 2.0,  # flow only
        "dataset": 8000,
        "steps": 1200,
        "batch": 32,
        "lr": 1e-3,
        "continue_lr": 5e-4,
        "warmup": 200,
        "ema": 0.999,
        "cond_dropout": 0.1,
        "short_prompt_p": 0.2,
        "transformer_dtype": "float16",
    },
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------------------------------------------
# components


def build_tokenizer(max_length: int = MAX_SEQUENCE_LENGTH):
    """Word-level tokenizer over :data:`shapes.VOCAB`: lower-cases, drops punctuation, appends ``</s>``."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for word in S.VOCAB:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace(Regex(r"[^a-z]+"), " ")])
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=max_length,
        padding_side="right",
        truncation_side="right",
    )


def _t5_kwargs(vocab_size: int) -> dict:
    return {
        "vocab_size": vocab_size,
        "d_model": TEXT_DIM,
        "d_kv": 16,
        "d_ff": 64,
        "num_layers": 1,
        "num_heads": 2,
        "relative_attention_num_buckets": 8,
        "relative_attention_max_distance": 16,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "decoder_start_token_id": 0,
    }


def build_image_pipeline(cfg: dict):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    tokenizer = build_tokenizer()
    vocab_size = len(tokenizer)
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=TEXT_DIM,
            intermediate_size=64,
            projection_dim=TEXT_DIM,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=MAX_SEQUENCE_LENGTH,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=1,
        )
    ).eval()
    t5 = T5EncoderModel(T5Config(**_t5_kwargs(vocab_size))).eval()
    v = cfg["vae"]
    levels = len(v["block_out_channels"])
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(v["block_out_channels"]),
        layers_per_block=v["layers_per_block"],
        latent_channels=v["latent_channels"],
        norm_num_groups=8,
        sample_size=cfg["size"],
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    t = cfg["transformer"]
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * v["latent_channels"],
        num_layers=t["num_layers"],
        num_single_layers=t["num_single_layers"],
        attention_head_dim=t["attention_head_dim"],
        num_attention_heads=t["num_attention_heads"],
        joint_attention_dim=TEXT_DIM,
        pooled_projection_dim=TEXT_DIM,
        guidance_embeds=False,
        axes_dims_rope=tuple(t["axes_dims_rope"]),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=cfg["shift"], use_dynamic_shifting=False)
    return FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=clip,
        tokenizer=tokenizer,
        text_encoder_2=t5,
        tokenizer_2=tokenizer,
        transformer=transformer,
    )


def build_video_pipeline(cfg: dict):
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = build_tokenizer()
    umt5 = UMT5EncoderModel(UMT5Config(**_t5_kwargs(len(tokenizer)))).eval()
    v = cfg["vae"]
    z = v["z_dim"]
    patch = v.get("patch_size") or 1
    vae = AutoencoderKLWan(
        base_dim=v["base_dim"],
        z_dim=z,
        dim_mult=list(v["dim_mult"]),
        num_res_blocks=v["num_res_blocks"],
        attn_scales=[],
        temperal_downsample=list(v["temperal_downsample"]),
        latents_mean=[0.0] * z,
        latents_std=[1.0] * z,
        in_channels=3 * patch * patch,
        out_channels=3 * patch * patch,
        patch_size=v.get("patch_size"),
        scale_factor_temporal=2 ** sum(v["temperal_downsample"]),
        scale_factor_spatial=patch * 2 ** len(v["temperal_downsample"]),
    )
    t = cfg["transformer"]
    transformer = WanTransformer3DModel(
        patch_size=tuple(t["patch_size"]),
        num_attention_heads=t["num_attention_heads"],
        attention_head_dim=t["attention_head_dim"],
        in_channels=z,
        out_channels=z,
        text_dim=TEXT_DIM,
        freq_dim=t["freq_dim"],
        ffn_dim=t["ffn_dim"],
        num_layers=t["num_layers"],
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=1024,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=cfg["shift"], use_dynamic_shifting=False)
    return WanPipeline(tokenizer=tokenizer, text_encoder=umt5, vae=vae, scheduler=scheduler, transformer=transformer)


def build_pixart_pipeline(cfg: dict):
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    tokenizer = build_tokenizer()
    t5 = T5EncoderModel(T5Config(**_t5_kwargs(len(tokenizer)))).eval()
    vae = AutoencoderKL.from_pretrained(zoo_path(cfg["vae_from"]), subfolder="vae")
    t = cfg["transformer"]
    inner = t["num_attention_heads"] * t["attention_head_dim"]
    transformer = PixArtTransformer2DModel(
        num_attention_heads=t["num_attention_heads"],
        attention_head_dim=t["attention_head_dim"],
        in_channels=vae.config.latent_channels,
        out_channels=vae.config.latent_channels,  # no learned variance: the pipeline takes the output as epsilon
        num_layers=t["num_layers"],
        cross_attention_dim=inner,
        caption_channels=TEXT_DIM,
        sample_size=cfg["size"] // 2 ** (len(vae.config.block_out_channels) - 1),
        patch_size=t["patch_size"],
        norm_num_groups=8,
    )
    # DPM-Solver++ (order 2) on PixArt's training noise schedule (linear betas, 1000 steps, epsilon prediction), or
    # on flow-matching sigmas with the model predicting the velocity (SANA's configuration of the same scheduler)
    flow = cfg["objective"] == "flow"
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        prediction_type="flow_prediction" if flow else "epsilon",
        use_flow_sigmas=flow,
        flow_shift=cfg["shift"] if flow else 1.0,
    )
    return PixArtSigmaPipeline(
        tokenizer=tokenizer, text_encoder=t5, vae=vae, transformer=transformer, scheduler=scheduler
    )


BUILDERS = {"flux": build_image_pipeline, "wan": build_video_pipeline, "pixart": build_pixart_pipeline}


def pipeline_kind(cfg: dict) -> str:
    """The pipeline family of a config: ``flux`` (image), ``wan`` (video) or ``pixart``."""
    return cfg.get("pipeline") or ("flux" if cfg["kind"] == "image" else "wan")


# ----------------------------------------------------------------------------------------------------------------
# data


def _to_tensor(arr: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) or (N, F, H, W, 3) -> (N, 3, F, H, W), in [-1, 1]."""
    x = torch.from_numpy(arr).float().div_(127.5).sub_(1.0)
    return x.permute(0, 3, 1, 2) if x.ndim == 4 else x.permute(0, 4, 1, 2, 3)


def _specs(kind: str) -> list[S.Spec]:
    return S.all_image_specs() if kind == "image" else S.all_video_specs()


def draw_batch(cfg: dict, n: int, rng: np.random.Generator) -> tuple[torch.Tensor, np.ndarray]:
    """``n`` random samples (uniform over specs) in [-1, 1] and the indices of their specs."""
    specs = _specs(cfg["kind"])
    idx = rng.integers(len(specs), size=n)
    if cfg["kind"] == "image":
        arr = np.stack([S.draw_image(specs[i], cfg["size"], rng) for i in idx])
    else:
        arr = np.stack([S.draw_video(specs[i], cfg["num_frames"], cfg["size"], rng) for i in idx])
    return _to_tensor(arr), idx


def _lr_lambda(warmup: int, steps: int, floor: float = 0.02):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        p = (step - warmup) / max(1, steps - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))

    return f


def _vae_batch(cfg: dict, step: int, batch: int, rng: np.random.Generator) -> torch.Tensor:
    """A VAE training batch. Video VAEs cycle through full clips, 5-frame clips (the first chunk plus one
    4-frame chunk, twice the samples) and single frames (six times the samples): similar cost per step, far more
    distinct backgrounds and shapes per step than full clips alone."""
    if cfg["kind"] == "image" or not cfg.get("vae_mix_lengths"):
        return draw_batch(cfg, batch, rng)[0]
    if step < cfg.get("vae_frame_steps", 0):  # first phase: single frames only (cheap, many distinct samples)
        return draw_batch({**cfg, "num_frames": 1}, cfg["vae_frame_batch"], rng)[0]
    frames = [cfg["num_frames"], 5, 1][step % 3]
    return draw_batch({**cfg, "num_frames": frames}, batch * {cfg["num_frames"]: 1, 5: 2, 1: 6}[frames], rng)[0]


def _dx(t: torch.Tensor) -> torch.Tensor:
    return t[..., :, 1:] - t[..., :, :-1]


def _dy(t: torch.Tensor) -> torch.Tensor:
    return t[..., 1:, :] - t[..., :-1, :]


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a.clamp(-1, 1) - b) / 2).pow(2).mean().item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))


# ----------------------------------------------------------------------------------------------------------------
# VAE


def _shape_weight(x: torch.Tensor, extra: float) -> torch.Tensor:
    """Per-pixel loss weight ``1 + extra`` on and around the (saturated) shape, 1 on the grey background.

    The shape covers a tenth of the picture, so without this the VAE spends its capacity on the textures and
    leaves the shape outlines soft.
    """
    sat = (x.amax(1) - x.amin(1)) / 2  # (B, [F,] H, W)
    m = (sat > 0.25).float()
    flat = torch.nn.functional.max_pool2d(m.reshape(-1, 1, *m.shape[-2:]), 5, stride=1, padding=2)
    return 1.0 + extra * flat.reshape(m.shape).unsqueeze(1)


def _vae_loss(y: torch.Tensor, x: torch.Tensor, w: torch.Tensor, edge_weight: float) -> tuple[torch.Tensor, float]:
    d = y - x
    rec = (w * d.abs()).mean() + (w * d.pow(2)).mean()
    # edges: L1 between the spatial gradients of output and input (keeps outlines and textures sharp)
    edge = (w[..., :, 1:] * (_dx(y) - _dx(x)).abs()).mean() + (w[..., 1:, :] * (_dy(y) - _dy(x)).abs()).mean()
    return rec + edge_weight * edge, (d.abs().mean() + d.pow(2).mean()).item()


@torch.no_grad()
def vae_psnr(vae, cfg: dict, n: int = 64) -> tuple[float, float, torch.Tensor, torch.Tensor]:
    """PSNR of posterior-mean reconstructions of ``n`` fixed test samples: over all pixels and over the shapes."""
    vae.eval()
    test, _ = draw_batch(cfg, n, np.random.default_rng(54321))
    rec = torch.cat([vae.decode(vae.encode(t).latent_dist.mode()).sample for t in test.split(16)])
    mask = _shape_weight(test, 1.0) > 1.0
    mse_shape = ((rec.clamp(-1, 1) - test) / 2).pow(2).masked_select(mask.expand_as(test)).mean().item()
    return _psnr(rec, test), 10 * math.log10(1.0 / max(mse_shape, 1e-12)), test, rec


def train_vae(
    vae, cfg: dict, steps: int, rng: np.random.Generator, work: str | None, decoder_only: bool = False
) -> dict:
    """Train the VAE (or, with ``decoder_only``, fine-tune its decoder with the encoder and so the latents frozen)."""
    tag = "decoder" if decoder_only else "vae"
    batch, lr = cfg["vae_batch"], cfg["vae_lr"]
    crop = None if decoder_only else cfg.get("vae_crop")
    if decoder_only:
        params = list(vae.decoder.parameters())
        if getattr(vae, "post_quant_conv", None) is not None:
            params += list(vae.post_quant_conv.parameters())
        for p in vae.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
    else:
        params = list(vae.parameters())
    if not decoder_only and cfg.get("vae_logvar_init") is not None:
        # start with a near-deterministic posterior (std e^-6) instead of std 1, which drowns the latents in noise
        with torch.no_grad():
            z = vae.config.z_dim
            vae.quant_conv.weight[z:] = 0.0
            vae.quant_conv.bias[z:] = cfg["vae_logvar_init"]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(min(100, steps // 10 + 1), steps))
    vae.train()
    t0, run = time.time(), []
    for step in range(steps):
        x = _vae_batch(cfg, step, batch, rng)
        if crop is not None and step < crop[1] * steps:
            c = crop[0]
            oy, ox = rng.integers(0, cfg["size"] - c + 1, size=2)
            x = x[..., oy : oy + c, ox : ox + c]
        with torch.set_grad_enabled(not decoder_only):
            post = vae.encode(x).latent_dist
            z = post.sample()
        y = vae.decode(z).sample
        loss, rec = _vae_loss(y, x, _shape_weight(x, cfg["vae_shape_weight"]), cfg["vae_edge"])
        if not decoder_only:
            loss = loss + cfg["vae_kl"] * (0.5 * (post.mean.pow(2) + post.var - 1.0 - post.logvar).mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        run.append(rec)
        if (step + 1) % 50 == 0 or step == steps - 1:
            log(f"{tag} step {step + 1}/{steps} rec {np.mean(run[-50:]):.4f} ({time.time() - t0:.0f}s)")
        if (step + 1) % 250 == 0 and step != steps - 1:
            log(f"{tag} step {step + 1}: test PSNR %.2f dB (shapes %.2f dB)" % vae_psnr(vae, cfg, 16)[:2])
            vae.train()
    for p in vae.parameters():
        p.requires_grad_(False)
    psnr, psnr_shape, test, rec = vae_psnr(vae, cfg)
    log(f"{tag} done: test PSNR {psnr:.2f} dB (shapes {psnr_shape:.2f} dB), {time.time() - t0:.0f}s")
    if work:
        _save_recon_png(test[:8], rec[:8], os.path.join(work, f"{tag}-recon.png"))
    return {
        f"{tag}_steps": steps,
        f"{tag}_test_psnr_db": round(psnr, 2),
        f"{tag}_test_psnr_shapes_db": round(psnr_shape, 2),
        f"{tag}_wall_s": round(time.time() - t0, 1),
    }


def _save_recon_png(x: torch.Tensor, y: torch.Tensor, png: str) -> None:
    from PIL import Image

    def rows(t):
        a = ((t.clamp(-1, 1) + 1) * 127.5).round().byte()
        if a.ndim == 5:  # (N, 3, F, H, W): frames side by side
            a = torch.cat(list(a.permute(2, 0, 1, 3, 4)), dim=-1)
        return torch.cat(list(a), dim=-1)  # all samples side by side

    grid = torch.cat([rows(x), rows(y)], dim=-2).permute(1, 2, 0).numpy()
    Image.fromarray(grid).save(png)


# ----------------------------------------------------------------------------------------------------------------
# transformer


class _Task:
    """What differs between Flux, Wan and PixArt: encoding the data set, the conditions, the noising objective and
    the transformer call."""

    def __init__(self, pipe, cfg: dict):
        self.pipe, self.cfg = pipe, cfg
        self.kind = cfg["kind"]
        self.family = pipeline_kind(cfg)
        specs = _specs(self.kind)
        self.n_specs = len(specs)
        self.texts = [sp.prompt(True) for sp in specs] + [sp.prompt(False) for sp in specs] + [""]
        self.null = len(self.texts) - 1
        with torch.no_grad():
            if self.family == "pixart":
                emb, mask, _, _ = pipe.encode_prompt(
                    prompt=self.texts,
                    do_classifier_free_guidance=False,
                    device="cpu",
                    clean_caption=False,
                    max_sequence_length=MAX_SEQUENCE_LENGTH,
                )
                self.emb, self.mask = emb.float(), mask
            elif self.family == "flux":
                emb, pooled, text_ids = pipe.encode_prompt(
                    prompt=self.texts, prompt_2=None, device="cpu", max_sequence_length=MAX_SEQUENCE_LENGTH
                )
                self.emb, self.pooled, self.text_ids = emb.float(), pooled.float(), text_ids
                lat = cfg["size"] // pipe.vae_scale_factor
                self.img_ids = pipe._prepare_latent_image_ids(1, lat // 2, lat // 2, "cpu", torch.float32)
                self.lat = lat
            else:
                emb, _ = pipe.encode_prompt(
                    prompt=self.texts,
                    negative_prompt=None,
                    do_classifier_free_guidance=False,
                    max_sequence_length=MAX_SEQUENCE_LENGTH,
                    device="cpu",
                )
                self.emb = emb.float()

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Raw VAE latents (posterior means) of images/clips in [-1, 1]."""
        return self.pipe.vae.encode(x).latent_dist.mode()

    def set_normalisation(self, raw: torch.Tensor) -> dict:
        vae = self.pipe.vae
        if self.family == "pixart":  # the pipeline decodes latents / scaling_factor: no shift
            vae.register_to_config(shift_factor=None, scaling_factor=round(1.0 / raw.std().item(), 6))
            return {"scaling_factor": vae.config.scaling_factor}
        if self.kind == "image":
            shift, std = raw.mean().item(), raw.std().item()
            vae.register_to_config(shift_factor=round(shift, 6), scaling_factor=round(1.0 / std, 6))
            return {"shift_factor": vae.config.shift_factor, "scaling_factor": vae.config.scaling_factor}
        dims = [0, 2, 3, 4]
        mean = [round(v, 6) for v in raw.mean(dim=dims).tolist()]
        std = [round(v, 6) for v in raw.std(dim=dims).tolist()]
        vae.register_to_config(latents_mean=mean, latents_std=std)
        return {"latents_mean": mean, "latents_std": std}

    def normalise(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw latents -> what the transformer sees (the inverse of the pipeline's decode-side un-normalisation)."""
        c = self.pipe.vae.config
        if self.family == "pixart":
            return raw * c.scaling_factor
        if self.kind == "image":
            z = (raw - c.shift_factor) * c.scaling_factor
            b, ch, h, w = z.shape
            return self.pipe._pack_latents(z, b, ch, h, w)
        mean = torch.tensor(c.latents_mean).view(1, -1, 1, 1, 1)
        std = torch.tensor(c.latents_std).view(1, -1, 1, 1, 1)
        return (raw - mean) / std

    def noised(self, x0: torch.Tensor, u: torch.Tensor, eps: torch.Tensor):
        """``(x_t, timestep the pipeline would pass, regression target)`` at noise levels ``u`` in (0, 1].

        Flow matching (Flux, Wan): ``x_t = (1 - s) x_0 + s eps``, target ``eps - x_0``, with the scheduler's
        shifted ``s``. Epsilon (PixArt): the scheduler's DDPM schedule at the integer timestep ``t = 1000 u``:
        ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``, target ``eps``.
        """
        if self.cfg.get("objective", "flow") == "epsilon":
            abar = self.pipe.scheduler.alphas_cumprod.float()
            t = (u * len(abar)).long().clamp(0, len(abar) - 1)
            a = abar[t].view(-1, *([1] * (x0.ndim - 1)))
            return a.sqrt() * x0 + (1 - a).sqrt() * eps, t, eps
        shift = self.cfg["shift"]
        s = shift * u / (1 + (shift - 1) * u)
        sv = s.view(-1, *([1] * (x0.ndim - 1)))
        # the Flux pipeline passes t / 1000 = sigma, the Wan pipeline the scheduler's t = 1000 sigma
        return (1 - sv) * x0 + sv * eps, s if self.family == "flux" else s * 1000.0, eps - x0

    def forward(self, model, xt: torch.Tensor, timestep: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if self.family == "pixart":
            return model(
                xt,
                encoder_hidden_states=self.emb[cond],
                encoder_attention_mask=self.mask[cond],
                timestep=timestep,
                added_cond_kwargs={"resolution": None, "aspect_ratio": None},
                return_dict=False,
            )[0]
        if self.family == "flux":
            return model(
                hidden_states=xt,
                timestep=timestep,
                guidance=None,
                pooled_projections=self.pooled[cond],
                encoder_hidden_states=self.emb[cond],
                txt_ids=self.text_ids,
                img_ids=self.img_ids,
                return_dict=False,
            )[0]
        return model(
            hidden_states=xt,
            timestep=timestep,
            encoder_hidden_states=self.emb[cond],
            return_dict=False,
        )[0]


def build_dataset(
    task: _Task, cfg: dict, n: int, rng: np.random.Generator, measure: bool = True
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """``n`` fresh samples as normalised latents. ``measure``: set the VAE's latent normalisation from them (first
    training only; a continued training keeps the normalisation the transformer already learnt)."""
    t0 = time.time()
    chunk = 256 if cfg["kind"] == "image" else 16
    raws, idxs = [], []
    for start in range(0, n, chunk):
        x, idx = draw_batch(cfg, min(chunk, n - start), rng)
        raws.append(task.encode(x))
        idxs.append(torch.from_numpy(idx))
        if (start // chunk) % 20 == 0:
            log(f"encoded {start + len(idx)}/{n} ({time.time() - t0:.0f}s)")
    raw = torch.cat(raws)
    norm = task.set_normalisation(raw) if measure else {}
    lat = task.normalise(raw)
    log(f"dataset: {tuple(lat.shape)} latents, std {lat.std():.3f}, {time.time() - t0:.0f}s")
    return lat, torch.cat(idxs), norm


def train_transformer(
    task: _Task,
    model,
    ema,
    cfg: dict,
    data,
    steps: int,
    rng,
    work,
    preview_every: int,
    max_minutes: float | None = None,
) -> dict:
    """Train ``steps`` steps (warm-up, cosine decay), or stop early once ``max_minutes`` of wall time are spent (the
    schedule stays planned for ``steps``; the record says how many were run)."""
    lat, spec_idx, *_ = data
    batch = cfg["batch"]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], betas=(0.9, 0.999), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg["warmup"], steps))
    gen = torch.Generator().manual_seed(cfg["seed"] + 1)
    model.train()
    t0, losses, planned = time.time(), [], steps
    for step in range(steps):
        if max_minutes is not None and time.time() - t0 > 60 * max_minutes:
            log(f"time limit of {max_minutes} min reached after {step} of {steps} steps")
            steps = step
            break
        i = torch.from_numpy(rng.integers(len(lat), size=batch))
        x0 = lat[i]
        cond = spec_idx[i].clone()
        short = torch.from_numpy(rng.random(batch) < cfg["short_prompt_p"])
        cond[short] += task.n_specs
        cond[torch.from_numpy(rng.random(batch) < cfg["cond_dropout"])] = task.null
        u = ((torch.randperm(batch, generator=gen) + torch.rand(batch, generator=gen)) / batch).clamp(1e-4, 1.0)
        eps = torch.randn(x0.shape, generator=gen)
        xt, timestep, target = task.noised(x0, u, eps)
        pred = task.forward(model, xt, timestep, cond)
        loss = (pred.float() - target).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        decay = min(cfg["ema"], (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), model.parameters()):
                pe.lerp_(p, 1 - decay)
        losses.append(loss.item())
        if (step + 1) % 50 == 0 or step == steps - 1:
            el = time.time() - t0
            log(
                f"step {step + 1}/{steps} loss {np.mean(losses[-50:]):.4f} lr {sched.get_last_lr()[0]:.2e}"
                f" ({el:.0f}s, {el / (step + 1):.2f}s/step)"
            )
        if work and preview_every and ((step + 1) % preview_every == 0):
            acc = preview(task.pipe, cfg, os.path.join(work, f"preview-{step + 1:05d}.png"), steps=20)
            log(f"preview at step {step + 1}: prompt following {acc}")
    model.eval()
    return {
        "steps": steps,
        "planned_steps": planned,
        "batch": batch,
        "final_loss": round(float(np.mean(losses[-100:])), 4),
        "transformer_wall_s": round(time.time() - t0, 1),
    }


@torch.no_grad()
def eval_loss(task: _Task, model, data, cfg: dict, n: int = 256) -> float:
    """Training loss of ``model`` on ``n`` fixed (sample, timestep, noise) triples with the full prompts."""
    lat, spec_idx, *_ = data
    n = min(n, len(lat))
    g = torch.Generator().manual_seed(999)
    i = torch.randperm(len(lat), generator=g)[:n]
    x0, cond = lat[i], spec_idx[i]
    u = (torch.arange(n) + 0.5) / n
    eps = torch.randn(x0.shape, generator=g)
    total = 0.0
    for a in range(0, n, 32):
        xt, timestep, target = task.noised(x0[a : a + 32], u[a : a + 32], eps[a : a + 32])
        pred = task.forward(model, xt, timestep, cond[a : a + 32])
        total += (pred.float() - target).pow(2).sum().item()
    return total / (n * x0[0].numel())


# ----------------------------------------------------------------------------------------------------------------
# sampling / checking


def generate(pipe, name_or_cfg, prompts: list[str], steps: int | None = None, seed: int = 0):
    """Images (list of HxWx3 uint8) or clips (list of FxHxWx3 uint8) for ``prompts`` with the default settings."""
    name = name_or_cfg["name"] if isinstance(name_or_cfg, dict) else name_or_cfg
    kind = CONFIGS[name]["kind"]
    kw = zoo_settings(name)
    if steps is not None:
        kw["num_inference_steps"] = steps
    gens = [torch.Generator().manual_seed(seed + k) for k in range(len(prompts))]
    pipe.set_progress_bar_config(disable=True)
    if kind == "image":
        out = pipe(prompts, generator=gens, output_type="np", **kw).images
        return [S.to_uint8_array(im) for im in out]
    out = pipe(prompts, generator=gens, output_type="np", **kw).frames
    return [S.to_uint8_array(v) for v in out]


def follow_rate(kind: str, prompts: list[str], outputs) -> dict:
    colour = sum(S.dominant_colour(o) == S.parse_prompt(p)["colour"] for p, o in zip(prompts, outputs))
    res = {"colour": f"{colour}/{len(prompts)}"}
    if kind == "video":
        moving = sum(S.motion_direction(o) == S.parse_prompt(p)["direction"] for p, o in zip(prompts, outputs))
        res["direction"] = f"{moving}/{len(prompts)}"
    return res


def preview(pipe, cfg: dict, png: str, steps: int | None = None) -> dict:
    prompts = zoo_prompts(cfg["name"])[:8]
    outs = generate(pipe, cfg, prompts, steps=steps)
    save_grid(prompts, outs, png)
    return follow_rate(cfg["kind"], prompts, outs)


def save_grid(prompts: list[str], outputs, png: str, scale: int = 2) -> None:
    """A labelled PNG: images in a grid, or one strip of frames per clip."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    video = outputs[0].ndim == 4
    if video:
        fig, axes = plt.subplots(len(outputs), 1, figsize=(outputs[0].shape[0] * 0.9 * scale / 2, 1.15 * len(outputs)))
        axes = np.atleast_1d(axes)
        for ax, p, v in zip(axes, prompts, outputs):
            strip = np.concatenate([np.pad(f, ((0, 0), (0, 2), (0, 0)), constant_values=255) for f in v], axis=1)
            ax.imshow(strip, interpolation="nearest")
            ax.set_title(p, fontsize=8, loc="left")
            ax.axis("off")
    else:
        cols = 4
        rows = math.ceil(len(outputs) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.2 * scale, rows * 1.35 * scale))
        axes = np.atleast_1d(axes).ravel()
        for ax in axes:
            ax.axis("off")
        for ax, p, im in zip(axes, prompts, outputs):
            ax.imshow(im, interpolation="nearest")
            ax.set_title(p, fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------------
# saving


def _fix_tokenizer_classes(out: str) -> None:
    """Record the tokenizer as ``PreTrainedTokenizerFast`` (transformers 5 saves its alias ``TokenizersBackend``)."""
    mi = os.path.join(out, "model_index.json")
    with open(mi) as f:
        index = json.load(f)
    for key, value in index.items():
        if key.startswith("tokenizer") and isinstance(value, list) and value[0] == "transformers":
            index[key] = ["transformers", "PreTrainedTokenizerFast"]
            tc = os.path.join(out, key, "tokenizer_config.json")
            with open(tc) as f:
                conf = json.load(f)
            conf["tokenizer_class"] = "PreTrainedTokenizerFast"
            with open(tc, "w") as f:
                json.dump(conf, f, indent=2, sort_keys=True)
                f.write("\n")
    with open(mi, "w") as f:
        json.dump(index, f, indent=2, sort_keys=True)
        f.write("\n")


def folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)


def save_pipeline(pipe, cfg: dict, out: str, record: dict) -> None:
    import shutil

    if os.path.isdir(out):
        shutil.rmtree(out)
    dtype = getattr(torch, cfg["transformer_dtype"])
    pipe.transformer.to(dtype)
    pipe.save_pretrained(out, safe_serialization=True)
    pipe.transformer.to(torch.float32)
    _fix_tokenizer_classes(out)
    with open(os.path.join(out, "training.json"), "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")


# ----------------------------------------------------------------------------------------------------------------


def _check_saved(out: str, name: str, cfg: dict, record: dict, work: str | None) -> None:
    """Load the saved folder the way users do, generate its prompts with the defaults, record prompt following."""
    from diffusers import DiffusionPipeline

    loaded = DiffusionPipeline.from_pretrained(out)
    prompts = zoo_prompts(name)
    outs = generate(loaded, cfg, prompts)
    record["prompt_following"] = follow_rate(cfg["kind"], prompts, outs)
    record["folder_bytes"] = folder_bytes(out)
    with open(os.path.join(out, "training.json"), "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
    if work:
        save_grid(prompts, outs, os.path.join(work, "final.png"))
    log(
        f"saved {out} ({record['folder_bytes'] / 1e6:.2f} MB); prompt following {record['prompt_following']};"
        f" total wall time {record['total_wall_s']:.0f}s"
    )


def finetune_decoder(vae, cfg: dict, work: str | None, stage: int = 0) -> dict:
    """Stage 4: sharpen the VAE decoder with the encoder (so the latent space the transformer learnt) frozen.

    Seeded on its own (``stage`` counts earlier decoder stages), so running it on a saved pipeline
    (``--decoder-only``) gives what a full run gives. For video, the first ``decoder_frame_steps`` steps use single
    frames, the rest cycle through clips of 9, 5 and 1 frames.
    """
    seed = cfg["seed"] + 7 + 10 * stage
    torch.manual_seed(seed)
    dcfg = {
        **cfg,
        "vae_shape_weight": cfg["decoder_shape_weight"],
        "vae_frame_steps": cfg.get("decoder_frame_steps", 0),
    }
    rec = train_vae(vae, dcfg, cfg["decoder_steps"], np.random.default_rng(seed), work, decoder_only=True)
    rec["decoder_frame_steps"] = min(dcfg["vae_frame_steps"], cfg["decoder_steps"]) if cfg["kind"] == "video" else None
    rec["seed"] = seed
    return rec


def continue_training(args, cfg: dict, out: str) -> int:
    """Stage 3b: more transformer steps on a saved pipeline (its EMA weights start both the model and the EMA)."""
    from diffusers import DiffusionPipeline

    t0 = time.time()
    with open(os.path.join(out, "training.json")) as f:
        record = json.load(f)
    done = record.setdefault("continued", [])
    seed = cfg["seed"] + 100 * (len(done) + 1)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    pipe = DiffusionPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    for p in pipe.vae.parameters():
        p.requires_grad_(False)
    task = _Task(pipe, cfg)
    lat, spec_idx, _ = build_dataset(task, cfg, cfg["dataset"], rng, measure=False)
    model = pipe.transformer.float()
    for p in model.parameters():
        p.requires_grad_(True)
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    pipe.transformer = ema
    ccfg = {**cfg, "lr": cfg["continue_lr"], "warmup": 100, "seed": seed}
    tr = train_transformer(
        task,
        model,
        ema,
        ccfg,
        (lat, spec_idx),
        args.continue_steps,
        rng,
        args.work,
        args.preview_every,
        args.max_minutes,
    )
    tr["eval_loss_ema"] = round(eval_loss(task, ema, (lat, spec_idx), cfg), 4)
    tr["lr"] = ccfg["lr"]
    tr["seed"] = seed
    log(f"final training loss {tr['final_loss']}, EMA eval loss {tr['eval_loss_ema']}")
    done.append(tr)
    record["total_wall_s"] = round(record["total_wall_s"] + time.time() - t0, 1)
    save_pipeline(pipe, cfg, out, record)
    _check_saved(out, args.name, cfg, record, args.work)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", required=True, choices=names())
    ap.add_argument("--out", default=None, help="pipeline folder to write (default: the package's own folder)")
    ap.add_argument("--steps", type=int, default=None, help="transformer training steps (default: the config's)")
    ap.add_argument("--vae-steps", type=int, default=None)
    ap.add_argument("--decoder-steps", type=int, default=None)
    ap.add_argument("--decoder-frame-steps", type=int, default=None, help="video: single-frame steps of stage 4")
    ap.add_argument("--dataset", type=int, default=None, help="number of training samples (default: the config's)")
    ap.add_argument("--work", default=None, help="folder for previews and VAE reconstructions (optional)")
    ap.add_argument("--preview-every", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--objective", choices=["epsilon", "flow"], default=None, help="PixArt: the training objective")
    ap.add_argument(
        "--max-minutes", type=float, default=None, help="stop transformer training after this much wall time"
    )
    ap.add_argument("--render", default=None, metavar="PNG", help="only render the saved model's prompts to PNG")
    ap.add_argument(
        "--continue-steps",
        type=int,
        default=None,
        metavar="N",
        help="continue training the transformer of the pipeline saved at --out for N more steps (fresh samples,"
        " warm-up and cosine decay from the config's continue_lr)",
    )
    ap.add_argument(
        "--decoder-only",
        action="store_true",
        help="only run stage 4 (decoder fine-tune) on the pipeline already saved at --out",
    )
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    cfg = {"name": args.name, **copy.deepcopy(CONFIGS[args.name])}
    out = args.out or zoo_path(args.name)
    for key in ("steps", "vae_steps", "decoder_steps", "decoder_frame_steps", "dataset", "objective"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    if args.work:
        os.makedirs(args.work, exist_ok=True)

    if args.render:
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained(out)
        prompts = zoo_prompts(args.name)
        t0 = time.time()
        outs = generate(pipe, cfg, prompts)
        save_grid(prompts, outs, args.render)
        log(f"rendered {len(prompts)} prompts in {time.time() - t0:.1f}s: {follow_rate(cfg['kind'], prompts, outs)}")
        return 0

    if args.continue_steps:
        return continue_training(args, cfg, out)

    if args.decoder_only:
        from diffusers import DiffusionPipeline

        t0 = time.time()
        with open(os.path.join(out, "training.json")) as f:
            record = json.load(f)
        pipe = DiffusionPipeline.from_pretrained(out)
        stages = record.get("decoder") or []
        stages = [stages] if isinstance(stages, dict) else stages
        stages.append(finetune_decoder(pipe.vae, cfg, args.work, stage=len(stages)))
        record["decoder"] = stages
        pipe.vae.save_pretrained(os.path.join(out, "vae"), safe_serialization=True)
        record["total_wall_s"] = round(record["total_wall_s"] + time.time() - t0, 1)
        _check_saved(out, args.name, cfg, record, args.work)
        return 0

    t_start = time.time()
    torch.manual_seed(cfg["seed"])
    rng = np.random.default_rng(cfg["seed"])
    pipe = BUILDERS[pipeline_kind(cfg)](cfg)
    pipe.set_progress_bar_config(disable=True)
    counts = {
        "transformer": n_params(pipe.transformer),
        "vae": n_params(pipe.vae),
        **{k: n_params(getattr(pipe, k)) for k in ("text_encoder", "text_encoder_2") if hasattr(pipe, k)},
    }
    log(f"{args.name}: parameters {counts}")

    # 1. VAE (or another zoo model's trained one)
    if cfg.get("vae_from"):
        psnr, psnr_shape, *_ = vae_psnr(pipe.vae, cfg)
        vae_rec = {
            "vae_from": cfg["vae_from"],
            "vae_test_psnr_db": round(psnr, 2),
            "vae_test_psnr_shapes_db": round(psnr_shape, 2),
        }
        log(f"VAE of {cfg['vae_from']}: test PSNR {psnr:.2f} dB (shapes {psnr_shape:.2f} dB)")
    else:
        vae_rec = train_vae(pipe.vae, cfg, cfg["vae_steps"], rng, args.work)

    # 2. data set: latents and text embeddings
    task = _Task(pipe, cfg)
    lat, spec_idx, norm = build_dataset(task, cfg, cfg["dataset"], rng)

    # 3. transformer
    model = pipe.transformer
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    pipe.transformer = ema  # the pipeline samples with (and saves) the EMA weights
    tr = train_transformer(
        task, model, ema, cfg, (lat, spec_idx), cfg["steps"], rng, args.work, args.preview_every, args.max_minutes
    )
    tr["eval_loss_ema"] = round(eval_loss(task, ema, (lat, spec_idx), cfg), 4)
    log(f"final training loss {tr['final_loss']}, EMA eval loss {tr['eval_loss_ema']}")

    record = {
        "name": args.name,
        "config": cfg,
        "parameters": counts,
        "vae": vae_rec,
        "latent_normalisation": norm,
        "transformer": tr,
        "torch": torch.__version__,
        "threads": args.threads,
    }
    # 4. decoder fine-tune (latents unchanged)
    if cfg["decoder_steps"]:
        record["decoder"] = [finetune_decoder(pipe.vae, cfg, args.work)]
    record["total_wall_s"] = round(time.time() - t_start, 1)
    save_pipeline(pipe, cfg, out, record)
    _check_saved(out, args.name, cfg, record, args.work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
