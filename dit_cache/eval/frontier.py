"""Methods compared at exactly the same compute: each method's settings give points (measured compute fraction,
mean PSNR); its Pareto frontier (no other setting computes no more and scores at least as well) is interpolated
linearly at the asked fractions. A fraction outside the frontier's span is not reached: nothing is extrapolated, and
no slack lets a method that computed more count as equal."""

from __future__ import annotations

import math
from collections import defaultdict

FRACTIONS = (0.5, 0.33)


def pareto_frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point dominates (fraction <= and PSNR >=, one of them strictly), by fraction; PSNR
    rises along it. Non-finite points (an output identical to the reference) are left out."""
    finite = sorted((f, p) for f, p in points if math.isfinite(f) and math.isfinite(p))
    frontier: list[tuple[float, float]] = []
    for fraction, psnr in finite:  # ascending fraction, and for equal fractions ascending PSNR
        if frontier and frontier[-1][0] == fraction:
            frontier.pop()  # the same fraction with a higher PSNR replaces it
        if not frontier or psnr > frontier[-1][1]:
            frontier.append((fraction, psnr))
    return frontier


def value_at(frontier: list[tuple[float, float]], fraction: float) -> float | None:
    """PSNR on the frontier at `fraction` (linear between the two points around it); None outside its span."""
    if not frontier or not frontier[0][0] <= fraction <= frontier[-1][0]:
        return None
    for (f0, p0), (f1, p1) in zip(frontier, frontier[1:]):
        if f0 <= fraction <= f1:
            return p0 if f1 == f0 else p0 + (p1 - p0) * (fraction - f0) / (f1 - f0)
    return frontier[0][1]  # a single point, exactly at the fraction


def method_points(rows: list[dict]) -> dict[str, dict]:
    """Per method (dit_cache policy, baseline or peer, over all its settings) its settings' mean points.

    rows: results rows (one per method key and sample). A setting is one method key (e.g. `taylorseer@2`,
    `taylorseer:interval=3`); it counts only if it has every scored sample (as many as the uncached reference) and
    each has a PSNR and a compute fraction, else it is listed under `not_run` with the reason (a peer's error, a
    skipped target, an unfinished sweep)."""
    by_key: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        if row.get("family") not in (None, "reference"):
            by_key[row["method"]].append(row)
    samples = len({r["sample"] for r in rows if r.get("family") == "reference"}) or max(
        map(len, by_key.values()), default=0
    )
    methods: dict[str, dict] = {}
    for key, group in sorted(by_key.items()):
        first = group[0]
        name = f"peer:{first['name']}" if first["family"] == "peer" else method_name(key, first["name"])
        entry = methods.setdefault(name, {"family": first["family"], "settings": [], "not_run": {}})
        why = next((r.get("error") or r.get("skipped") for r in group if r.get("error") or r.get("skipped")), None)
        usable = all(r.get("psnr") is not None and r.get("compute_fraction") is not None for r in group)
        if why is None and usable and len(group) < samples:  # means over other samples would not compare
            why = f"incomplete: {len(group)} of {samples} samples"
        if why is not None or not usable:  # a crash, a skipped target, a sample without a score: said, not averaged
            entry["not_run"][key] = why or "a sample has no PSNR or compute fraction"
            continue
        fraction = sum(r["compute_fraction"] for r in group) / len(group)
        psnr = sum(r["psnr"] for r in group) / len(group)
        entry["settings"].append({"method": key, "compute_fraction": fraction, "psnr": psnr, "samples": len(group)})
    return methods


_KNOBS = ("speedup", "interval", "profile")  # what a method's settings vary along its frontier


def method_name(key: str, name: str) -> str:
    """A dit_cache method with options beyond its knob is a method of its own (`lemica:forecast=1,speedup=2` ->
    `lemica:forecast=1`, beside `lemica@2` -> `lemica`)."""
    from ..config import parse_policy_spec

    spec = key.split("@")[0]
    if ":" not in spec:
        return name
    _, options = parse_policy_spec(spec)
    kept = [f"{k}={v}" for k, v in options.items() if k not in _KNOBS]
    return f"{name}:{','.join(kept)}" if kept else name


def equal_compute(rows: list[dict], fractions: tuple[float, ...] = FRACTIONS) -> dict:
    """The table of methods at equal compute, as JSON: per method its frontier and its PSNR at each fraction (None
    with `reached: false` where its frontier does not span it); per fraction the best dit_cache method, the best
    peer and the margin in dB."""
    methods = method_points(rows)
    table = []
    for name, entry in methods.items():
        points = [(s["compute_fraction"], s["psnr"]) for s in entry["settings"]]
        frontier = pareto_frontier(points)
        at = {}
        for fraction in fractions:
            value = value_at(frontier, fraction)
            at[f"{fraction:g}"] = {"psnr": value, "reached": value is not None}
        table.append({
            "method": name, "family": entry["family"], "settings": entry["settings"],
            "frontier": [{"compute_fraction": f, "psnr": p} for f, p in frontier],
            "span": [frontier[0][0], frontier[-1][0]] if frontier else None, "at": at, "not_run": entry["not_run"],
        })  # fmt: skip
    verdicts = {}
    for fraction in fractions:
        key = f"{fraction:g}"
        ours = _best(table, key, ("dit_cache",))
        peer = _best(table, key, ("peer",))
        verdicts[key] = {
            "best_dit_cache": ours,
            "best_peer": peer,
            "margin_db": None if ours is None or peer is None else ours["psnr"] - peer["psnr"],
            "peers_not_reaching": [m["method"] for m in table if m["family"] == "peer" and not m["at"][key]["reached"]],
        }
    return {"fractions": list(fractions), "methods": table, "best": verdicts}


def _best(table: list[dict], key: str, families: tuple[str, ...]) -> dict | None:
    reached = [m for m in table if m["family"] in families and m["at"][key]["reached"]]
    if not reached:
        return None
    best = max(reached, key=lambda m: m["at"][key]["psnr"])
    return {"method": best["method"], "psnr": best["at"][key]["psnr"]}
