"""What dit-cache covers, as one table: every transformer class it ships an adapter for or refuses, the pipelines
it is tested through, the policies that work on it and the built-in profiles made for it. `dit-cache info` prints it
and `scripts/families_table.py` writes it into the README, so the two cannot disagree."""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field

from . import adapters
from .adapters import catalog
from .calibration.builtin import BUILTINS, UNMATCHED, builtin_policies, profiles_of_class
from .policies import policies_where


@dataclass(frozen=True)
class FamilyRow:
    """One transformer class. `gaps`: user policy -> why it does not work on this class; `untested`: policies no
    tiny pipeline of the class exercises (`cfg` where the tiny pipeline runs without CFG)."""

    transformer: str
    adapter: str = ""
    pipelines: tuple[str, ...] = ()
    policies: tuple[str, ...] = ()
    gaps: dict[str, str] = field(default_factory=dict)
    untested: tuple[str, ...] = ()
    profiles: tuple[str, ...] = ()
    refused: str = ""
    without_pipeline: str = ""  # why the adapter is tested through a hand-written loop instead of its pipeline
    caveat: str = ""  # a pipeline setting caching does not support yet

    def policy_summary(self) -> str:
        if self.refused:
            return "refused"
        summary = "all but " + ", ".join(self.gaps) if self.gaps else "all"
        return summary + (f" ({', '.join(self.untested)} untested)" if self.untested else "")


def _shipped_specs() -> dict[str, str]:
    """class name -> adapter name, for the adapters shipped in dit_cache.adapters (not ones registered at run time)."""
    shipped = {}
    for info in pkgutil.iter_modules(adapters.__path__):
        spec = getattr(importlib.import_module(f"{adapters.__name__}.{info.name}"), "SPEC", None)
        if spec is not None:
            shipped.update({name: spec.name for name in spec.class_names})
    registered = set(adapters.supported_classes())
    return {name: spec for name, spec in shipped.items() if name in registered}


def catalog_rows() -> list[FamilyRow]:
    """Every shipped adapter's class (alphabetical), then every refused class."""
    from .eval.methods import user_policies
    from .testing import ALL_FAMILIES, LOOP_FAMILIES

    policies = tuple(user_policies())
    rows = []
    for name, adapter in sorted(_shipped_specs().items()):
        tiny = [family for family in ALL_FAMILIES.values() if family.transformer == name]
        loops = [family for family in LOOP_FAMILIES.values() if family.transformer == name]
        gaps: dict[str, str] = {}
        for family in tiny:
            gaps.update(family.known_gaps)
        tested = tiny + loops
        untested = ("cfg",) if tested and not any(family.cfg for family in tested) and "cfg" not in gaps else ()
        rows.append(
            FamilyRow(
                transformer=name,
                adapter=adapter,
                pipelines=tuple(sorted({family.pipeline for family in tiny})),
                policies=tuple(p for p in policies if p not in gaps),
                gaps={p: gaps[p] for p in policies if p in gaps},
                untested=untested if "cfg" in policies else (),
                profiles=tuple(profiles_of_class(name)),
                without_pipeline="; ".join(family.why for family in loops),
                caveat="; ".join(family.caveat for family in tiny if family.caveat),
            )
        )
    for name, reason in sorted(catalog.REFUSED.items()):
        rows.append(FamilyRow(transformer=name, refused=reason, profiles=tuple(profiles_of_class(name))))
    return rows


def unmatched_rows() -> list[tuple[str, str, str, str]]:
    """(published name, policy, class, why) of the published calibrations shipped as no built-in profile."""
    return [(name, *entry) for name, entry in UNMATCHED.items()]


def _profiles_cell(row: FamilyRow, code: str = "") -> str:
    if not row.profiles:
        return "-"
    return ", ".join(f"{code}{name}{code} ({', '.join(builtin_policies(name))})" for name in row.profiles)


