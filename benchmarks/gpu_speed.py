#!/usr/bin/env python3
"""Wall-clock speed of the caching policies on a GPU, at a real model's size (random weights).

FLUX.1-dev's transformer shape (19 double-stream + 38 single-stream blocks, 24 heads of 128, 12B parameters) in
bfloat16 at 1024x1024 (4096 image tokens, 512 text tokens), through `FluxPipeline`'s own denoising loop
(`output_type="latent"`, prompt embeddings given: no text encoders, no VAE). Random weights: the caching decisions
of the adaptive policies (TeaCache, FBCache) are arbitrary here, so each row reports the compute fraction it ran;
what this measures is what a fraction costs in wall time on the GPU.

Per method: compute fraction (`dit_cache.stats`; diffusers' peers by counting the attention/MLP matmuls that ran), wall time of
the denoising loop (every clock read after `torch.cuda.synchronize()`), speedup over uncached (each cached run
between two uncached runs: `common.bracketed`), efficiency = speedup x fraction (1.0: the hooks cost nothing), and
peak GPU memory over the uncached run's. Policies that use the fused kernels run twice: `DIT_CACHE_KERNELS=auto`
(Triton on CUDA) and `torch` (the eager twins).

    python benchmarks/gpu_speed.py [--steps 20] [--size 1024] [--runs 2] [--json out.json] [--small]

`--compile regional|whole` compiles the transformer first (policies applied after: their hooks sit outside the
compiled blocks). `--small` runs a 2+4-block model at 256x256 (a smoke test of the script on CPU or a GPU in seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import bracketed  # noqa: E402

import dit_cache  # noqa: E402
from dit_cache.eval.counting import WorkCounter  # noqa: E402

FLUX_DEV = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
    axes_dims_rope=[16, 56, 56],
)  # fmt: skip
SMALL = dict(FLUX_DEV, num_layers=2, num_single_layers=4, num_attention_heads=4, joint_attention_dim=256,
             pooled_projection_dim=64)  # fmt: skip

# (label, policy, options, run with the kernels both on and off). Fixed-fraction settings near 0.5 first.
METHODS = [
    ("schedule: every 2nd step", "schedule", lambda steps: dict(steps=tuple(range(0, steps, 2))), True),
    ("fora interval 2", "fora", lambda steps: dict(interval=2), False),
    ("taylorseer interval 2, order 1", "taylorseer", lambda steps: dict(interval=2, order=1), False),
    ("taylorseer interval 3, order 2", "taylorseer", lambda steps: dict(interval=3, order=2), True),
    ("fbcache threshold 0.08 (first-block probe)", "fbcache", lambda steps: dict(threshold=0.08), False),
    ("magcache speedup 2 (built-in FLUX.1-dev profile)", "magcache", lambda steps: dict(speedup=2.0), False),
    ("teacache threshold 0.4 (published FLUX polynomial)", "teacache", lambda steps: dict(threshold=0.4), False),
    ("toca fraction 0.3, interval 3", "toca", lambda steps: dict(fraction=0.3, interval=3), True),
]


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def stopwatch(fn) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def make_pipe(config: dict, device: str, dtype: torch.dtype):
    import diffusers

    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialize in the target dtype: no float32 copy of 12B parameters
    try:
        with torch.device(device):
            transformer = diffusers.FluxTransformer2DModel(**config).eval()
    finally:
        torch.set_default_dtype(previous)
    pipe = diffusers.FluxPipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True),
        vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None, transformer=transformer,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def peak_gb(fn) -> float | None:
    if not torch.cuda.is_available():
        fn()
        return None
    sync()
    torch.cuda.reset_peak_memory_stats()
    fn()
    sync()
    return torch.cuda.max_memory_allocated() / 2**30


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=1024, help="image height = width in pixels")
    ap.add_argument("--runs", type=int, default=2, help="timed cached runs per method, each between uncached ones")
    ap.add_argument("--small", action="store_true", help="a 2+4-block model at 256x256 (smoke test)")
    ap.add_argument("--only", nargs="*", default=None, help="policy names to run (default: all)")
    ap.add_argument("--no-peers", action="store_true", help="skip diffusers' caches")
    ap.add_argument(
        "--compile", choices=["none", "regional", "whole"], default="none",
        help="torch.compile the transformer first: regional = compile_repeated_blocks(), whole = compile()",
    )  # fmt: skip
    ap.add_argument("--json", type=Path, default=Path("runs/gpu_speed.json"))
    args = ap.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    config = SMALL if args.small else FLUX_DEV
    size = 256 if args.small else args.size
    built = time.perf_counter()
    pipe = make_pipe(config, device, dtype)
    if args.compile == "regional":
        pipe.transformer.compile_repeated_blocks()
    elif args.compile == "whole":
        pipe.transformer.compile()
    params = sum(p.numel() for p in pipe.transformer.parameters())
    g = torch.Generator(device).manual_seed(1)
    call = dict(
        prompt_embeds=torch.randn(1, 512, config["joint_attention_dim"], generator=g, device=device, dtype=dtype),
        pooled_prompt_embeds=torch.randn(1, config["pooled_projection_dim"], generator=g, device=device, dtype=dtype),
        guidance_scale=3.5, height=size, width=size, num_inference_steps=args.steps, output_type="latent",
    )  # fmt: skip

    def generate():
        return pipe(**call, generator=torch.Generator(device).manual_seed(0))

    result = {
        "command": "python benchmarks/gpu_speed.py " + " ".join(sys.argv[1:]),
        "machine": _machine(device),
        "model": {"class": "FluxTransformer2DModel", "config": config, "parameters": params, "dtype": str(dtype)},
        "compile": args.compile,
        "setting": {
            "size": size,
            "tokens": (size // 16) ** 2,
            "text_tokens": 512,
            "steps": args.steps,
            "runs": args.runs,
        },  # fmt: skip
        "rows": [],
    }

    def save():
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1, default=str))

    generate()  # warm-up (cuDNN/cuBLAS heuristics, allocator)
    result["build_and_warmup_s"] = time.perf_counter() - built
    uncached_peak = peak_gb(generate)
    uncached_s = stopwatch(generate)
    result["uncached"] = {"seconds": uncached_s, "per_step_s": uncached_s / args.steps, "peak_gb": uncached_peak}
    print(f"{params / 1e9:.2f}B parameters, {size}x{size}, {args.steps} steps: uncached {uncached_s:.3f} s "
          f"({uncached_s / args.steps * 1000:.1f} ms/step), peak {uncached_peak} GB", flush=True)  # fmt: skip
    save()

    for label, policy, options, uses_kernels in METHODS:
        if args.only and policy not in args.only:
            continue
        latents = {}
        for backend in ("auto", "torch") if uses_kernels and (device == "cuda" or args.small) else ("auto",):
            row = {"method": label, "policy": policy, "kernels": backend}
            os.environ["DIT_CACHE_KERNELS"] = backend
            try:
                opts = options(args.steps)
                dit_cache.apply(pipe, policy, **opts)
                # warm-up of the cached run (Triton compiles its kernels here), measured for peak memory
                row["peak_gb"] = peak_gb(
                    lambda latents=latents, backend=backend: latents.__setitem__(backend, generate().images)
                )
                row["compute_fraction"] = dit_cache.stats(pipe).compute_fraction
                if backend == "torch":  # the Triton kernels against their twins, through the whole pipeline
                    diff = (latents["torch"].float() - latents["auto"].float()).abs()
                    row["max_abs_diff_triton_vs_twins"] = diff.max().item()
                    row["max_abs_latent"] = latents["torch"].float().abs().max().item()
                dit_cache.remove(pipe)

                def cached(policy=policy, opts=opts):
                    dit_cache.apply(pipe, policy, **opts)
                    seconds = stopwatch(generate)
                    dit_cache.remove(pipe)
                    return seconds

                row.update(bracketed(lambda: stopwatch(generate), cached, args.runs))
                row["efficiency"] = row["speedup"] * row["compute_fraction"]
            except Exception as exc:  # a failing method is a row with its error
                row["error"] = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
                if getattr(pipe.transformer, "_dit_cache", None) is not None:
                    dit_cache.remove(pipe)
            finally:
                os.environ.pop("DIT_CACHE_KERNELS", None)
            result["rows"].append(row)
            print(_line(row), flush=True)
            save()

    if not args.no_peers:
        for label, enable in _peers(args.steps):
            row = {"method": label, "policy": "peer", "kernels": "-"}
            try:
                with WorkCounter(pipe) as full:
                    generate()
                enable(pipe.transformer)
                generate()  # warm-up
                row["peak_gb"] = peak_gb(generate)
                with WorkCounter(pipe) as ran:
                    generate()
                row["compute_fraction"] = ran.calls / full.calls
                pipe.transformer.disable_cache()

                def cached(enable=enable):
                    enable(pipe.transformer)
                    seconds = stopwatch(generate)
                    pipe.transformer.disable_cache()
                    return seconds

                row.update(bracketed(lambda: stopwatch(generate), cached, args.runs))
                row["efficiency"] = row["speedup"] * row["compute_fraction"]
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
            result["rows"].append(row)
            print(_line(row), flush=True)
            save()
    return 0


def _peers(steps: int):
    from diffusers.hooks import FirstBlockCacheConfig, TaylorSeerCacheConfig

    return [
        ("diffusers TaylorSeer interval 2, order 1 (disable_cache_before_step 3)",
         lambda t: t.enable_cache(TaylorSeerCacheConfig(cache_interval=2, disable_cache_before_step=3, max_order=1))),
        ("diffusers FirstBlockCache threshold 0.08",
         lambda t: t.enable_cache(FirstBlockCacheConfig(threshold=0.08))),
    ]  # fmt: skip


def _line(row: dict) -> str:
    if "error" in row:
        return f"{row['method']} [{row['kernels']}]: ERROR {row['error']}"
    return (
        f"{row['method']} [{row['kernels']}]: fraction {row['compute_fraction']:.3f}, {row['seconds']:.3f} s, "
        f"speedup {row['speedup']:.2f}x (noise {row['noise']:.3f}), efficiency {row['efficiency']:.3f}, "
        f"peak {row['peak_gb']} GB"
    )


def _machine(device: str) -> str:
    import platform

    name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine()
    return f"{name}, torch {torch.__version__}, {device}"


if __name__ == "__main__":
    sys.exit(main())
