"""`dit-cache eval`, `dit-cache report` and `dit-cache demo`."""

from __future__ import annotations

import argparse
import os
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
    ev.add_argument("--samples", type=int, default=16, help="scored samples: sample i is prompt i (cycled), seed i")
    ev.add_argument("--steps", type=int, help="denoising steps (default: the model's own setting)")
    ev.add_argument("--call-kwargs", help="extra pipeline arguments as JSON")
    ev.add_argument("--runs", type=int, default=3, help="timed runs per method after a warm-up (median)")
    ev.add_argument("--timing-samples", type=int, default=1, help="samples that are timed (all are scored)")
    ev.add_argument("--profile", help="dit_cache profile for speedup targets (default: the model's or calibrated)")
    ev.add_argument(
        "--calibration-prompts",
        help="text file of prompts to calibrate on, none of them scored (default for zoo models: their calibration "
        "set; else the --prompts beyond --samples)",
    )
    ev.add_argument(
        "--allow-in-sample",
        action="store_true",
        help="keep a profile calibrated on scored prompts or seeds (refused by default); its rows are labelled",
    )
    ev.add_argument("--out", required=True, help="output directory (results.jsonl, refs, samples)")
    ev.add_argument("--no-progress", action="store_true")
    ev.set_defaults(handler=run_eval)

    rep = sub.add_parser("report", help="Markdown + self-contained HTML report of evaluation results")
    rep.add_argument("dirs", nargs="+", help="result directories written by dit-cache eval")
    rep.add_argument("--out", help="where to write report.md/report.html (default: the first directory)")
    rep.set_defaults(handler=run_report)

    demo = sub.add_parser("demo", help="the quick tour: a trained video model, uncached vs cached, with a report")
    demo.add_argument("--out", default="runs/demo", help="output directory (results, samples, report.html)")
    demo.add_argument("--policy", default=DEMO_POLICY, help=f"dit_cache policy to show (default: {DEMO_POLICY})")
    demo.add_argument("--speedup", type=float, default=2.0, help="speedup target (compute fraction 1 / speedup)")
    demo.add_argument("--samples", type=int, default=2, help="prompts generated and scored")
    demo.add_argument("--steps", type=int, help="denoising steps (default: the model's own 30; fewer runs faster)")
    demo.add_argument("--runs", type=int, default=3, help="timed runs per method after a warm-up (median)")
    demo.set_defaults(handler=run_demo)


def _profile_for(
    pipe, explicit: str | None, out: Path, steps: int, call: dict, calibration: list[tuple[str, int]],
    candidates: bool = False,
):  # fmt: skip
    """--profile, else the profile saved with the model (zoo models ship one), else one calibrated into OUT on the
    calibration jobs (at most 4 prompts; never the scored ones; with `auto`'s default candidates when `candidates`)."""
    from ..calibration import Profile, ProfileError
    from ..calibration.resolve import saved_profile
    from ..calibration.runner import CalibrationSettings, calibrate

    if explicit:
        return Profile.load(explicit, model=pipe.transformer)
    shipped = saved_profile(pipe.transformer)
    if shipped is not None:
        return shipped
    path = out / "profile.json"
    if not calibration:
        raise ValueError(
            "no prompt is left to calibrate a profile on out of sample (every --prompts line is scored): pass "
            "--calibration-prompts FILE (prompts that are not scored), more --prompts than --samples, or --profile"
        )
    prompts = list(dict.fromkeys(p for p, _ in calibration))[:4]
    seeds = tuple(sorted({s for _, s in calibration}))
    settings = CalibrationSettings(steps=steps, call_kwargs=call, block_traces=True, seeds=seeds)  # bwcache, mix, hyca
    if path.exists():
        try:
            return Profile.load(path, model=pipe.transformer)
        except ProfileError:
            pass
    extra = dict(candidates="default", candidate_prompts=2) if candidates else {}
    return calibrate(pipe, prompts, settings, path, resume=False, progress=False, **extra)


