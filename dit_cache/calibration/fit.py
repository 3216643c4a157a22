"""From raw per-prompt records to a profile: per-step means and spreads on the sigma grid, TeaCache's polynomial
with its R², mean per-block traces and LeMiCa edge weights. Merging shards is concatenating records and rebuilding."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch

from . import keys
from .profile import Profile, ProfileError
from .resample import position_grid, sigma_grid
from .sections import BranchSteps, LeMiCaSection, TeaCacheFit

TEACACHE_DEGREE = 4


def fit_polynomial(x: list[float], y: list[float], degree: int = TEACACHE_DEGREE) -> tuple[list[float], float]:
    """Least-squares polynomial y ~ poly(x) (numpy.poly1d order, highest power first) and its R²."""
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(xs) & np.isfinite(ys)
    xs, ys = xs[keep], ys[keep]
    distinct = len(np.unique(xs))
    if distinct < 2:
        return [0.0] * (degree - 1) + [1.0, 0.0], 0.0
    deg = min(degree, distinct - 1)
    coefficients = np.polyfit(xs, ys, deg)
    predicted = np.polyval(coefficients, xs)
    total = float(np.sum((ys - ys.mean()) ** 2))
    r2 = 1.0 - float(np.sum((ys - predicted) ** 2)) / total if total > 0 else 1.0
    padded = [0.0] * (degree - deg) + [float(c) for c in coefficients]
    return padded, r2


def pairs_matrix(pairs: list[list[float]]) -> torch.Tensor:
    """Lower-triangular (steps x steps) matrix from per-step lists of distances to every earlier step."""
    n = len(pairs)
    matrix = torch.zeros(n, n, dtype=torch.float32)
    for t, row in enumerate(pairs):
        if row:
            matrix[t, : len(row)] = torch.tensor(row, dtype=torch.float32)
    return matrix


def _finite_mean(rows: list[list[float | None]]) -> tuple[list[float], list[float]]:
    array = np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=np.float64)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a step with no finite value (the first) is expected
        mean = np.nanmean(np.where(np.isfinite(array), array, np.nan), axis=0)
        std = np.nanstd(np.where(np.isfinite(array), array, np.nan), axis=0)
    return np.nan_to_num(mean).tolist(), np.nan_to_num(std).tolist()


def split_record(record: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    """A prompt's record as JSON-sized numbers plus the large arrays (fb pairs, per-block traces) to store apart."""
    small = {k: v for k, v in record.items() if k != "branches"}
    small["branches"], arrays = {}, {}
    index = record["index"]
    for branch, data in record["branches"].items():
        small["branches"][branch] = {k: data[k] for k in keys.RECORD_LISTS}
        for key in keys.PAIR_KINDS:
            if any(data.get(key) or ()):  # the stack tables are recorded with block traces only
                arrays[keys.record_array(index, branch, key)] = pairs_matrix(data[key])
        if data.get(keys.UNIT_FEATURES) is not None:  # HyCa replays its solvers on these, per record
            features = torch.as_tensor(data[keys.UNIT_FEATURES], dtype=torch.float32)
            arrays[keys.record_array(index, branch, keys.UNIT_FEATURES)] = features
        for key in keys.BLOCK_KINDS:
            rows = data[key]
            if not any(rows):
                continue
            width = max((len(r) for r in rows), default=0)
            table = torch.full((len(rows), width), float("nan"))
            for i, row in enumerate(rows):
                if row:
                    table[i, : len(row)] = torch.tensor([math.nan if v is None else v for v in row])
            arrays[keys.record_array(index, branch, key)] = table
    for key in [k for k in record if k.startswith(keys.LEMICA)]:  # global edges, one matrix per forecast order
        arrays[keys.record_prefix(index) + key] = torch.as_tensor(record[key], dtype=torch.float32)
        small.pop(key)
    return small, arrays


