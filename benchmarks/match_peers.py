"""Issue 13 section 2: dit-cache's TaylorSeer and MagCache against diffusers' own at the same compute fraction, on the
zoo models, sample by sample: PSNR of the final output against the uncached one and the measured compute fraction
(block linear work run, counted by the same hook for every method).

    OMP_NUM_THREADS=1 python benchmarks/match_peers.py --model shapes-video --samples 4 --out runs/match_video.json

Methods are NAME=SPEC pairs: `ours:POLICY:key=value,...` (dit_cache.apply; `profile` is the zoo's shipped one) or
`diffusers-taylorseer:interval,warmup,order` / `diffusers-magcache:threshold` (the peers of `dit-cache eval`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dit_cache  # noqa: E402
from dit_cache.calibration.resolve import saved_profile  # noqa: E402
from dit_cache.eval import zoo  # noqa: E402
from dit_cache.eval.counting import WorkCounter  # noqa: E402
from dit_cache.eval.methods import parse_spec  # noqa: E402
from dit_cache.eval.metrics import psnr, to_frames  # noqa: E402
from dit_cache.eval.peers import PeerContext, peer  # noqa: E402

DEFAULT = {
    "shapes-video": [
        "ours:taylorseer:interval=2,order=1,warmup=3",
        "ours:taylorseer:interval=2,order=1",
        "diffusers-taylorseer:2,3,1",
    ],
    "shapes-image": ["ours:magcache:speedup=2", "diffusers-magcache:0.1"],
}


def generate(pipe, name: str, prompt: str, seed: int):
    kwargs = zoo.settings(name)
    out = pipe(prompt, generator=torch.Generator().manual_seed(seed), output_type="np", **kwargs)
    return to_frames((out.frames if hasattr(out, "frames") else out.images)[0])


def switch(pipe, spec: str, profile, steps: int, fraction: float):
    """On, and the function that switches it off."""
    if spec.startswith("ours:"):
        name, options = parse_spec(spec[len("ours:") :])
        if "speedup" in options:
            options["profile"] = profile
        dit_cache.apply(pipe, name, **options)
        return lambda: dit_cache.remove(pipe)
    name, _, knob = spec.partition(":")
    p = peer(name)
    ctx = PeerContext(pipe, steps, profile, 1.0 / fraction)
    if knob.startswith("auto"):  # tuned to the fraction after "auto@" on the first sample, as dit-cache eval does
        if spec not in TUNED:
            ctx.target = 1.0 / float(knob.partition("@")[2] or fraction)
            TUNED[spec] = p.tune(ctx, lambda value: _measured_fraction(pipe, p, ctx, value))
        value = TUNED[spec]
    else:
        values = [float(v) if "." in v else int(v) for v in knob.split(",")]
        value = tuple(values) if len(values) > 1 else values[0]
    p.enable(ctx, value)
    return lambda: p.disable(pipe)


TUNED: dict = {}
FIRST: dict = {}


def _measured_fraction(pipe, p, ctx, value) -> float:
    p.enable(ctx, value)
    try:
        with WorkCounter(pipe) as counter:
            generate(pipe, FIRST["model"], *FIRST["sample"])
    finally:
        p.disable(pipe)
    return counter.calls / FIRST["full"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="shapes-video")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--methods", nargs="*")
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(1)
    pipe = zoo.load(args.model)
    pipe.set_progress_bar_config(disable=True)
    profile = saved_profile(pipe.transformer)
    steps = zoo.settings(args.model)["num_inference_steps"]
    prompts = zoo.prompts(args.model)
    samples = [(prompts[i % len(prompts)], i) for i in range(args.samples)]
    with WorkCounter(pipe) as counter:
        references = [generate(pipe, args.model, p, s) for p, s in samples]
    full = counter.calls / len(samples)
    FIRST.update(model=args.model, sample=samples[0], full=full)
    rows = []
    for spec in args.methods or DEFAULT[args.model]:
        scores, fractions = [], []
        for (prompt, seed), reference in zip(samples, references):
            off = switch(pipe, spec, profile, steps, 0.5)
            try:
                with WorkCounter(pipe) as counter:
                    output = generate(pipe, args.model, prompt, seed)
            finally:
                off()
            scores.append(psnr(reference, output))
            fractions.append(counter.calls / full)
        row = {"method": spec, "knob": TUNED.get(spec), "psnr": sum(scores) / len(scores), "compute_fraction": sum(fractions) / len(fractions),
               "per_sample_psnr": scores}  # fmt: skip
        rows.append(row)
        print(f"{spec:<60} fraction {row['compute_fraction']:.3f}  PSNR {row['psnr']:.2f} dB", flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"model": args.model, "samples": args.samples, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
