"""Issue 6's efficiency benchmark: token, CFG, per-block, forecasting and mixture policies on the mid-size random
models of benchmarks/step_policies.py (Wan 2048 tokens, Flux 2025 tokens: sequential CFG) plus an SD3 of the same
size (batched CFG, 1024 tokens), 20 steps.

    python benchmarks/new_policies.py [--models wan flux sd3] [--runs 3] [--threads 1] [--out runs/new_policies.json]

Columns:
  compute_fraction  share of attention/MLP work computed, as stats() counts it (token steps count the share of tokens
                    recomputed; a half-batch CFG call counts half)
  flop_fraction     FLOPs of one cached pipeline call over one uncached call, counted by torch's FlopCounterMode
                    (matmuls and attention; gathers, scatters, FFTs and elementwise work are not FLOPs there but are
                    in the wall time)
  speedup           after a warm-up, --runs cached calls each between two uncached calls (u c u c ... u): the
                    median over runs of the mean of the two uncached times over the cached time (see
                    common.bracketed), so that a drifting machine load cancels
  efficiency        speedup x compute_fraction (1.0: the mechanism costs nothing beyond the work it runs)
  flop_efficiency   speedup x flop_fraction
  noise             the spread (max - min) / median of the per-run speedups: efficiencies differ from each other
                    meaningfully only beyond it (a shared machine can exceed 0.1)
Speedup targets come from a one-prompt profile recorded with per-block traces (TeaCache, BWCache, mixture) or from
each policy's own schedule (TaylorSeer, CFG).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import bracketed, machine, stopwatch, table, write_json  # noqa: E402
from step_policies import make_flux, make_wan  # noqa: E402

import dit_cache  # noqa: E402
from dit_cache.calibration.runner import CalibrationSettings, calibrate  # noqa: E402


def make_sd3():
    """A mid-size SD3 (8 blocks, dim 256): batched CFG, 32 x 32 = 1024 tokens."""
    import diffusers

    torch.manual_seed(0)
    transformer = diffusers.SD3Transformer2DModel(
        sample_size=64, patch_size=2, in_channels=16, num_layers=8, attention_head_dim=64, num_attention_heads=4,
        joint_attention_dim=64, caption_projection_dim=256, pooled_projection_dim=64, out_channels=16,
    ).eval()  # fmt: skip
    pipe = diffusers.StableDiffusion3Pipeline(
        transformer=transformer, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0), vae=None,
        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None, text_encoder_3=None, tokenizer_3=None,
    )  # fmt: skip
    g = torch.Generator().manual_seed(1)
    call = dict(
        prompt_embeds=torch.randn(1, 32, 64, generator=g),
        pooled_prompt_embeds=torch.randn(1, 64, generator=g),
        negative_prompt_embeds=torch.randn(1, 32, 64, generator=g),
        negative_pooled_prompt_embeds=torch.randn(1, 64, generator=g),
        guidance_scale=5.0, height=512, width=512,  # latent 64 x 64, patch 2: 1024 tokens
    )  # fmt: skip
    return pipe, call


MODELS = {"wan": make_wan, "flux": make_flux, "sd3": make_sd3}


def _sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    b, h, lq, d = query
    return 2 * b * h * lq * key[-2] * d + 2 * b * h * lq * key[-2] * value[-1]


def count_flops(fn) -> int:
    """FLOPs of one call of `fn` (CPU attention counted with the SDPA formula: FlopCounterMode misses it)."""
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    mapping = {aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return counter.get_total_flops()


def interleaved(pipe, generate, plain, runs: int) -> dict:
    """`common.bracketed` timing of the hooked pipeline against uncached calls, which swap in `plain`, an unhooked
    copy of the transformer, so the applied policy keeps its tuned state."""
    hooked = pipe.transformer

    def with_transformer(transformer) -> float:
        pipe.transformer = transformer
        try:
            return stopwatch(generate)
        finally:
            pipe.transformer = hooked

    return bracketed(lambda: with_transformer(plain), lambda: with_transformer(hooked), runs)


def settings_for(steps: int, profile) -> dict:
    every_other = dit_cache.Schedule(steps=tuple(range(0, steps, 2)))
    return {
        "schedule (every 2nd step, core)": every_other,
        "cfg (interval 2)": dit_cache.CFGCache(interval=2, warmup=0.0),
        "cfg (interval 2) + teacache (speedup 1.5)": dit_cache.CFGCache(
            interval=2, warmup=0.0, step=dit_cache.TeaCache(speedup=1.5, profile=profile)
        ),
        "toca (fraction 0.25, interval 3, attention reused)": dit_cache.ToCa(fraction=0.25, interval=3),
        "toca (fraction 0.25, interval 3, attention computed)": dit_cache.ToCa(
            fraction=0.25, interval=3, self_attention="compute"
        ),
        "bwcache (speedup 2)": dit_cache.BWCache(speedup=2.0, profile=profile),
        "taylorseer (speedup 2, order 1)": dit_cache.TaylorSeer(speedup=2.0, order=1),
        "fora (interval 2, forecast 1)": dit_cache.FORA(interval=2, forecast=1),
        "teacache (speedup 2, forecast 1)": dit_cache.TeaCache(speedup=2.0, profile=profile, forecast=1),
        "mix (speedup 2)": dit_cache.MixCache(speedup=2.0, profile=profile),
    }


def run_model(name: str, steps: int, runs: int, only: list[str] | None) -> list[dict]:
    pipe, call = MODELS[name]()
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(call, num_inference_steps=steps, output_type="latent")

    def generate():
        return pipe(**kwargs, generator=torch.Generator().manual_seed(0))

    profile = calibrate(pipe, [call], CalibrationSettings(steps=steps, block_traces=True), progress=False)
    plain = copy.deepcopy(pipe.transformer)
    generate()  # warm-up
    base_flops = count_flops(generate)
    rows = []
    for method, config in settings_for(steps, profile).items():
        if only and not any(o in method for o in only):
            continue
        with dit_cache.cached(pipe, config):
            generate()  # warm-up of the cached path (speedup targets are tuned on the first call)
            fraction = dit_cache.stats(pipe).compute_fraction
            flops = count_flops(generate)
            timing = interleaved(pipe, generate, plain, runs)
        speedup = timing["speedup"]
        row = {
            "model": name,
            "method": method,
            "compute_fraction": fraction,
            "flop_fraction": flops / base_flops,
            "uncached_s": timing["uncached_s"],
            "seconds": timing["seconds"],
            "speedup": speedup,
            "efficiency": speedup * fraction,
            "flop_efficiency": speedup * flops / base_flops,
            "noise": timing["noise"],
            "uncached_times": timing["uncached_times"],
            "cached_times": timing["cached_times"],
        }
        rows.append(row)
        print(table([row], [k for k in row if not k.endswith("_times")]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--only", nargs="*", default=None, help="run only methods whose name contains one of these")
    parser.add_argument("--out", default="runs/new_policies.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        rows += run_model(name, args.steps, args.runs, args.only)
    columns = [
        "model",
        "method",
        "compute_fraction",
        "flop_fraction",
        "speedup",
        "efficiency",
        "flop_efficiency",
        "noise",
    ]
    print(f"\n{machine()}; {args.steps} steps, {args.runs} cached runs bracketed by uncached ones, after a warm-up\n")
    print(table(rows, columns))
    write_json(args.out, {"machine": machine(), "steps": args.steps, "runs": args.runs, "rows": rows})


if __name__ == "__main__":
    main()