def build_profile(
    fingerprint: dict, sampler: dict, records: list[dict], arrays: dict[str, torch.Tensor], settings: dict
) -> Profile:
    """Aggregate per-prompt `records` (JSON part) and their `arrays` into a profile."""
    records = sorted(records, key=lambda r: r["index"])
    profile = Profile(fingerprint=fingerprint, sampler=sampler, prompts=len(records), records=records)
    profile.policies[keys.CALIBRATION] = dict(settings)
    profile.arrays = dict(arrays)
    if not records:
        return profile
    branches = sorted({b for r in records for b in r["branches"]})
    xs, ys = [], []
    for branch in branches:
        rows = [r["branches"][branch] for r in records if branch in r["branches"]]
        lengths = {len(row[keys.STEPS]) for row in rows}
        if len(lengths) != 1:
            raise ProfileError(f"calibration records of branch {branch!r} cover different step counts: {lengths}")
        sigmas = rows[0][keys.SIGMA]
        try:
            grid, kind = sigma_grid(sigmas).tolist(), "sigma"
        except (ValueError, TypeError):
            grid, kind = position_grid(len(sigmas)).tolist(), "position"
        profile.grid_kind = kind
        ratio_mean, ratio_std = _finite_mean([row[keys.MAG_RATIO] for row in rows])
        x_mean, _ = _finite_mean([row[keys.X] for row in rows])
        y_mean, _ = _finite_mean([row[keys.Y] for row in rows])
        ratio_mean[0] = 1.0
        profile.branches[branch] = BranchSteps(
            grid=grid,
            sigma=sigmas,
            mag_ratio=ratio_mean,
            mag_ratio_std=ratio_std,
            indicator_change=x_mean,
            output_change=y_mean,
        ).to_dict()
        for key in (*keys.PAIR_KINDS, *keys.BLOCK_KINDS):
            names = [keys.record_array(r["index"], branch, key) for r in records if branch in r["branches"]]
            stack = [arrays[k] for k in names if k in arrays]
            if stack and all(s.shape == stack[0].shape for s in stack):
                profile.arrays[keys.branch_array(branch, key)] = torch.nanmean(torch.stack(stack), dim=0)
        fb = profile.arrays.get(keys.branch_array(branch, keys.FB_PAIRS))
        if fb is not None:
            profile.branches[branch][keys.FB_CHANGE] = [0.0] + [float(fb[t, t - 1]) for t in range(1, fb.shape[0])]
        for row in rows:
            for x, y in zip(row[keys.X], row[keys.Y]):
                if x is not None and y is not None and math.isfinite(x) and math.isfinite(y):
                    xs.append(x)
                    ys.append(y)
    coefficients, r2 = fit_polynomial(xs, ys)
    fit = TeaCacheFit(coefficients=coefficients, r2=r2, points=len(xs), warmup=0.0)
    profile.policies[keys.TEACACHE] = fit.to_dict()
    edges = [arrays[k] for r in records if (k := keys.record_edges(r["index"])) in arrays]
    for order in keys.FORECAST_ORDERS:  # edges measured with LeMiCa's forecast, used by LeMiCa(forecast=order)
        found = [arrays[k] for r in records if (k := keys.record_edges(r["index"], order)) in arrays]
        if found:
            profile.arrays[keys.lemica_edges(order)] = torch.stack(found).mean(dim=0)
    if edges:
        profile.arrays[keys.LEMICA_EDGES] = torch.stack(edges).mean(dim=0)
        section = LeMiCaSection(
            num_steps=int(edges[0].shape[0]), mode=settings.get("lemica"), max_span=settings.get("lemica_max_span")
        )
        profile.policies[keys.LEMICA] = section.to_dict()
    return profile


def merge_profiles(shards: list[Profile]) -> Profile:
    """One profile from shards of the same model and settings (refusing anything else, saying why)."""
    if not shards:
        raise ProfileError("nothing to merge: no shards given")
    first = shards[0]
    for shard in shards[1:]:
        for what in ("fingerprint", "sampler"):
            if getattr(shard, what) != getattr(first, what):
                raise ProfileError(
                    f"cannot merge {shard.name!r} into {first.name!r}: different {what} "
                    f"({getattr(shard, what)} vs {getattr(first, what)})"
                )
        if shard.policies.get(keys.CALIBRATION) != first.policies.get(keys.CALIBRATION):
            raise ProfileError(
                f"cannot merge {shard.name!r} into {first.name!r}: different calibration settings "
                f"({shard.policies.get(keys.CALIBRATION)} vs {first.policies.get(keys.CALIBRATION)})"
            )
    records: dict[int, dict] = {}
    arrays: dict[str, torch.Tensor] = {}
    for shard in shards:
        for record in shard.records:
            previous = records.get(record["index"])
            if previous is not None and (previous["prompt"], previous["seed"]) != (record["prompt"], record["seed"]):
                raise ProfileError(f"shards disagree on calibration job {record['index']}: {previous} vs {record}")
            records[record["index"]] = record
        arrays.update({k: v for k, v in shard.arrays.items() if k.startswith(keys.RECORDS)})
    return build_profile(
        first.fingerprint, first.sampler, list(records.values()), arrays, first.policies.get(keys.CALIBRATION, {})
    )


def record_arrays(profile: Profile, index: int) -> dict[str, Any]:
    prefix = keys.record_prefix(index)
    return {k[len(prefix) :]: v for k, v in profile.arrays.items() if k.startswith(prefix)}