def markdown() -> str:
    """The README's family table (between `<!-- families:start -->` and `<!-- families:end -->`)."""
    from .eval.methods import user_policies

    rows = catalog_rows()
    supported = [row for row in rows if not row.refused]
    lines = [
        f"{len(supported)} transformer classes, each tested through the diffusers pipelines named (tiny random "
        "weights, `dit_cache.testing`), or where none can run here through a hand-written denoising loop; "
        f"policies: {', '.join(f'`{p}`' for p in user_policies())}. "
        f"{' and '.join(f'`{p}`' for p in policies_where(needs_profile='required'))} need a profile: a built-in one "
        "that matches the model, or one recorded with `dit-cache calibrate`; "
        f"{' and '.join(f'`{p}`' for p in policies_where(needs_profile='recorded'))} need a recorded one (`hyca`: with "
        "`--block-traces`), `auto` one with candidate runs (`--candidates`, the zoo's have them); `teacache` without "
        "one uses the identity rescaling. "
        f"{len(BUILTINS)} built-in profiles come from the published calibrations of their checkpoints.",
        "",
        "| transformer class | adapter | pipelines tested | policies | built-in profiles |",
        "|---|---|---|---|---|",
    ]
    for row in supported:
        policies = row.policy_summary()
        if row.gaps:
            policies = "all but " + "; ".join(f"`{p}` ({why})" for p, why in row.gaps.items())
            policies += f" ({', '.join(row.untested)} untested)" if row.untested else ""
        policies += f", {row.caveat}" if row.caveat else ""
        pipelines = ", ".join(row.pipelines) or "-"
        if row.without_pipeline:
            pipelines = f"adapter tested without its pipeline: {row.without_pipeline}"
        lines.append(f"| {row.transformer} | {row.adapter} | {pipelines} | {policies} | {_profiles_cell(row, '`')} |")
    lines += ["", "Refused by `apply`, with the reason:", "", "| transformer class | reason |", "|---|---|"]
    lines += [f"| {row.transformer} | {row.refused} |" for row in rows if row.refused]
    lines += [
        "",
        "Published calibrations (`dit_cache/calibration/data/published_calibration.json`) without a built-in profile:",
        "",
        "| published | policy | transformer class | why |",
        "|---|---|---|---|",
    ]
    lines += [f"| {name} | {policy} | {cls} | {why} |" for name, policy, cls, why in unmatched_rows()]
    return "\n".join(lines) + "\n"


def text() -> str:
    """The table for a terminal (`dit-cache info`)."""
    rows = catalog_rows()
    width = max(len(row.transformer) for row in rows) + 2
    lines = [f"{'transformer class':<{width}}{'policies':<24}built-in profiles"]
    for row in rows:
        lines.append(f"{row.transformer:<{width}}{row.policy_summary():<24}{_profiles_cell(row)}")
    gaps = [(row.transformer, p, why) for row in rows for p, why in row.gaps.items()]
    if gaps:
        lines += ["", "policy gaps:"] + [f"  {cls} {p}: {why}" for cls, p, why in gaps]
    caveats = [(row.transformer, row.caveat) for row in rows if row.caveat]
    if caveats:
        lines += ["", "caveats:"] + [f"  {cls}: {caveat}" for cls, caveat in caveats]
    loops = [(row.transformer, row.without_pipeline) for row in rows if row.without_pipeline]
    if loops:
        lines += ["", "tested through a hand-written loop, not their pipeline:"]
        lines += [f"  {cls}: {why}" for cls, why in loops]
    lines += ["", "refused:"] + [f"  {row.transformer}: {row.refused}" for row in rows if row.refused]
    lines += ["", "published calibrations without a built-in profile:"]
    lines += [f"  {name} ({policy}, {cls}): {why}" for name, policy, cls, why in unmatched_rows()]
    lines += [
        "",
        f"{' and '.join(policies_where(needs_profile='required'))} need a profile: a matching built-in one above, or "
        f"`dit-cache calibrate`; {' and '.join(policies_where(needs_profile='recorded'))} need a recorded one (hyca: "
        "with --block-traces), auto one with candidate runs "
        "(--candidates); "
        "teacache without one uses the identity rescaling.",
    ]
    return "\n".join(lines)
