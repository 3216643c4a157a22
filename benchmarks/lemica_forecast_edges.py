"""Issue 13: why LeMiCa's edges measured with a forecast mislead it on a model (shapes-video). An edge (i, j) is
measured (`calibration.runner.global_edges`) with every other step computed, so the forecast over the segment starts
from steps i - 1 and i; in the solved schedule the computed step before i is the path's previous node p, often
several steps back. For each segment of the path LeMiCa(forecast=1) solves on the profile's forecast edges, this runs
the segment as the schedule runs it (steps p..i and i..j both cached, the history from p and i) and compares with the
edge weights, on the prompt and seed the edges were measured on; then the whole paths.

    OMP_NUM_THREADS=1 python benchmarks/lemica_forecast_edges.py --model shapes-video --budget 10 --out X.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import write_json  # noqa: E402

from dit_cache.api import apply, remove  # noqa: E402
from dit_cache.calibration.profile import Profile  # noqa: E402
from dit_cache.calibration.replay import Replay  # noqa: E402
from dit_cache.calibration.runner import _final_latents, settings_from_profile  # noqa: E402
from dit_cache.config import Schedule  # noqa: E402
from dit_cache.eval import zoo  # noqa: E402
from dit_cache.schedulers.lemica import solve_lexminimax  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="shapes-video")
    parser.add_argument("--budget", type=int, default=10)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    pipe = zoo.load(args.model)
    pipe.set_progress_bar_config(disable=True)
    profile = Profile.load(Path(zoo.path(args.model)) / "dit_cache_profile.json")
    settings = settings_from_profile(profile)
    prompt, seed = zoo.calibration_prompts(args.model)[0], settings.seeds[0]  # the edges' prompt (--lemica-prompts 1)
    n = settings.steps
    plain, forecast = (profile.arrays[k].double().numpy() for k in ("lemica/edges", "lemica/edges_forecast1"))
    replay = Replay(pipe)
    with replay.recording():
        reference = _final_latents(pipe, settings, prompt, seed)
    scale = float(reference.abs().mean())

    def error(skipped: set[int], order: int, until: int) -> float:  # rel-L1 of the final latents, as global_edges
        apply(pipe.transformer, Schedule(steps=tuple(s for s in range(n) if s not in skipped), forecast=order),
              scheduler=pipe.scheduler)  # fmt: skip
        try:
            with replay.replaying(until=max(0, until)):
                cached = _final_latents(pipe, settings, prompt, seed)
        finally:
            remove(pipe.transformer)
        return float((cached - reference).abs().mean()) / scale

    def interior(a: int, b: int) -> set[int]:
        return set(range(a + 1, b))

    path = solve_lexminimax(forecast, args.budget)
    segments = []
    for p, i, j in zip(path, path[1:], path[2:]):
        if j - i < 2:
            continue
        joint = error(interior(p, i) | interior(i, j), 1, p)  # as the schedule runs it: history from p and i
        segments.append({"p": p, "i": i, "j": j, "edge_forecast": forecast[i, j], "edge_forecast_prev": forecast[p, i],
                         "as_run_both_segments": joint})  # fmt: skip
        print(
            f"p={p:2d} i={i:2d} j={j:2d}  w1(i,j)={forecast[i, j]:.4f}  w1(p,i)={forecast[p, i]:.4f}  "
            f"sum={forecast[i, j] + forecast[p, i]:.4f}  as run (both cached, history p,i)={joint:.4f}",
            flush=True,
        )
    paths = {}
    for name, edges in (("forecast edges", forecast), ("plain edges", plain)):
        steps = solve_lexminimax(edges, args.budget)
        skipped = set(range(n)) - set(steps)
        paths[name] = {"steps": steps, "max_edge": max(edges[a, b] for a, b in zip(steps, steps[1:])),
                       "sum_edges": float(sum(edges[a, b] for a, b in zip(steps, steps[1:]))),
                       "forecast1_run": error(skipped, 1, 0), "reuse_run": error(skipped, 0, 0)}  # fmt: skip
        print(name, paths[name], flush=True)
    if args.out:
        write_json(args.out, {"model": args.model, "prompt": prompt, "seed": seed, "budget": args.budget,
                              "segments": segments, "paths": paths})  # fmt: skip


if __name__ == "__main__":
    main()
