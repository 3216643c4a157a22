"""Issue 13: do the zoo models' denoising trajectories look like real models'? Compares the per-step MagCache
residual-norm ratios ||r_t|| / ||r_(t-1)|| recorded in each shipped zoo profile with the published MagCache ratios of
real models (the built-in profiles, read by `dit_cache.calibration.builtin`), on a common grid: position 0..1 along
the steps, every curve resampled to `--steps` steps (50) with `resample_ratios` (cumulative log-ratio interpolated, so a
span's product of ratios, what MagCache accumulates, does not depend on the step count). Reads profiles only.

    OMP_NUM_THREADS=1 python benchmarks/trajectory_likeness.py [--steps 50] [--out benchmarks/results/trajectory_likeness.json]
        [--plot docs/images/trajectory-likeness.png]

Per zoo model: Pearson correlation and mean absolute difference of its ratio curve with each real model's, and the
same between real models (all pairs, and pairs of different transformer classes, since a zoo model shares no
architecture with any real one); and the features that matter for caching: the first steps' ratios, how flat the
middle is, the drop at the end. The zoo profiles' own grid is normalized sigma; the published ratios have no sigmas,
so both are placed by step position here. TeaCache's per-step output change is not compared: the published TeaCache
data are polynomials (indicator change -> output change), with no per-step curve of any real model.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import table, write_json  # noqa: E402

from dit_cache.calibration import Profile, builtin_names, builtin_profile  # noqa: E402
from dit_cache.calibration.builtin import BUILTINS, builtin_policies  # noqa: E402
from dit_cache.calibration.resample import position_grid, resample_ratios  # noqa: E402
from dit_cache.calibration.sections import BranchSteps, read_branches  # noqa: E402

ZOO = Path(__file__).resolve().parents[1] / "dit_cache" / "eval" / "zoo"
ZOO_MODELS = ("shapes-image", "shapes-video", "shapes-pixart")
FIRST = 0.1  # the first steps: positions (0, FIRST]
MIDDLE = (0.2, 0.8)  # the middle, where step policies reuse most
LAST = 0.9  # the end: positions > LAST
FLAT = 0.02  # a step is flat when its ratio is within 1 +- FLAT (at the common step count)


def branch_curves(profile: Profile) -> dict[str, np.ndarray]:
    """Each CFG branch's MagCache ratios (typed, checked: `BranchSteps.mag_ratio`)."""
    branches: dict[str, BranchSteps] = read_branches(profile.branches, profile.sampler.get("steps"))
    return {name: np.asarray(b.mag_ratio, dtype=np.float64) for name, b in branches.items() if b.mag_ratio}


def on_grid(ratios: np.ndarray, steps: int) -> np.ndarray:
    """Ratios placed by step position, resampled to `steps` steps."""
    return resample_ratios(ratios, position_grid(len(ratios)), position_grid(steps))


def curve(profile: Profile, steps: int) -> tuple[np.ndarray, dict]:
    """The conditional branch's curve (a batched-CFG model has one branch, "batch"), and what was read."""
    curves = branch_curves(profile)
    name = "cond" if "cond" in curves else next(iter(curves))
    resampled = {b: on_grid(r, steps) for b, r in curves.items()}
    spread = max((float(np.max(np.abs(r - resampled[name]))) for r in resampled.values()), default=0.0)
    info = {"branch": name, "branches": sorted(curves), "calibrated_steps": len(curves[name]),
            "max_branch_difference": round(spread, 4)}  # fmt: skip
    return resampled[name], info


def features(r: np.ndarray) -> dict:
    """What matters for caching, on the common grid (entry 0 is 1 by convention and left out)."""
    x = position_grid(len(r))
    first = (x > 0) & (x <= FIRST)
    middle = (x >= MIDDLE[0]) & (x <= MIDDLE[1])
    last = x > LAST
    steps = r[1:]
    return {
        "step1_ratio": round(float(r[1]), 4),
        "first_mean": round(float(r[first].mean()), 4),
        "middle_mean": round(float(r[middle].mean()), 4),
        "middle_std": round(float(r[middle].std()), 4),
        "flat_fraction": round(float(np.mean(np.abs(steps - 1) <= FLAT)), 3),
        "end_product": round(float(np.prod(r[last])), 4),  # residual norm at the end over at position LAST
        "last_ratio": round(float(r[-1]), 4),
        "end_direction": "drop" if np.prod(r[last]) < 1 else "rise",
    }


def compare(a: np.ndarray, b: np.ndarray) -> dict:
    """Correlation and mean absolute difference of two curves, and the correlation without the end (> LAST), to tell
    a curve that differs only at the end from one that differs throughout."""
    before_end = slice(1, int(np.sum(position_grid(len(a)) <= LAST)))
    return {"corr": round(float(np.corrcoef(a[1:], b[1:])[0, 1]), 3),
            "corr_before_end": round(float(np.corrcoef(a[before_end], b[before_end])[0, 1]), 3),
            "mad": round(float(np.mean(np.abs(a - b)[1:])), 4)}  # fmt: skip


def summary(pairs: list[dict]) -> dict:
    out = {"pairs": len(pairs)}
    for key in ("corr", "corr_before_end", "mad"):
        values = [p[key] for p in pairs]
        out.update({f"{key}_median": round(statistics.median(values), 4), f"{key}_min": min(values),
                    f"{key}_max": max(values)})  # fmt: skip
    return out


