"""What each rank does in tests/test_distributed.py: several CPU processes on gloo, every one under a timeout (a
deadlock fails the test instead of hanging it). Each scenario returns plain data for the test to assert on; an
exception is returned as ("raised", type name, message)."""

from __future__ import annotations

import datetime
import os
import socket
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

TIMEOUT_S = 240  # for a whole multi-process run: past it, the test fails naming the ranks that never answered
STEPS = 6
VALUE_POLICIES = {  # name -> options: every policy that runs on the tiny Flux without a profile
    "teacache": dict(threshold=0.3),
    "fbcache": dict(threshold=0.3),
    "bwcache": dict(threshold=0.3),
    "mix": dict(modes=("step",), token_threshold=0.3),
    "cfg": dict(step="fbcache"),
    "fora": {},
    "taylorseer": {},
    "schedule": dict(steps=(0, 2, 4)),
}


ABANDONED = "_abandoned"  # a result key: a rank failed, the group is left as it is (no closing barrier)
SENSITIVE = ("fbcache", "bwcache")  # run alone too: their decisions differ per rank without the group


# ---------------------------------------------------------------------------------------------- harness
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _context():
    """Fresh processes started from a forkserver that has imported torch, diffusers and the tiny pipelines once:
    each rank then starts in well under a second instead of importing them again (the slow part on a busy machine).
    The server itself is a clean process (nothing computed, no threads), so forking it is safe."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["parallel_scenarios", "diffusers.pipelines.flux.pipeline_flux", "dit_cache.testing"])
    return ctx


def spawn(world: int, scenario: Callable[[int, int, Any], Any], arg: Any = None) -> dict[int, Any]:
    """Run `scenario(rank, world, arg)` in `world` new processes (torch.multiprocessing, forkserver); {rank: its return value}. Raises TimeoutError
    naming the ranks that did not answer within TIMEOUT_S (a hang)."""
    import queue as queue_module

    ctx = _context()
    queue = ctx.Queue()
    port = _free_port()
    procs = [
        ctx.Process(target=_worker, args=(scenario, r, world, port, arg, queue), daemon=True) for r in range(world)
    ]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    deadline = time.monotonic() + TIMEOUT_S
    exited: dict[int, float] = {}
    try:
        while len(results) < world:
            try:
                rank, value = queue.get(timeout=0.5)
                results[rank] = value
                continue
            except queue_module.Empty:
                pass
            now = time.monotonic()
            missing = sorted(set(range(world)) - set(results))
            for r in missing:  # a process gone without a result (its result may still be in the pipe: wait a bit)
                if not procs[r].is_alive() and now - exited.setdefault(r, now) > 5:
                    raise AssertionError(f"rank {r} exited with code {procs[r].exitcode} and no result")
            if now > deadline:
                raise TimeoutError(f"ranks {missing} did not finish within {TIMEOUT_S}s (deadlock?)")
    finally:
        for p in procs:
            p.join(timeout=20)
            if p.is_alive():
                p.kill()
    for rank, value in results.items():
        if isinstance(value, dict) and "crashed" in value:
            raise AssertionError(f"rank {rank} crashed:\n{value['crashed']}")
    return results


def _worker(scenario, rank: int, world: int, port: int, arg: Any, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
        result = scenario(rank, world, arg)
        if not (isinstance(result, dict) and result.pop(ABANDONED, False)):
            dist.barrier()  # no rank tears the group down while another still uses it
        queue.put((rank, result))
    except BaseException:
        queue.put((rank, {"crashed": traceback.format_exc()}))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def outcome(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as error:
        return ("raised", type(error).__name__, str(error))


# ---------------------------------------------------------------------------------------------- pieces
def _cpu_context_parallel() -> None:
    # diffusers 0.42.1 places each rank on device `rank % torch.accelerator.device_count()`, 0 on a CPU-only
    # machine (ZeroDivisionError); the device is only recorded, and gloo runs every collective on CPU.
    if torch.accelerator.device_count() == 0:
        torch.accelerator.device_count = lambda: 1


def _run(
    pipe, policy: str | None, seed: int = 0, group=None, cfg: bool = False, **options
) -> tuple[torch.Tensor, list]:
    import dit_cache
    from dit_cache.testing import run

    if policy is None:
        return run(pipe, "flux", steps=STEPS, seed=seed, cfg=cfg), []
    dit_cache.apply(pipe, policy, process_group=group, **options)
    engine = pipe.transformer._dit_cache.engine
    cached, reset = [], engine.reset

    def keep_shapes() -> None:  # the cached residuals' shapes, before the end-of-call reset drops them
        cached.extend(tuple(st.residual[0].shape) for st in engine.states.values() if getattr(st, "residual", None))
        reset()

    engine.reset = keep_shapes
    try:
        out = run(pipe, "flux", steps=STEPS, seed=seed, cfg=cfg)
        return out, [dit_cache.stats(pipe).decisions(), engine.sync is not None and engine.sync.reduces, cached]
    finally:
        dit_cache.remove(pipe)


def different_shards(rank: int, world: int, names: list[str] | None) -> dict:
    """Every rank runs its own latents (seed = rank): the decisions with the group, and without it, for the
    policies `names` (default: all of VALUE_POLICIES)."""
    from dit_cache.testing import tiny_pipeline

    pipe = tiny_pipeline("flux")
    result = {}
    for name in names or VALUE_POLICIES:
        options = VALUE_POLICIES[name]
        cfg = name == "cfg"
        grouped = _run(pipe, name, seed=rank, group=dist.group.WORLD, cfg=cfg, **options)[1]
        alone = _run(pipe, name, seed=rank, cfg=cfg, **options)[1] if name in SENSITIVE else [None]
        result[name] = (grouped[0], alone[0])
    result["toca"] = outcome(lambda: _run(pipe, "toca", seed=rank, group=dist.group.WORLD))
    return result


def sharded_run(rank: int, world: int, layout: dict) -> dict:
    """One generation, single-process then under diffusers' real context parallelism (enable_parallelism, the group
    found on the transformer): outputs and decisions for a value-dependent step policy and FORA."""
    from diffusers import ContextParallelConfig

    from dit_cache.testing import tiny_pipeline

    _cpu_context_parallel()
    pipe = tiny_pipeline("flux", num_attention_heads=max(2, layout.get("ulysses_degree", 1)))  # heads split by Ulysses
    policies = {"fbcache": dict(threshold=0.5), "teacache": dict(threshold=0.3), "fora": {}}
    alone = {name: _run(pipe, name, **options) for name, options in policies.items()}
    alone["none"] = _run(pipe, None)
    pipe.transformer.enable_parallelism(config=ContextParallelConfig(**layout))
    sharded = {name: _run(pipe, name, **options) for name, options in policies.items()}
    sharded["none"] = _run(pipe, None)
    return {
        name: dict(
            difference=float((sharded[name][0] - alone[name][0]).abs().max()),
            decisions=(alone[name][1][:1], sharded[name][1][:1]),
            cached=(alone[name][1][2:], sharded[name][1][2:]),
            reduces=sharded[name][1][1] if sharded[name][1] else 0,
        )
        for name in sharded
    }


def bad_input(rank: int, world: int, arg: Any) -> dict:
    import dit_cache
    from dit_cache.testing import run, tiny_pipeline

    pipe = tiny_pipeline("flux")
    first = dist.new_group([0])  # collective: every rank creates it; rank 1 is no member
    result = {"outside": outcome(lambda: dit_cache.apply(pipe, "fbcache", process_group=first) and "applied")}
    if dit_cache.is_applied(pipe):
        dit_cache.remove(pipe)
    result["options"] = outcome(lambda: _run(pipe, "fbcache", group=dist.group.WORLD, threshold=0.1 + 0.1 * rank))
    result["policy"] = outcome(lambda: _run(pipe, "fora" if rank else "taylorseer", group=dist.group.WORLD))
    result["after"] = _run(pipe, "fbcache", group=dist.group.WORLD, threshold=0.3)[1][0]  # agreeing ranks still run
    from diffusers import ContextParallelConfig

    _cpu_context_parallel()
    dit_cache.apply(pipe, "fbcache")
    pipe.transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world))
    result["parallel_after_apply"] = outcome(lambda: run(pipe, "flux", steps=STEPS) and "ran")
    return result


def rank_fails(rank: int, world: int, failing: int) -> Any:
    """Rank `failing` raises inside a block of step 3; every rank must come back with an error."""
    from dit_cache.testing import tiny_pipeline

    pipe = tiny_pipeline("flux")
    calls = {"n": 0}
    block = pipe.transformer.single_transformer_blocks[-1]
    original = block.forward

    def forward(*args, **kwargs):
        calls["n"] += 1
        if rank == failing and calls["n"] == 4:
            raise ValueError("out of memory in the last block, step 3")
        return original(*args, **kwargs)

    block.forward = forward
    return outcome(lambda: _run(pipe, "fbcache", seed=rank, group=dist.group.WORLD, threshold=0.3))


def calibrated(rank: int, world: int, folder: str) -> Any:
    """The same calibration single-process and under context parallelism (rank 0 writes the second)."""
    from diffusers import ContextParallelConfig

    from dit_cache.calibration import Profile
    from dit_cache.calibration.runner import CalibrationSettings, calibrate
    from dit_cache.testing import TINY_TEXT_CALL, tiny_text_flux

    _cpu_context_parallel()
    saved, save = [], Profile.save
    Profile.save = lambda self, path, *a, **k: (saved.append(os.path.basename(path)), save(self, path, *a, **k))[1]
    pipe = tiny_text_flux()
    settings = CalibrationSettings(steps=4, call_kwargs=TINY_TEXT_CALL, seeds=(0,))
    prompts = ["a red circle on stripes", "a blue square"]
    if rank == 0:
        calibrate(pipe, prompts, settings, os.path.join(folder, "alone.json"), progress=False)
    pipe.transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world))
    calibrate(pipe, prompts, settings, os.path.join(folder, "sharded.json"), progress=False)
    Profile.save = save
    return sorted(set(saved))


def replicas(rank: int, world: int, arg: Any) -> dict:
    """A (data x ulysses) mesh: two context-parallel groups of consecutive ranks, each its own replica."""
    from diffusers import ContextParallelConfig
    from torch.distributed.device_mesh import init_device_mesh

    from dit_cache.distributed import data_parallel_rank
    from dit_cache.testing import tiny_pipeline

    _cpu_context_parallel()
    mesh = init_device_mesh("cpu", (world // 2, 1, 2), mesh_dim_names=("data", "ring", "ulysses"))
    pipe = tiny_pipeline("flux")
    pipe.transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=2, mesh=mesh))
    out, (decisions, reduces, _) = _run(pipe, "fbcache", seed=rank // 2, threshold=0.5)
    return dict(replica=data_parallel_rank(pipe.transformer, rank, world), decisions=decisions, reduces=reduces)


def whole_sequence(rank: int, world: int, arg: Any) -> tuple:
    from test_distributed import hidden_shard, shard_decisions

    return shard_decisions(hidden_shard(rank), dist.group.WORLD), shard_decisions(hidden_shard(rank))


SCENARIOS = {
    "whole_sequence": whole_sequence,
    "different_shards": different_shards,
    "sharded_run": sharded_run,
    "bad_input": bad_input,
    "calibrated": calibrated,
    "replicas": replicas,
    "rank_fails": rank_fails,  # last: it leaves the group unusable
}


def suite(rank: int, world: int, args: dict) -> dict:
    """The scenarios named in `args` (name -> argument), in SCENARIOS order, in one set of processes (starting
    processes that import torch is the slow part on a busy machine)."""
    result = {name: fn(rank, world, args[name]) for name, fn in SCENARIOS.items() if name in args}
    result[ABANDONED] = "rank_fails" in args
    return result
