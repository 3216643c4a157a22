"""Issue 2's efficiency benchmark: every core policy near compute fraction 0.5 on a mid-size random Wan (8 layers,
dim 256, 2048 tokens, 20 steps, CFG) and Flux (8 blocks, dim 256, 2025 tokens, true CFG), beside diffusers'
FirstBlockCache at a similar compute fraction.

    python benchmarks/step_policies.py [--models wan flux] [--runs 3] [--threads 1] [--out runs/step_policies.json]

Columns: compute fraction (share of attention/MLP calls computed), wall speedup over uncached (after a warm-up of
each, --runs cached calls each between two uncached calls: the median over runs of the mean of the two uncached
times over the cached time; output_type="latent": the denoising loop), efficiency = speedup x compute fraction
(1.0 = the hooks cost nothing), noise = the spread (max - min) / median of the per-run speedups. Threshold policies
get their setting from speedup=2 on a one-generation profile; diffusers' FirstBlockCache reuses the first-block
probe's tuned threshold (same rule).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import bracketed, machine, stopwatch, table, write_json  # noqa: E402

import dit_cache  # noqa: E402
from dit_cache.calibration.runner import CalibrationSettings, calibrate  # noqa: E402


def make_wan():
    import diffusers

    torch.manual_seed(0)
    transformer = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=64, in_channels=16, out_channels=16,
        text_dim=64, freq_dim=64, ffn_dim=1024, num_layers=8, rope_max_seq_len=256,
    ).eval()  # fmt: skip
    pipe = diffusers.WanPipeline(
        tokenizer=None, text_encoder=None, vae=None, transformer=transformer,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
    )  # fmt: skip
    g = torch.Generator().manual_seed(1)
    call = dict(
        prompt_embeds=torch.randn(1, 32, 64, generator=g),
        negative_prompt_embeds=torch.randn(1, 32, 64, generator=g),
        guidance_scale=5.0, height=256, width=256, num_frames=29,  # 8 x 16 x 16 = 2048 tokens
    )  # fmt: skip
    return pipe, call


def make_flux():
    import diffusers

    torch.manual_seed(0)
    transformer = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=2, num_single_layers=6, attention_head_dim=64,
        num_attention_heads=4, joint_attention_dim=64, pooled_projection_dim=64, axes_dims_rope=[8, 28, 28],
    ).eval()  # fmt: skip
    pipe = diffusers.FluxPipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(), vae=None, text_encoder=None, tokenizer=None,
        text_encoder_2=None, tokenizer_2=None, transformer=transformer,
    )  # fmt: skip
    g = torch.Generator().manual_seed(1)
    call = dict(
        prompt_embeds=torch.randn(1, 32, 64, generator=g),
        pooled_prompt_embeds=torch.randn(1, 64, generator=g),
        negative_prompt_embeds=torch.randn(1, 32, 64, generator=g),
        negative_pooled_prompt_embeds=torch.randn(1, 64, generator=g),
        true_cfg_scale=4.0, height=720, width=720,  # 45 x 45 = 2025 tokens
    )  # fmt: skip
    return pipe, call


MODELS = {"wan": make_wan, "flux": make_flux}


def run_model(name: str, steps: int, runs: int, only: list[str] | None = None) -> list[dict]:
    pipe, call = MODELS[name]()
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(call, num_inference_steps=steps, output_type="latent")

    def generate():
        return pipe(**kwargs, generator=torch.Generator().manual_seed(0))

    profile = calibrate(pipe, [call], CalibrationSettings(steps=steps), progress=False)
    generate()  # warm-up
    rows = []
    settings = {
        "teacache": dict(speedup=2.0, profile=profile),
        "magcache": dict(speedup=2.0, profile=profile),
        "fbcache": dict(speedup=2.0, profile=profile),
        "fora": dict(interval=2),
        "schedule": dict(steps=tuple(range(0, steps, 2))),
        "lemica": dict(speedup=2.0, profile=profile),
    }
    fb_threshold = None
    for policy, options in settings.items():
        if only and policy not in only:
            continue
        state = {}

        def on(policy=policy, options=options):
            dit_cache.apply(pipe, policy, **options)

        def off(policy=policy, state=state):
            state["fraction"] = dit_cache.stats(pipe).compute_fraction
            if policy == "fbcache":
                state["threshold"] = dit_cache.cache_engine(pipe).policy.threshold
            dit_cache.remove(pipe)

        timing = interleaved(generate, on, off, runs)
        fb_threshold = state.get("threshold", fb_threshold)
        rows.append(_row(name, policy, state["fraction"], timing))
        print(table([rows[-1]], COLUMNS), flush=True)
    if not only or "diffusers-fbcache" in only:
        rows.append(diffusers_fbc(name, pipe, generate, fb_threshold, runs))
    return rows


def interleaved(generate, on, off, runs: int) -> dict:
    """`common.bracketed` timing of `generate` uncached and between `on()` and `off()`, after a warm-up of each."""
    on()
    generate()
    off()

    def cached() -> float:
        on()
        seconds = stopwatch(generate)
        off()
        return seconds

    return bracketed(lambda: stopwatch(generate), cached, runs)


def diffusers_fbc(name, pipe, generate, threshold, runs) -> dict:
    """diffusers' FirstBlockCache, its compute fraction counted from the attention/MLP calls that actually ran."""
    from diffusers.hooks import FirstBlockCacheConfig

    from dit_cache.adapters import find_spec
    from dit_cache.engine import build_slots

    slots = build_slots(pipe.transformer, find_spec(pipe.transformer))
    counter = {"calls": 0}
    handles = [
        m.register_forward_hook(lambda *a: counter.update(calls=counter["calls"] + 1))
        for s in slots
        for m in s.work.values()
    ]
    generate()
    full = counter["calls"]
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold))
    counter["calls"] = 0
    generate()
    fraction = counter["calls"] / full
    for h in handles:
        h.remove()
    pipe.transformer.disable_cache()
    timing = interleaved(
        generate,
        lambda: pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold)),
        pipe.transformer.disable_cache,
        runs,
    )
    return _row(name, f"diffusers FirstBlockCache (threshold {threshold:.4g})", fraction, timing)


COLUMNS = ["model", "method", "compute_fraction", "uncached_s", "seconds", "speedup", "efficiency", "noise"]


def _row(model, method, fraction, timing: dict) -> dict:
    return {
        "model": model,
        "method": method,
        "compute_fraction": fraction,
        **timing,
        "efficiency": timing["speedup"] * fraction,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--only", nargs="*", default=None, help="run only these policies (and diffusers-fbcache)")
    parser.add_argument("--out", default="runs/step_policies.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        rows += run_model(name, args.steps, args.runs, args.only)
    print(f"\n{machine()}; {args.steps} steps, {args.runs} cached runs bracketed by uncached ones, after a warm-up\n")
    print(table(rows, COLUMNS))
    write_json(args.out, {"machine": machine(), "steps": args.steps, "runs": args.runs, "rows": rows})


if __name__ == "__main__":
    main()