def calibration_jobs(model: str, prompts: list[str], samples: int, path: str | None) -> list[tuple[str, int]]:
    """(prompt, seed) jobs to calibrate on, disjoint from the scored samples (sample i: prompt i cycled, seed i):
    --calibration-prompts, else a zoo model's calibration set, else the prompts no sample scores."""
    from ..calibration.runner import read_prompts
    from .provenance import calibration_seeds

    if path:
        chosen = read_prompts(path)
    elif model.startswith("zoo:"):
        from . import zoo

        chosen = zoo.calibration_prompts(model[len("zoo:") :])
    else:
        chosen = prompts[samples:]  # none left: a profile cannot be calibrated here (`_profile_for` says so)
    scored = {prompts[i % len(prompts)] for i in range(samples)}
    shared = [p for p in chosen if p in scored]
    if shared:
        raise ValueError(f"--calibration-prompts holds scored prompts ({shared[0]!r}, ...): give prompts not scored")
    return [(prompt, seed) for prompt in chosen for seed in calibration_seeds(samples)]


def _check_methods(policies: list[str], targets: list[float], steps: int) -> None:
    """Every --policies spec parses and names known options (an error now, not a traceback after loading)."""
    from .methods import ours

    for spec in policies:
        if ":" in spec or not targets:
            ours(spec, None, steps, None)
        else:
            for target in targets:
                ours(spec, target, steps, None)


def run_eval(args: argparse.Namespace) -> int:
    from ..cli import _device, _distributed, check_call_kwargs, json_kwargs, load_pipeline, model_settings
    from .methods import BASELINES
    from .methods import needs_profile as policy_needs_profile
    from .peers import PEERS
    from .runner import DEFAULT_POLICIES, EvalPlan, check_output_dir, evaluate, merge_rank_files

    check_output_dir(args.out, create=False)
    steps, call, prompts = model_settings(args.model, args.steps, json_kwargs(args.call_kwargs))
    if args.prompts:
        from ..calibration.runner import read_prompts

        prompts = read_prompts(args.prompts)
    if not prompts:
        raise ValueError(f"--prompts is required for {args.model} (zoo models bring their own prompt set)")
    policies = list(DEFAULT_POLICIES) if args.policies is None else args.policies
    peers = list(PEERS) if args.peers == ["all"] else [] if args.peers == ["none"] else args.peers
    for name in peers:
        if name not in PEERS:
            raise ValueError(f"unknown peer {name!r}; valid: {', '.join(PEERS)}")
    if args.samples < 1:
        raise ValueError(f"--samples must be at least 1, got {args.samples}")
    _check_methods(policies, args.targets, steps)
    jobs = calibration_jobs(args.model, prompts, args.samples, args.calibration_prompts)
    plan = EvalPlan(args.model, prompts, args.samples, steps, call, policies, peers, args.targets, args.runs,
                    args.timing_samples, jobs)  # fmt: skip
    rank, world, state = _distributed()
    pipe = load_pipeline(args.model, None, device=_device(state))
    check_call_kwargs(pipe, json_kwargs(args.call_kwargs))
    out = check_output_dir(args.out)  # created only now that everything checked out
    profile = None
    needs_profile = (
        args.profile
        or any(p.split(":")[0] not in BASELINES and policy_needs_profile(p.split(":")[0]) for p in policies)
        or ("diffusers-magcache" in peers)
    )
    auto = any(p.split(":")[0] == "auto" for p in policies)  # a profile calibrated here gets candidate runs
    if needs_profile and rank == 0:  # a profile calibrated here is written once, then read by the others
        profile = _profile_for(pipe, args.profile, out, steps, call, jobs, auto)
    if state is not None:
        state.wait_for_everyone()
    if needs_profile and rank != 0:
        profile = _profile_for(pipe, args.profile, out, steps, call, jobs, auto)
    if profile is not None:
        from .provenance import check_out_of_sample

        plan.profile_provenance = check_out_of_sample(profile, plan.scored(), allow_in_sample=args.allow_in_sample)
    evaluate(pipe, plan, out, profile=profile, rank=rank, world_size=world, progress=not args.no_progress)
    if world > 1:
        state.wait_for_everyone()
        if rank == 0:
            merge_rank_files(out, world)
    if rank == 0:
        from .report import markdown_table, reference_line, summarize
        from .runner import RESULTS, read_rows, write_equal_compute

        rows = read_rows(out / RESULTS)[1]
        print(markdown_table(summarize(rows), reference_line(rows)))
        table = write_equal_compute(out)
        for fraction, best in table["best"].items():
            print(f"compute fraction {fraction}: {describe_best(best)}")
    return 0


