"""The `dit-cache` command: calibrate (and calibrate merge), info; eval, report and demo live in dit_cache.eval."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from typing import Any

from . import __version__


def load_pipeline(model: str | None, factory: str | None, *, device: str | None = None, dtype: str | None = None):
    """A pipeline from `--model PATH_OR_ID` (or zoo:NAME) or `--pipeline module:function`."""
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
            raise SystemExit(f"cannot load --model {model}: {e}") from None
    if device:
        pipe.to(device)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    return pipe


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


def _calibrate(args: argparse.Namespace) -> int:
    from .calibration.runner import CalibrationSettings, calibrate, check_writable, merge_shards, read_prompts

    prompts = read_prompts(args.prompts)
    settings = CalibrationSettings(
        steps=args.steps,
        guidance=args.guidance,
        height=args.height,
        width=args.width,
        frames=args.frames,
        seeds=tuple(args.seeds),
        call_kwargs=json.loads(args.call_kwargs) if args.call_kwargs else {},
        lemica=args.lemica,
        lemica_max_span=args.lemica_max_span,
        lemica_prompts=args.lemica_prompts,
        block_traces=args.block_traces,
    )
    out = check_writable(args.out)  # before loading any model
    rank, world, state = _distributed()
    pipe = load_pipeline(args.model, args.pipeline, device=args.device or _device(state))
    target = out if world == 1 else out.with_suffix(f".shard{rank}.json")
    profile = calibrate(pipe, prompts, settings, target, resume=args.resume, rank=rank, world_size=world)
    if world > 1:
        state.wait_for_everyone()
        if rank == 0:
            profile = merge_shards([out.with_suffix(f".shard{r}.json") for r in range(world)], out)
    if rank == 0:
        print(f"profile: {out} ({profile.prompts} generations, {len(profile.branches)} branches)")
        fit = profile.policies.get("teacache", {})
        if fit:
            print(f"TeaCache polynomial {fit['coefficients']} (R^2 {fit['r2']:.3f}, {fit['points']} points)")
    return 0


def _merge(args: argparse.Namespace) -> int:
    from .calibration.runner import merge_shards

    profile = merge_shards(args.shards, args.out)
    print(f"profile: {args.out} ({profile.prompts} generations from {len(args.shards)} shards)")
    return 0


def _info(args: argparse.Namespace) -> int:
    from . import adapters, config
    from .calibration import builtin_names

    print(f"dit-cache {__version__}")
    print("policies:", ", ".join(config.policy_names()))
    print("adapters:", ", ".join(adapters.supported_classes()))
    print("built-in profiles:", ", ".join(builtin_names()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dit-cache", description="Training-free caching for diffusers DiTs")
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)

    cal = sub.add_parser("calibrate", help="record a model's trajectory statistics into a profile")
    source = cal.add_argument_group("pipeline")
    source.add_argument("--model", help="path or hub id for DiffusionPipeline.from_pretrained, or zoo:NAME")
    source.add_argument("--pipeline", help="module:function returning a ready pipeline")
    cal.add_argument("--prompts", required=True, help="text file, one prompt a line")
    cal.add_argument("--steps", type=int, default=30)
    cal.add_argument("--guidance", type=float, default=None, help="guidance_scale passed to the pipeline")
    cal.add_argument("--height", type=int)
    cal.add_argument("--width", type=int)
    cal.add_argument("--frames", type=int, help="num_frames for video pipelines")
    cal.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds; each prompt runs once per seed")
    cal.add_argument("--call-kwargs", help='extra pipeline arguments as JSON, e.g. \'{"negative_prompt": ""}\'')
    cal.add_argument("--lemica", choices=["proxy", "global"], default="proxy", help="LeMiCa edge weights")
    cal.add_argument("--lemica-max-span", type=int, default=8, help="longest cached segment LeMiCa may use")
    cal.add_argument(
        "--lemica-prompts", type=int, help="global edges from the first N prompts only (default: every prompt)"
    )
    cal.add_argument("--block-traces", action="store_true", help="also record per-block traces (block policies)")
    cal.add_argument("--device", help="move the pipeline to this device")
    cal.add_argument("--resume", action="store_true", help="continue an interrupted calibration at --out")
    cal.add_argument("--out", required=True, help="profile path (.json; arrays go to .safetensors beside it)")
    cal.set_defaults(handler=_calibrate)

    info = sub.add_parser("info", help="policies, adapters and built-in profiles")
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
