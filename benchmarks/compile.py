"""Issue 10's compile benchmark: caching must add to torch.compile's speedup, not eat it. On the mid-size random Wan
and Flux of step_policies.py (CFG on), at compute fraction 0.5 (a fixed schedule computing every other step, and FORA
with interval 2), per compile mode (whole model: `transformer.compile()`; regional: `compile_repeated_blocks()`):

    python benchmarks/compile.py [--models wan flux] [--policies schedule fora] [--modes whole regional]
                                 [--steps 8] [--runs 2] [--backend inductor] [--threads N]

Each mode gets a fresh pipeline (same seed), compiled once; a warm-up call uncached and one cached compile what they
need. Then --runs cached calls, each between two uncached calls of the same compiled model (common.bracketed),
with the policy applied before and removed after each cached call: `speedup` = compiled uncached / compiled cached
(median of per-run ratios), `target` = 0.8 / compute fraction (the issue's bar), `recompiles` = dynamo recompilations
and new graphs during the timed calls (must be 0), `max_diff` = the largest difference between the compiled cached
and the eager cached latents. The eager rows time the uncompiled model the same way. Writes the JSON to
benchmarks/results/compile.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import bracketed, machine, stopwatch, table, write_json  # noqa: E402
from step_policies import MODELS  # noqa: E402

import dit_cache  # noqa: E402


def policies(steps: int) -> dict[str, dict]:
    return {"schedule": dict(steps=tuple(range(0, steps, 2))), "fora": dict(interval=2)}


def compile_model(pipe, mode: str, backend: str) -> None:
    if mode == "whole":
        pipe.transformer.compile(backend=backend)
    elif mode == "regional":
        pipe.transformer.compile_repeated_blocks(backend=backend)


def dynamo_events() -> int:
    from torch._dynamo.utils import counters

    return sum(counters["recompiles"].values()) + counters["stats"]["unique_graphs"]


def run_mode(model: str, mode: str, names: list[str], args, eager_outputs: dict) -> list[dict]:
    pipe, call = MODELS[model]()
    pipe.set_progress_bar_config(disable=True)
    pipe.to(args.device)
    call = {k: v.to(args.device) if isinstance(v, torch.Tensor) else v for k, v in call.items()}
    compile_model(pipe, mode, args.backend)
    kwargs = dict(call, num_inference_steps=args.steps, output_type="latent")

    def generate():
        output = _output(pipe, kwargs)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return output

    rows = []
    generate()  # warm-up (compiles the uncached model)
    for name in names:
        options = policies(args.steps)[name]
        dit_cache.apply(pipe, name, **options)
        output = torch.as_tensor(generate()).cpu()  # warm-up (compiles what the cached calls add)
        fraction = dit_cache.stats(pipe).compute_fraction
        dit_cache.remove(pipe)
        if mode == "eager":
            eager_outputs[name] = output
        before = dynamo_events()

        def cached(name=name, options=options) -> float:
            dit_cache.apply(pipe, name, **options)
            seconds = stopwatch(generate)
            dit_cache.remove(pipe)
            return seconds

        timing = bracketed(lambda: stopwatch(generate), cached, args.runs)
        rows.append(
            {
                "model": model,
                "policy": name,
                "compile": mode,
                "compute_fraction": fraction,
                **timing,
                "target": 0.8 / fraction,
                "recompiles": dynamo_events() - before,
                "max_diff": float((output - eager_outputs[name]).abs().max()) if name in eager_outputs else None,
            }
        )
        print(table([rows[-1]], COLUMNS), flush=True)
    return rows


def _output(pipe, kwargs):
    out = pipe(**kwargs, generator=torch.Generator().manual_seed(0))
    return out.frames if hasattr(out, "frames") else out.images


COLUMNS = [
    "model", "policy", "compile", "compute_fraction", "uncached_s", "seconds", "speedup", "target", "noise",
    "recompiles", "max_diff",
]  # fmt: skip


def summary(rows: list[dict]) -> list[dict]:
    """One line per (model, policy): eager cached, compiled uncached and compiled cached seconds per compile mode."""
    out = []
    for row in rows:
        if row["compile"] == "eager":
            continue
        eager = next(
            r for r in rows if r["compile"] == "eager" and (r["model"], r["policy"]) == (row["model"], row["policy"])
        )
        out.append(
            {
                "model": row["model"],
                "policy": row["policy"],
                "compile": row["compile"],
                "fraction": row["compute_fraction"],
                "eager uncached s": eager["uncached_s"],
                "eager cached s": eager["seconds"],
                "compiled uncached s": row["uncached_s"],
                "compiled cached s": row["seconds"],
                "cached speedup over compiled": row["speedup"],
                "target": row["target"],
                "met": "yes" if row["speedup"] >= row["target"] else "no",
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--policies", nargs="+", default=["schedule", "fora"], choices=["schedule", "fora"])
    parser.add_argument("--modes", nargs="+", default=["whole", "regional"], choices=["whole", "regional"])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "compile.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for model in args.models:
        eager_outputs: dict = {}
        for mode in ["eager", *args.modes]:
            rows += run_mode(model, mode, args.policies, args, eager_outputs)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    header = f"{machine()}; {device}, backend {args.backend}, {args.steps} steps, {args.runs} bracketed runs"
    print(f"\n{header}\n")
    print(table(rows, COLUMNS))
    print()
    print(table(summary(rows), list(summary(rows)[0]) if summary(rows) else []))
    write_json(args.out, {"machine": header, "args": vars(args), "rows": rows, "summary": summary(rows)})


if __name__ == "__main__":
    main()
