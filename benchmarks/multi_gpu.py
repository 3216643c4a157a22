"""A cached pipeline under diffusers' context parallelism: per-rank decisions, the output against one process, and
what dit-cache's synchronisation costs.

    torchrun --nproc_per_node 2 benchmarks/multi_gpu.py                                  # tiny Flux, every policy
    torchrun --nproc_per_node 4 benchmarks/multi_gpu.py --ring 2 --ulysses 2 --policies fbcache fora
    torchrun --nproc_per_node 2 benchmarks/multi_gpu.py --model Wan-AI/Wan2.1-T2V-1.3B-Diffusers \
        --steps 30 --call-kwargs '{"height": 480, "width": 832, "num_frames": 33}' --prompt "a cat surfing"

On GPUs (NCCL) every rank takes GPU `LOCAL_RANK`; without GPUs it runs on CPU processes over gloo (diffusers 0.42.1
needs `torch.accelerator.device_count()` patched to 1 there, which this script does). Each rank first generates
with the policy on its own (the one-GPU reference), then with `transformer.enable_parallelism(ContextParallelConfig)`
and the same policy; dit-cache finds the group on the transformer. Rank 0 prints, per policy: whether every rank took
the same decisions and the same ones as one GPU, the largest absolute output difference against one GPU (and the
uncached parallel run's own difference, the floor set by the parallel attention), the number of dit-cache
all-reduces and their mean time per call. Then a micro-benchmark: the time of one all-reduce of the few floats a call
sends. JSON goes to benchmarks/results/multi_gpu_<backend>_<world>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import table, write_json  # noqa: E402

import dit_cache  # noqa: E402
from dit_cache.distributed import GroupSync  # noqa: E402

POLICIES = {
    "fbcache": dict(threshold=0.3),
    "teacache": dict(threshold=0.3),
    "bwcache": dict(threshold=0.3),
    "fora": {},
    "taylorseer": {},
    "schedule": dict(steps=(0, 2, 4)),
}


def _pipeline(args, device):
    if args.model is None:
        from dit_cache.testing import tiny_inputs, tiny_pipeline

        pipe = tiny_pipeline("flux").to(device)
        return pipe, lambda: tiny_inputs("flux", steps=args.steps, cfg=False)
    from diffusers import DiffusionPipeline

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    pipe = DiffusionPipeline.from_pretrained(args.model, torch_dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    extra = json.loads(args.call_kwargs)
    return pipe, lambda: dict(
        prompt=args.prompt,
        num_inference_steps=args.steps,
        generator=torch.Generator(device).manual_seed(0),
        output_type="latent",
        **extra,
    )


def _output(out) -> torch.Tensor:
    value = next((getattr(out, a) for a in ("images", "frames") if hasattr(out, a)), out[0])
    return torch.as_tensor(value).float()


class SyncClock:
    """Counts and times GroupSync.all_reduce (the per-call collective of the decision)."""

    def __init__(self) -> None:
        self.calls, self.seconds = 0, 0.0
        self._original = GroupSync.all_reduce
        clock = self

        def timed(sync, sums):
            start = time.perf_counter()
            try:
                return clock._original(sync, sums)
            finally:
                clock.calls += 1
                clock.seconds += time.perf_counter() - start

        GroupSync.all_reduce = timed

    def reset(self) -> None:
        self.calls, self.seconds = 0, 0.0


def _generate(pipe, inputs, policy, options, sync_device):
    if policy is not None:
        dit_cache.apply(pipe, policy, **options)
    try:
        if sync_device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = _output(pipe(**inputs()))
        if sync_device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        decisions = dit_cache.stats(pipe).decisions() if policy is not None else []
    finally:
        if policy is not None:
            dit_cache.remove(pipe)
    return out, decisions, seconds


def _all_reduce_cost(floats: int, device: torch.device, repeats: int = 200) -> float:
    """Microseconds of one all-reduce of `floats` float32 values, mean over `repeats` after a warm-up."""
    buffer = torch.ones(floats, device=device)
    for _ in range(10):
        dist.all_reduce(buffer)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        dist.all_reduce(buffer)
        buffer.tolist()  # the decision reads it on the host, as the engine does
    return (time.perf_counter() - start) / repeats * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a diffusers pipeline id or path (default: the tiny Flux of dit_cache.testing)")
    parser.add_argument("--prompt", default="a red fox in the snow")
    parser.add_argument("--call-kwargs", default="{}", help="JSON of further pipeline call arguments")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--ring", type=int, default=1)
    parser.add_argument("--ulysses", type=int, default=None, help="default: world size / ring")
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
        device = torch.device("cpu")
        if torch.accelerator.device_count() == 0:  # diffusers 0.42.1: rank % device_count() on a CPU-only machine
            torch.accelerator.device_count = lambda: 1
    from diffusers import ContextParallelConfig

    ulysses = args.ulysses or world // args.ring
    pipe, inputs = _pipeline(args, device)
    names = [None, *args.policies]
    alone = {name: _generate(pipe, inputs, name, POLICIES.get(name, {}), device) for name in names}
    pipe.transformer.enable_parallelism(config=ContextParallelConfig(ring_degree=args.ring, ulysses_degree=ulysses))
    clock = SyncClock()
    rows = []
    for name in names:
        clock.reset()
        out, decisions, seconds = _generate(pipe, inputs, name, POLICIES.get(name, {}), device)
        everyone: list = [None] * world
        dist.all_gather_object(everyone, decisions)
        rows.append(
            {
                "policy": name or "uncached",
                "same_on_every_rank": all(d == everyone[0] for d in everyone),
                "same_as_one_process": decisions == alone[name][1],
                "decisions": "".join(d[0] for d in decisions) or "-",
                "max_abs_diff": float((out - alone[name][0]).abs().max()),
                "one_process_s": alone[name][2],
                "parallel_s": seconds,
                "all_reduces": clock.calls,
                "all_reduce_us": clock.seconds / clock.calls * 1e6 if clock.calls else None,
            }
        )
    cost = {f"{n}_floats_us": _all_reduce_cost(n, device) for n in (2, 8, 64)}
    if rank == 0:
        backend = dist.get_backend()
        print(f"{world} ranks ({backend}), ring {args.ring} x ulysses {ulysses}, {args.model or 'tiny flux'}, "
              f"{args.steps} steps")  # fmt: skip
        shown = [{**r, "max_abs_diff": f"{r['max_abs_diff']:.1e}"} for r in rows]
        print(table(shown, list(rows[0])))
        print("one all-reduce of the decision's floats (host read included):", json.dumps(cost))
        out = args.out or Path(__file__).parent / "results" / f"multi_gpu_{backend}_{world}.json"
        write_json(out, dict(world=world, backend=backend, ring=args.ring, ulysses=ulysses, model=args.model or
                             "tiny flux", steps=args.steps, rows=rows, all_reduce_cost_us=cost,
                             command=" ".join(sys.argv)))  # fmt: skip
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
