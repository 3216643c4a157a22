"""Issue 11, item 3: speedup targets over Wan 2.2 A14B's two experts. The tiny two-expert pipeline
(`dit_cache.testing`, `wan22_a14b`, boundary_ratio 0.5) runs MagCache, TeaCache and LeMiCa with `speedup=` on a
profile calibrated on its first expert alone (both experts get its weights, so that the profile describes both);
the compute fraction over all steps of both experts is compared with 1 / speedup, with the plan that counts the
expert switch (dit_cache) and with one that ignores it (each expert applying the single-model plan, as before).

    python benchmarks/expert_targets.py [--steps 12] [--out benchmarks/results/expert_targets.json]
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import machine, table, write_json  # noqa: E402

import dit_cache  # noqa: E402
from dit_cache import state  # noqa: E402
from dit_cache.calibration.runner import CalibrationSettings, calibrate  # noqa: E402
from dit_cache.testing import tiny_inputs, tiny_pipeline  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--out", default="benchmarks/results/expert_targets.json")
    args = parser.parse_args()

    import diffusers

    experts = tiny_pipeline("wan22_a14b")
    experts.transformer_2.load_state_dict(experts.transformer.state_dict())
    single = diffusers.WanPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=experts.transformer,
                                   scheduler=copy.deepcopy(experts.scheduler))  # fmt: skip
    single.set_progress_bar_config(disable=True)
    inputs = tiny_inputs("wan22_a14b", cfg=False, steps=args.steps)
    prompt = {k: v for k, v in inputs.items() if k not in ("num_inference_steps", "output_type", "generator")}
    profile = calibrate(single, [prompt], CalibrationSettings(steps=args.steps), progress=False)

    rows = []
    planned_switches = state.expert_switches
    for plan in ("counts the switch", "ignores the switch"):
        state.expert_switches = planned_switches if plan == "counts the switch" else (lambda timesteps, boundary: ())
        try:
            for policy in ("magcache", "teacache", "lemica"):
                for speedup in (2.0, 3.0):
                    row = dict(plan=plan, policy=policy, speedup=speedup, target=round(1 / speedup, 3))
                    try:
                        with dit_cache.cached(experts, policy, speedup=speedup, profile=profile):
                            experts(**tiny_inputs("wan22_a14b", cfg=False, steps=args.steps))
                            stats = dit_cache.stats(experts)
                    except ValueError as err:  # a target the plan finds unreachable
                        rows.append({**row, "fraction": None, "error": str(err)[:120]})
                        continue
                    row["fraction"] = round(stats.compute_fraction, 3)
                    for name in ("transformer", "transformer_2"):
                        row[f"{name} computed"] = stats.computed_steps(transformer=name)
                    rows.append(row)
        finally:
            state.expert_switches = planned_switches
    columns = ["plan", "policy", "speedup", "target", "fraction", "transformer computed", "transformer_2 computed"]
    print(table(rows, columns))
    write_json(args.out, dict(machine=machine(), steps=args.steps, boundary_ratio=0.5, rows=rows))


if __name__ == "__main__":
    main()
