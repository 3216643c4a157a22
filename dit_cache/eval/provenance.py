"""Where a profile's numbers come from, against what the evaluation scores: a profile calibrated on the scored prompts
or seeds has seen the answers (its thresholds, ratios and LeMiCa edges are fitted to those very trajectories), so the
evaluation refuses it unless asked to keep it, and then labels every row that read it."""

from __future__ import annotations

from typing import Any

#: the seeds a profile that `dit-cache eval` calibrates itself runs with: sample i is scored with seed i
CALIBRATION_SEED_BASE = 1000


def calibration_seeds(samples: int) -> list[int]:
    """Seeds for a calibration run beside an evaluation of `samples` samples (seeds 0 .. samples - 1)."""
    return [max(CALIBRATION_SEED_BASE, samples)]


def calibration_set(profile: Any) -> tuple[list[str], list[int]] | None:
    """(prompts, seeds) a profile was calibrated on, from its per-prompt records; None if it has none (a built-in
    profile of published numbers, calibrated elsewhere)."""
    records = getattr(profile, "records", None) or []
    if not records or any("prompt" not in r or "seed" not in r for r in records):
        return None
    prompts = list(dict.fromkeys(str(r["prompt"]) for r in records))
    seeds = sorted({int(r["seed"]) for r in records})
    return prompts, seeds


def check_out_of_sample(profile: Any, scored: list[tuple[str, int]], *, allow_in_sample: bool = False) -> dict:
    """What the results header keeps about the profile: its calibration prompts and seeds, the ones it shares with
    the scored samples, and `in_sample`. Raises ValueError for an in-sample profile unless `allow_in_sample`."""
    found = calibration_set(profile)
    source = getattr(profile, "source", None) or getattr(profile, "name", None)
    if found is None:
        return {"source": str(source), "calibration_prompts": None, "calibration_seeds": None, "in_sample": None}
    prompts, seeds = found
    shared_prompts = sorted({p for p, _ in scored} & set(prompts))
    shared_seeds = sorted({s for _, s in scored} & set(seeds))
    in_sample = bool(shared_prompts or shared_seeds)
    info = {
        "source": str(source),
        "calibration_prompts": prompts,
        "calibration_seeds": seeds,
        "shared_prompts": shared_prompts,
        "shared_seeds": shared_seeds,
        "in_sample": in_sample,
    }
    if in_sample and not allow_in_sample:
        shared = []
        if shared_prompts:
            shared.append(f"{len(shared_prompts)} scored prompt(s), e.g. {shared_prompts[0]!r}")
        if shared_seeds:
            shared.append(f"seed(s) {', '.join(map(str, shared_seeds[:5]))}")
        raise ValueError(
            f"the profile {source} was calibrated on {' and '.join(shared)} that this evaluation scores: its "
            "policies would be scored on the trajectories they were fitted to. Recalibrate it on other prompts and "
            f"seeds (dit-cache calibrate --prompts OTHER.txt --seeds {CALIBRATION_SEED_BASE}), or pass "
            "--allow-in-sample to keep it (every row that reads it is then labelled profile_in_sample)"
        )
    return info
