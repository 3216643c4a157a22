"""The `dit-cache` command: calibrate (and calibrate merge), info; eval, report and demo live in dit_cache.eval."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import os
import sys
from typing import Any

from . import __version__


def load_pipeline(
    model: str | None, factory: str | None, *, device: str | None = None, dtype: str | None = None, label: str = ""
):
    """A pipeline from `--model PATH_OR_ID` (or zoo:NAME) or `--pipeline module:function`. `label` names the model
    in errors where the user did not pass --model (the demo's model)."""
    if (model is None) == (factory is None):
        raise SystemExit("give exactly one of --model PATH_OR_ID and --pipeline module:function")
    if factory is not None:
        if ":" not in factory:
            raise SystemExit(f"--pipeline must look like module:function, got {factory!r}")
        module_name, function_name = factory.split(":", 1)
        sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise SystemExit(f"--pipeline {factory}: cannot import {module_name} ({e})") from None
        function = getattr(module, function_name, None)
        if not callable(function):
            raise SystemExit(f"--pipeline {factory}: {module_name} has no function {function_name}")
        pipe = function()
        if pipe is None or not hasattr(pipe, "components") or not callable(pipe):
            raise SystemExit(
                f"--pipeline {factory} returned {type(pipe).__name__}, not a diffusers pipeline; the factory must "
                "return a ready pipeline (e.g. DiffusionPipeline.from_pretrained(...))"
            )
    else:
        import torch
        from diffusers import DiffusionPipeline

        label = label or f"--model {model}"
        path = model
        if model.startswith("zoo:"):
            from .eval import zoo

            path = zoo.path(model[len("zoo:") :])
        kwargs: dict[str, Any] = {}
        if dtype:
            kwargs["torch_dtype"] = getattr(torch, dtype)
        try:
            pipe = DiffusionPipeline.from_pretrained(path, **kwargs)
        except Exception as e:  # noqa: BLE001 - turn any loading failure into one clear line
            raise SystemExit(f"cannot load {label}: {e}{_missing_packages_hint()}") from None
    if device:
        pipe.to(device)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    return pipe


def _missing_packages_hint() -> str:
    """What to install when a load failed for want of a package diffusers only uses if present."""
    missing = [name for name in ("accelerate", "transformers") if importlib.util.find_spec(name) is None]
    if not missing:
        return ""
    return f" ({', '.join(missing)} not installed: pip install {' '.join(missing)}, or pip install 'dit-cache[eval]')"


def model_settings(model: str, steps: int | None, call_kwargs: dict) -> tuple[int, dict, list[str]]:
    """(steps, call kwargs, default prompts) for `--model`: a zoo model brings its own settings (resolution, text
    length, guidance: its pipeline's defaults are far outside what it was trained on) and prompts; explicit
    `--steps` and `--call-kwargs` override them."""
    if not model or not model.startswith("zoo:"):
        return steps or 30, dict(call_kwargs), []
    from .eval import zoo

    name = model[len("zoo:") :]
    settings = zoo.settings(name)
    default_steps = settings.pop("num_inference_steps")
    settings.update(call_kwargs)
    return steps or default_steps, settings, zoo.prompts(name)


def json_kwargs(text: str | None, flag: str = "--call-kwargs") -> dict:
    """A JSON object of pipeline arguments from the command line."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f'{flag} {text!r} is not valid JSON ({e}); write e.g. \'{{"negative_prompt": ""}}\'') from None
    if not isinstance(value, dict):
        raise ValueError(f"{flag} must be a JSON object of pipeline arguments, got {text!r}")
    return value


def check_call_kwargs(pipe: Any, kwargs: dict, flag: str = "--call-kwargs") -> None:
    """Refuse arguments the pipeline's __call__ does not take, before any generation."""
    import inspect

    try:
        parameters = inspect.signature(pipe.__call__).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = sorted(k for k in kwargs if k not in parameters)
    if unknown:
        import difflib

        hints = [f"{k} -> {m[0]}" for k in unknown if (m := difflib.get_close_matches(k, parameters, n=1))]
        raise ValueError(
            f"{flag}: {type(pipe).__name__} takes no argument {', '.join(map(repr, unknown))}"
            + (f" (did you mean {', '.join(hints)}?)" if hints else "")
            + f"; remove it. Its arguments: {', '.join(n for n in parameters if n != 'self')}"
        )


def _distributed() -> tuple[int, int, Any]:
    """(rank, world size, accelerate state) under `accelerate launch`, else (0, 1, None)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, None
    import torch
    from accelerate import PartialState

    # CPU processes (`accelerate launch --multi_gpu --num_processes N` on a machine without GPUs) need cpu=True
    state = PartialState(cpu=not torch.cuda.is_available())
    return state.process_index, state.num_processes, state


def _device(state) -> str | None:
    """The process's accelerator under accelerate; None (leave the pipeline where it is) on CPU."""
    return None if state is None or state.device.type == "cpu" else str(state.device)


def _calibration_set(model: str | None) -> tuple[list[str], list[int]]:
    """Default calibration prompts and seeds: a zoo model's calibration set, disjoint from the prompts and seeds
    `dit-cache eval` scores (a profile fitted to the scored samples flatters the policies that read it)."""
    if not model or not model.startswith("zoo:"):
        return [], [0]
    from .eval import zoo

    name = model[len("zoo:") :]
    return zoo.calibration_prompts(name), zoo.calibration_seeds(name)


def _calibrate(args: argparse.Namespace) -> int:
    from .calibration.runner import CalibrationSettings, calibrate, check_writable, merge_shards, read_prompts
    from .calibration.sections import AutoSection, HyCaSection, TeaCacheFit

    steps, call_kwargs, _ = model_settings(args.model, args.steps, json_kwargs(args.call_kwargs))
    prompts, seeds = _calibration_set(args.model)
    if args.prompts:
        prompts = read_prompts(args.prompts)
    if not prompts:
        raise ValueError("--prompts is required (a text file, one prompt a line); only zoo models bring their own")
    settings = CalibrationSettings(
        steps=steps,
        guidance=args.guidance,
        height=args.height,
        width=args.width,
        frames=args.frames,
        seeds=tuple(args.seeds or seeds),
        call_kwargs=call_kwargs,
        lemica=args.lemica,
        lemica_max_span=args.lemica_max_span,
        lemica_prompts=args.lemica_prompts,
        lemica_forecast=tuple(args.lemica_forecast),
        block_traces=args.block_traces,
        unit_feature_prompts=args.unit_feature_prompts,
    )
    out = check_writable(args.out)  # before loading any model
    if args.candidates:
        from .auto import candidate_list

        candidate_list(args.candidates)
    search = None
    if args.search_schedules:
        from .calibration.schedule_search import ScheduleSearch

        search = ScheduleSearch(tuple(args.search_schedules), args.search_order, args.search_coordinate,
                                args.search_prompts, args.search_budget)  # fmt: skip
    rank, world, state = _distributed()
    pipe = load_pipeline(args.model, args.pipeline, device=args.device or _device(state))
    check_call_kwargs(pipe, settings.call_kwargs)
    from .distributed import data_parallel_rank

    # under context parallelism (enabled by the --pipeline factory) a group shares one prompt shard
    shard, shards = data_parallel_rank(pipe.transformer, rank, world)
    target = out if shards == 1 else out.with_suffix(f".shard{shard}.json")
    candidates = {}
    if args.candidates:
        from .auto import DEFAULT_TARGETS

        candidates = dict(candidates=args.candidates, candidate_targets=args.candidate_targets or DEFAULT_TARGETS,
                          candidate_prompts=args.candidate_prompts)  # fmt: skip
    if args.hyca_targets:
        candidates.update(hyca_targets=args.hyca_targets, hyca_prompts=args.hyca_prompts, hyca_sweeps=args.hyca_sweeps)
    profile = calibrate(pipe, prompts, settings, target, resume=args.resume, rank=shard, world_size=shards,
                        transformer=args.transformer, progress=not args.no_progress, search=search,
                        **candidates)  # fmt: skip
    if world > 1:
        state.wait_for_everyone()
    if shards > 1 and rank == 0:
        profile = merge_shards([out.with_suffix(f".shard{r}.json") for r in range(shards)], out)
    if rank == 0:
        print(f"profile: {out} ({profile.prompts} generations, {len(profile.branches)} branches)")
        section = profile.section(AutoSection)
        if section is not None:
            print(f"auto: {len(section.candidates)} candidates x {len(section.targets)} targets on "
                  f"{len(section.runs)} jobs ({section.seconds or 0:.0f} s)")  # fmt: skip
        searched = profile.section(HyCaSection)
        for found in (searched.assignments or {}).values() if searched else []:
            counts = {order: found["solvers"].count(order) for order in (0, 1, 2)}
            print(f"hyca {found['speedup']:g}x: units by solver {counts}, output error {found['error']:.3g} "
                  f"(uniform orders 0/1/2: {', '.join(f'{e:.3g}' for e in found['uniform'])})")  # fmt: skip
        fit = profile.section(TeaCacheFit)
        if fit:
            print(f"TeaCache polynomial {fit.coefficients} (R^2 {fit.r2:.3f}, {fit.points} points)")
    return 0


def _merge(args: argparse.Namespace) -> int:
    from .calibration.runner import merge_shards

    profile = merge_shards(args.shards, args.out)
    print(f"profile: {args.out} ({profile.prompts} generations from {len(args.shards)} shards)")
    return 0


def _info(args: argparse.Namespace) -> int:
    from .eval.methods import user_policies
    from .families import text
    from .policies import policy_info

    print(f"dit-cache {__version__}")
    print("policies:", ", ".join(user_policies()))
    # each policy's capabilities, as its class declares them (policies/<name>.py)
    rows = [("policy", "level", "profile", "speedup= by", "in CFGCache(step=)")]
    for name in user_policies():
        info = policy_info(name)
        rows.append((name, info.level, info.needs_profile, info.speedup_by or "-", "yes" if info.cfg_inner else "no"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    print()
    print(text())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dit-cache", description="Training-free caching for diffusers DiTs")
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)

    cal = sub.add_parser("calibrate", help="record a model's trajectory statistics into a profile")
    source = cal.add_argument_group("pipeline")
    source.add_argument("--model", help="path or hub id for DiffusionPipeline.from_pretrained, or zoo:NAME")
    source.add_argument("--pipeline", help="module:function returning a ready pipeline")
    cal.add_argument("--prompts", help="text file, one prompt a line (default for zoo models: their calibration set)")
    cal.add_argument("--steps", type=int, help="denoising steps (default: the zoo model's own setting, else 30)")
    cal.add_argument("--guidance", type=float, default=None, help="guidance_scale passed to the pipeline")
    cal.add_argument("--height", type=int)
    cal.add_argument("--width", type=int)
    cal.add_argument("--frames", type=int, help="num_frames for video pipelines")
    cal.add_argument(
        "--seeds", type=int, nargs="+", help="seeds; each prompt runs once per seed (default: 0; zoo models: theirs)"
    )
    cal.add_argument("--call-kwargs", help='extra pipeline arguments as JSON, e.g. \'{"negative_prompt": ""}\'')
    cal.add_argument("--lemica", choices=["proxy", "global"], default="proxy", help="LeMiCa edge weights")
    cal.add_argument("--lemica-max-span", type=int, default=8, help="longest cached segment LeMiCa may use")
    cal.add_argument(
        "--lemica-prompts", type=int, help="global edges from the first N prompts only (default: every prompt)"
    )
    cal.add_argument(
        "--lemica-forecast", type=int, nargs="+", default=[0],
        help="global edges measured with these forecast orders (e.g. 0 1: one set for LeMiCa(forecast=1) too)",
    )  # fmt: skip
    cal.add_argument(
        "--block-traces", action="store_true", help="also record per-block traces and unit features (bwcache, hyca)"
    )
    cal.add_argument("--unit-feature-prompts", type=int, help="keep HyCa's unit features of the first N jobs only")
    auto = cal.add_argument_group("auto (apply(pipe, 'auto', speedup=X) picks among these runs)")
    auto.add_argument(
        "--candidates",
        help="run candidate policies: default, all, or NAME[:key=value],... (e.g. magcache,fora:forecast=1)",
    )
    auto.add_argument(
        "--candidate-targets",
        type=float,
        nargs="+",
        default=None,
        help="speedups to run them at (default 1.5 2 2.5 3 4)",
    )
    auto.add_argument("--candidate-prompts", type=int, default=4, help="first N jobs to run them on (default 4)")
    found = cal.add_argument_group("searched schedules (taylorseer:searched=True,speedup=X reads them)")
    found.add_argument(
        "--search-schedules", type=float, nargs="+", metavar="SPEEDUP",
        help="search TaylorSeer's computed steps for these speedups on the calibration prompts (e.g. 2 3)",
    )  # fmt: skip
    found.add_argument("--search-order", type=int, default=1, help="TaylorSeer order they are searched for")
    found.add_argument("--search-coordinate", default="step", choices=("step", "sigma"), help="forecast axis")
    found.add_argument("--search-prompts", type=int, default=4, help="first N jobs to score them on (default 4)")
    found.add_argument("--search-budget", type=float, default=1800, help="seconds of search per speedup")
    hyca = cal.add_argument_group("hyca (solver per unit searched on the final output)")
    hyca.add_argument("--hyca-targets", type=float, nargs="+", help="speedups to search HyCa's solvers at (e.g. 2 3)")
    hyca.add_argument("--hyca-prompts", type=int, default=2, help="first N jobs the search scores on (default 2)")
    hyca.add_argument("--hyca-sweeps", type=int, default=1, help="coordinate-descent passes over the units (default 1)")
    cal.add_argument("--no-progress", action="store_true", help="no progress bars")
    cal.add_argument("--device", help="move the pipeline to this device")
    cal.add_argument(
        "--transformer",
        default="transformer",
        help="component to record (Wan 2.2 A14B: transformer_2 for its second expert)",
    )
    cal.add_argument("--resume", action="store_true", help="continue an interrupted calibration at --out")
    cal.add_argument("--out", required=True, help="profile path (.json; arrays go to .safetensors beside it)")
    cal.set_defaults(handler=_calibrate)

    info = sub.add_parser("info", help="transformer classes x policies x built-in profiles")
    info.set_defaults(handler=_info)
    try:
        from .eval.cli import add_commands
    except ImportError:
        add_commands = None
    if add_commands is not None:
        add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if argv[:2] == ["calibrate", "merge"]:
        merge = argparse.ArgumentParser(prog="dit-cache calibrate merge", description="merge calibration shards")
        merge.add_argument("shards", nargs="+")
        merge.add_argument("--out", required=True)
        args = merge.parse_args(argv[2:])
        handler = _merge
    else:
        args = build_parser().parse_args(argv)
        handler = args.handler
    try:
        return handler(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"dit-cache: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