def describe_best(best: dict) -> str:
    """One line of `frontier.equal_compute`'s verdict at a fraction."""

    def name(entry):
        return "none reaches it" if entry is None else f"{entry['method']} {entry['psnr']:.2f} dB"

    margin = "" if best["margin_db"] is None else f", margin {best['margin_db']:+.2f} dB"
    return f"best dit_cache {name(best['best_dit_cache'])}, best peer {name(best['best_peer'])}{margin}"


def run_report(args: argparse.Namespace) -> int:
    from .report import write_report

    md, html = write_report(args.dirs, args.out)
    print(f"report: {md} and {html}")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    """Uncached vs the default policy on the trained shapes-video model: a short table and the report."""
    from ..cli import load_pipeline, model_settings
    from .report import summarize, write_report
    from .runner import RESULTS, EvalPlan, check_output_dir, evaluate, read_rows

    check_output_dir(args.out, create=False)
    if args.samples < 1:
        raise ValueError(f"--samples must be at least 1, got {args.samples}")
    if not args.speedup > 1:
        raise ValueError(f"--speedup must be above 1 (e.g. 2 for half the compute), got {args.speedup:g}")
    steps, call, prompts = model_settings(DEMO_MODEL, args.steps, {})
    from .methods import ours

    method = ours(args.policy, None if ":" in args.policy else args.speedup, steps, None)
    if not method.available:
        raise ValueError(f"--policy {args.policy} --speedup {args.speedup:g}: {method.reason}")
    pipe = load_pipeline(DEMO_MODEL, None, label=f"the demo model {DEMO_MODEL}")
    if "OMP_NUM_THREADS" not in os.environ:  # the demo runs on the CPU
        import torch

        torch.set_num_threads(1)  # a 2 M-parameter model: more threads only wait on each other (docs/zoo.md)
    out = check_output_dir(args.out)
    jobs = calibration_jobs(DEMO_MODEL, prompts, args.samples, None)
    profile = _profile_for(pipe, None, out, steps, call, jobs)
    plan = EvalPlan(DEMO_MODEL, prompts, args.samples, steps, call, [args.policy, "uniform"], [], [args.speedup],
                    args.runs, 1)  # fmt: skip
    from .provenance import check_out_of_sample

    plan.profile_provenance = check_out_of_sample(profile, plan.scored())
    evaluate(pipe, plan, out, profile=profile, progress=True)
    lines = summarize(read_rows(out / RESULTS)[1])
    print(f"\n{DEMO_MODEL}, {steps} steps, {args.samples} samples, target {args.speedup:g}x\n")
    print(f"{'method':<16}{'speedup':>9}{'compute':>9}{'PSNR':>8}{'SSIM':>7}")
    for line in lines:
        if "skipped" in line:
            print(f"{line['method']:<16} skipped: {line['skipped']}")
            continue
        speed = f"{line['speedup']:.2f}x" if line.get("speedup") else "-"
        print(f"{line['method']:<16}{speed:>9}{line['compute_fraction']:>9.2f}{line['psnr']:>8.2f}{line['ssim']:>7.3f}")
    md, html = write_report([out])
    print(f"\nreport: {html}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    from ..cli import main

    sys.exit(main(["eval", *sys.argv[1:]]))