def measure(steps: int) -> dict:
    real = {n: builtin_profile(n) for n in builtin_names() if "magcache" in builtin_policies(n)}
    real_curves, real_info = {}, {}
    for name, profile in real.items():
        real_curves[name], real_info[name] = curve(profile, steps)
        real_info[name]["class"] = BUILTINS[name].class_name
    zoo_curves, zoo_info = {}, {}
    for name in ZOO_MODELS:
        profile = Profile.load(ZOO / name / "dit_cache_profile.json")
        zoo_curves[name], zoo_info[name] = curve(profile, steps)
        zoo_info[name]["grid_kind"] = profile.grid_kind

    real_pairs = []
    for a, b in itertools.combinations(real_curves, 2):
        row = {"a": a, "b": b, **compare(real_curves[a], real_curves[b])}
        row["same_class"] = real_info[a]["class"] == real_info[b]["class"]
        real_pairs.append(row)
    zoo = {}
    for name, r in zoo_curves.items():
        versus = {n: compare(r, c) for n, c in real_curves.items()}
        best = max(versus, key=lambda n: versus[n]["corr"])
        zoo[name] = {**zoo_info[name], "features": features(r), "versus_real": versus,
                     "summary": summary(list(versus.values())), "closest": best}  # fmt: skip
    zoo_pairs = [
        {"a": a, "b": b, **compare(zoo_curves[a], zoo_curves[b])} for a, b in itertools.combinations(zoo_curves, 2)
    ]
    return {
        "about": __doc__.strip().splitlines()[0],
        "grid": f"position, {steps} steps (resample_ratios)",
        "regions": {
            "first": f"(0, {FIRST}]",
            "middle": list(MIDDLE),
            "end": f"> {LAST}",
            "flat": f"|ratio - 1| <= {FLAT}",
        },
        "output_change": "not compared: the published TeaCache data are polynomials, no per-step output change curves",
        "real": {n: {**real_info[n], "features": features(c)} for n, c in real_curves.items()},
        "real_pairs": real_pairs,
        "real_summary": {
            "all": summary(real_pairs),
            "different_class": summary([p for p in real_pairs if not p["same_class"]]),
        },  # fmt: skip
        "zoo": zoo,
        "zoo_pairs": zoo_pairs,
        "curves": {n: [round(float(v), 4) for v in c] for n, c in {**real_curves, **zoo_curves}.items()},
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4))
    real_colors = iter(plt.get_cmap("tab20c")(np.linspace(0, 0.95, len(result["real"]))))
    zoo_colors = iter(("black", "crimson", "royalblue"))
    for name, values in result["curves"].items():
        r = np.asarray(values)
        x = position_grid(len(r))
        if name in result["zoo"]:
            style = {"lw": 2.4, "zorder": 3, "color": next(zoo_colors)}
        else:
            style = {"lw": 1.1, "ls": "--", "color": next(real_colors)}
        left.plot(x[1:], r[1:], label=name, **style)
        right.plot(x, np.cumprod(r), **style)
    left.axhline(1, color="k", lw=0.6)
    right.axhline(1, color="k", lw=0.6)
    left.set(xlabel="position along the steps", ylabel=f"ratio per step ({len(r)} steps)",
             title="MagCache ratio ||r_t|| / ||r_t-1||", ylim=(0.5, 1.35))  # fmt: skip
    right.set(
        xlabel="position along the steps", ylabel="||r_t|| / ||r_0||", title="residual norm (cumulative)", yscale="log"
    )
    left.legend(fontsize=7, ncol=2, loc="lower left")
    fig.text(
        0.5, 0.005, "thick: zoo profiles; dashed: published MagCache ratios of real models", ha="center", fontsize=8
    )
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50, help="common step count (the published ratios' usual one)")
    parser.add_argument("--out", default="benchmarks/results/trajectory_likeness.json")
    parser.add_argument("--plot", default="docs/images/trajectory-likeness.png")
    args = parser.parse_args()
    if args.steps < 12:
        raise SystemExit(f"--steps {args.steps} is too coarse to place the first steps and the end; use >= 12")
    result = measure(args.steps)
    write_json(args.out, result)
    plot(result, Path(args.plot))
    rows = []
    for name, entry in {**result["zoo"], **result["real"]}.items():
        s = entry.get("summary", {})
        rows.append({"model": name, **entry["features"], "corr median": s.get("corr_median"),
                     "corr before end": s.get("corr_before_end_median"), "mad median": s.get("mad_median"),
                     "closest": entry.get("closest")})  # fmt: skip
    columns = ["model", "step1_ratio", "first_mean", "middle_mean", "flat_fraction", "end_product", "last_ratio"]
    print(table(rows, [*columns, "corr median", "corr before end", "mad median", "closest"]))
    for key, s in result["real_summary"].items():
        print(
            f"real vs real ({key}, {s['pairs']} pairs): "
            + ", ".join(
                f"{k} median {s[k + '_median']} [{s[k + '_min']}, {s[k + '_max']}]"
                for k in ("corr", "corr_before_end", "mad")
            )
        )


if __name__ == "__main__":
    main()
