"""`dit-cache eval`, `dit-cache report` and `dit-cache demo`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEMO_MODEL = "zoo:shapes-video"
DEMO_POLICY = "lemica"  # best quality of the step policies on the zoo models (docs/benchmarks.md)


def add_commands(sub) -> None:
    ev = sub.add_parser("eval", help="speed and quality of caching methods against the uncached output")
    ev.add_argument("--model", required=True, help="zoo:NAME, a local pipeline folder or a hub id")
    ev.add_argument("--prompts", help="text file, one prompt a line (default for zoo models: their prompt set)")
    ev.add_argument("--policies", nargs="*", default=None, help="dit_cache policies: NAME or NAME:key=value,...")
    ev.add_argument("--peers", nargs="*", default=["all"], help="peers to compare, 'all' or 'none'")
    ev.add_argument("--targets", nargs="*", type=float, default=[1.5, 2.0, 3.0], help="speedup targets")
    ev.add_argument("--samples", type=int, default=4)
    ev.add_argument("--steps", type=int, help="denoising steps (default: the model's own setting)")
    ev.add_argument("--call-kwargs", help="extra pipeline arguments as JSON")
    ev.add_argument("--runs", type=int, default=3, help="timed runs per method after a warm-up (median)")
    ev.add_argument("--timing-samples", type=int, default=1, help="samples that are timed (all are scored)")
    ev.add_argument("--profile", help="dit_cache profile for speedup targets (default: the model's or calibrated)")
    ev.add_argument("--out", required=True, help="output directory (results.jsonl, refs, samples)")
    ev.add_argument("--no-progress", action="store_true")
    ev.set_defaults(handler=run_eval)

    rep = sub.add_parser("report", help="Markdown + self-contained HTML report of evaluation results")
    rep.add_argument("dirs", nargs="+", help="result directories written by dit-cache eval")
    rep.add_argument("--out", help="where to write report.md/report.html (default: the first directory)")
    rep.set_defaults(handler=run_report)

    demo = sub.add_parser("demo", help="the quick tour: a trained video model, uncached vs cached, with a report")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--policy", default=DEMO_POLICY)
    demo.add_argument("--speedup", type=float, default=2.0)
    demo.add_argument("--samples", type=int, default=2)
    demo.set_defaults(handler=run_demo)


def _model_settings(model: str, args_steps: int | None, call_kwargs: str | None) -> tuple[str, int, dict, list]:
    """(name, steps, call kwargs, default prompts) for a model spec."""
    extra = json.loads(call_kwargs) if call_kwargs else {}
    if model.startswith("zoo:"):
        from . import zoo

        name = model[len("zoo:") :]
        settings = dict(zoo.settings(name))
        steps = args_steps or settings.pop("num_inference_steps")
        settings.pop("num_inference_steps", None)
        settings.update(extra)
        return model, steps, settings, zoo.prompts(name)
    return model, args_steps or 30, extra, []


def _profile_for(
    pipe, model: str, explicit: str | None, out: Path, steps: int, call: dict, prompts: list, samples: int
):
    from ..calibration import Profile, ProfileError
    from ..calibration.runner import CalibrationSettings, calibrate

    if explicit:
        return Profile.load(explicit, model=pipe.transformer)
    if model.startswith("zoo:"):
        from . import zoo

        shipped = Path(zoo.path(model[len("zoo:") :])) / "dit_cache_profile.json"
        if shipped.exists():
            return Profile.load(shipped, model=pipe.transformer)
    path = out / "profile.json"
    settings = CalibrationSettings(steps=steps, call_kwargs=call, block_traces=True)  # bwcache, mix
    if path.exists():
        try:
            return Profile.load(path, model=pipe.transformer)
        except ProfileError:
            pass
    return calibrate(pipe, prompts[: min(4, samples)], settings, path, resume=False, progress=False)


def run_eval(args: argparse.Namespace) -> int:
    from ..cli import _device, _distributed, load_pipeline
    from ..config import policy_names
    from .methods import BASELINES, SPEEDUP_POLICIES
    from .peers import PEERS
    from .runner import DEFAULT_POLICIES, EvalPlan, check_output_dir, evaluate, merge_rank_files

    out = check_output_dir(args.out)
    model, steps, call, prompts = _model_settings(args.model, args.steps, args.call_kwargs)
    if args.prompts:
        from ..calibration.runner import read_prompts

        prompts = read_prompts(args.prompts)
    if not prompts:
        raise ValueError(f"--prompts is required for {args.model} (zoo models bring their own prompt set)")
    policies = list(DEFAULT_POLICIES) if args.policies is None else args.policies
    valid = set(policy_names()) | set(BASELINES)
    for spec in policies:
        if spec.split(":")[0] not in valid:
            raise ValueError(f"unknown policy {spec!r}; valid: {', '.join(sorted(valid))}")
    peers = list(PEERS) if args.peers == ["all"] else [] if args.peers == ["none"] else args.peers
    for name in peers:
        if name not in PEERS:
            raise ValueError(f"unknown peer {name!r}; valid: {', '.join(PEERS)}")
    plan = EvalPlan(model, prompts, args.samples, steps, call, policies, peers, args.targets, args.runs,
                    args.timing_samples)  # fmt: skip
    if plan.samples < 1:
        raise ValueError(f"--samples must be at least 1, got {plan.samples}")
    rank, world, state = _distributed()
    pipe = load_pipeline(args.model, None, device=_device(state))
    profile = None
    needs_profile = (
        args.profile
        or any(p.split(":")[0] in SPEEDUP_POLICIES + ("magcache",) for p in policies)
        or ("diffusers-magcache" in peers)
    )
    if needs_profile and rank == 0:  # a profile calibrated here is written once, then read by the others
        profile = _profile_for(pipe, model, args.profile, out, steps, call, prompts, args.samples)
    if state is not None:
        state.wait_for_everyone()
    if needs_profile and rank != 0:
        profile = _profile_for(pipe, model, args.profile, out, steps, call, prompts, args.samples)
    evaluate(pipe, plan, out, profile=profile, rank=rank, world_size=world, progress=not args.no_progress)
    if world > 1:
        state.wait_for_everyone()
        if rank == 0:
            merge_rank_files(out, world)
    if rank == 0:
        from .report import markdown_table, summarize
        from .runner import RESULTS, read_rows

        print(markdown_table(summarize(read_rows(out / RESULTS)[1])))
    return 0


def run_report(args: argparse.Namespace) -> int:
    from .report import write_report

    md, html = write_report(args.dirs, args.out)
    print(f"report: {md} and {html}")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    """Uncached vs the default policy on the trained shapes-video model: a short table and the report."""
    from ..cli import load_pipeline
    from .report import summarize, write_report
    from .runner import RESULTS, EvalPlan, check_output_dir, evaluate, read_rows

    out = check_output_dir(args.out)
    model, steps, call, prompts = _model_settings(DEMO_MODEL, None, None)
    pipe = load_pipeline(DEMO_MODEL, None)
    profile = _profile_for(pipe, model, None, out, steps, call, prompts, args.samples)
    plan = EvalPlan(model, prompts, args.samples, steps, call, [args.policy, "uniform"], [], [args.speedup], 3, 1)
    evaluate(pipe, plan, out, profile=profile, progress=True)
    lines = summarize(read_rows(out / RESULTS)[1])
    print(f"\n{DEMO_MODEL}, {steps} steps, {args.samples} samples, target {args.speedup:g}x\n")
    print(f"{'method':<16}{'speedup':>9}{'compute':>9}{'PSNR':>8}{'SSIM':>7}")
    for line in lines:
        if "skipped" in line:
            continue
        speed = f"{line['speedup']:.2f}x" if line.get("speedup") else "-"
        print(f"{line['method']:<16}{speed:>9}{line['compute_fraction']:>9.2f}{line['psnr']:>8.2f}{line['ssim']:>7.3f}")
    md, html = write_report([out])
    print(f"\nreport: {html}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    from ..cli import main

    sys.exit(main(["eval", *sys.argv[1:]]))
