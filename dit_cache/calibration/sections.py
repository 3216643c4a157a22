"""Typed views of a profile's sections, each checked when read: per-branch per-step lists on their grid, the fitted
numbers of each policy (TeaCache, MagCache, LeMiCa, auto), the per-job records, and the shapes of the large arrays.

A `Profile` keeps its sections as the JSON has them (so a file round-trips bitwise, and a profile edited in memory
stays a plain dict); `Profile.section(TeaCacheFit)`, `Profile.job_records()` and `Profile.validate()` read them
through these classes. Writers build a section with its class and store `to_dict()`. A new section is one `Section`
subclass (its `NAME`, its fields with `checked(...)`; defining it registers it for the load check, so it may live
beside the policy that reads it) and, if it brings arrays, their names in `keys.py` and shapes in `check_arrays`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar

from . import keys
from .schema import (
    SchemaError,
    check,
    coefficients,
    finite,
    grid_length,
    integer,
    per_step,
    run_result,
    schedules,
)

S = TypeVar("S", bound="Section")
SECTIONS: dict[str, type[Section]] = {}  # policies.<name> -> its class, filled as the classes below are defined

Check = tuple[Callable[[Any], bool], str]


def checked(ok: Callable[[Any], bool], what: str, default: Any = None) -> Any:
    """A section field whose value, where present, must satisfy `ok` (`what` says what it must be)."""
    return field(default=default, metadata={"check": (ok, what)})


def _optional(ok: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or ok(v)


def _fraction(v: Any) -> bool:
    return finite(v) and 0 <= v < 1


def _text(v: Any) -> bool:
    return isinstance(v, str)


def _job_runs(index: Any, runs: Any) -> bool:
    return (
        str(index).isdigit()
        and isinstance(runs, dict)
        and all(isinstance(x, str) or run_result(x) for x in runs.values())
    )


@dataclass(frozen=True)
class Section:
    """A policy section (`profile.policies[NAME]`): known fields, checked, and the keys it does not know (`extra`),
    kept so that nothing a newer writer added is lost."""

    NAME: ClassVar[str] = ""
    REQUIRED: ClassVar[dict[str, str]] = {}  # field -> what it is, for the message when it is missing

    extra: dict = field(default_factory=dict, repr=False)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.NAME:  # a section class is all it takes: checked on load under policies.<NAME>
            SECTIONS[cls.NAME] = cls

    @classmethod
    def read(cls: type[S], data: Any, where: str | None = None) -> S:
        where = where or f"policies.{cls.NAME}"
        check(where, data, lambda d: isinstance(d, dict), "a dict")
        known = {f.name: f for f in fields(cls) if f.name != "extra"}
        for name, f in known.items():
            if name in data and "check" in f.metadata:
                ok, what = f.metadata["check"]
                check(f"{where}.{name}", data[name], ok, what)
        for name, what in cls.REQUIRED.items():
            if name not in data:
                raise SchemaError(f"{where} has no {name} ({what})")
        section = cls(
            **{k: data[k] for k in known if k in data}, extra={k: v for k, v in data.items() if k not in known}
        )
        section.check_together(where)
        return section

    def check_together(self, where: str) -> None:
        """Checks that need more than one field."""

    def to_dict(self) -> dict:
        """The JSON form: the fields that are set (None is left out), in field order, then `extra`."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**{k: v for k, v in data.items() if v is not None}, **self.extra}


# ---------------------------------------------------------------------------------------------------- policies
@dataclass(frozen=True)
class TeaCacheFit(Section):
    """TeaCache's rescaling polynomial (fitted by calibration, or published) and its defaults."""

    NAME: ClassVar[str] = keys.TEACACHE
    REQUIRED: ClassVar[dict[str, str]] = {"coefficients": "the rescaling polynomial"}

    coefficients: list | None = checked(
        coefficients, "a list of 1-10 finite numbers (the rescaling polynomial, highest power first)"
    )
    r2: float | None = checked(_optional(lambda v: isinstance(v, (int, float))), "a number (the fit's R²)")
    points: int | None = checked(_optional(lambda v: integer(v) and v >= 0), "an integer >= 0")
    indicator: str | None = checked(_optional(_text), "a text naming the indicator")
    threshold: float | None = checked(_optional(lambda v: finite(v) and v >= 0), "a finite number >= 0")
    warmup: float | None = checked(_optional(_fraction), "a fraction of the steps in [0, 1)")
    threshold_speedups: dict | None = checked(
        _optional(lambda v: isinstance(v, dict) and all(finite(s) and s >= 1 for s in v.values())),
        "a dict of threshold -> speedup (numbers >= 1)",
    )
    source: str | None = checked(_optional(_text), "a text naming where the numbers come from")


@dataclass(frozen=True)
class MagCacheDefaults(Section):
    """MagCache's defaults for a profile (published with its ratios); the ratios are the branches' `mag_ratio`.
    The field defaults are the policy's own defaults where a profile names none."""

    NAME: ClassVar[str] = keys.MAGCACHE

    threshold: float | None = checked(_optional(lambda v: finite(v) and v >= 0), "a finite number >= 0", 0.12)
    max_skip: int | None = checked(_optional(lambda v: integer(v) and v >= 0), "an integer >= 0", 2)
    retention: float | None = checked(_optional(_fraction), "a fraction of the steps in [0, 1)", 0.2)
    source: str | None = checked(_optional(_text), "a text naming where the numbers come from")


@dataclass(frozen=True)
class LeMiCaSection(Section):
    """LeMiCa: the step count its edges (arrays `lemica/edges...`) or published schedules are written for."""

    NAME: ClassVar[str] = keys.LEMICA

    num_steps: int | None = checked(lambda v: integer(v) and v >= 1, "an integer >= 1")
    mode: str | None = checked(_optional(lambda v: v in ("proxy", "global")), "'proxy' or 'global'")
    max_span: int | None = checked(_optional(lambda v: integer(v) and v >= 2), "an integer >= 2")
    schedules: dict | None = None  # budget -> computed steps (published); checked against num_steps below
    source: str | None = checked(_optional(_text), "a text naming where the numbers come from")

    def check_together(self, where: str) -> None:
        if self.schedules is not None:
            check(f"{where}.schedules", self.schedules, lambda v: schedules(v, self.num_steps),
                  f"a dict of budget -> sorted computed steps starting at 0, below num_steps={self.num_steps}")  # fmt: skip


@dataclass(frozen=True)
class AutoSection(Section):
    """`auto`'s candidate runs: per job index, per "candidate@target", [compute fraction, error or None] or why the
    candidate did not run."""

    NAME: ClassVar[str] = keys.AUTO

    candidates: list | None = checked(
        lambda v: isinstance(v, list) and v and all(isinstance(c, str) for c in v),
        "a non-empty list of candidate specs",
    )
    targets: list | None = checked(
        lambda v: isinstance(v, list) and v and all(finite(t) and t > 1 for t in v),
        "a non-empty list of speedups above 1",
    )
    runs: dict | None = checked(
        lambda v: isinstance(v, dict) and all(_job_runs(k, r) for k, r in v.items()),
        "a dict of job index -> {candidate@target: [compute fraction, error or null] or a reason}",
    )
    seconds: float | None = checked(_optional(finite), "a number of seconds")


def searched_key(order: int, coordinate: str) -> str:
    """The key of the schedules searched for TaylorSeer at `order` forecasting along `coordinate`."""
    return f"order={order},coordinate={coordinate}"


def _searched(schedules: Any) -> bool:
    """{searched_key: {count: {steps, score, converged, tried, seconds}}}, each schedule `count` increasing steps
    from 0."""
    if not isinstance(schedules, dict):
        return False
    for by_count in schedules.values():
        if not isinstance(by_count, dict):
            return False
        for count, found in by_count.items():
            steps = found.get("steps") if isinstance(found, dict) else None
            if not (
                str(count).isdigit()
                and isinstance(steps, list)
                and len(steps) == int(count)
                and all(integer(s) for s in steps)
                and steps == sorted(set(steps))
                and steps[:1] == [0]
                and finite(found.get("score"))
                and isinstance(found.get("converged"), bool)
            ):
                return False
    return True


@dataclass(frozen=True)
class SearchedSchedules(Section):
    """TaylorSeer's searched schedules (`dit-cache calibrate --search-schedules`): per (order, coordinate), per count
    of computed steps, the steps found on the calibration jobs `jobs`, their score (mean latent PSNR against the
    uncached run), whether the local search converged, how many schedules it scored and its seconds."""

    NAME: ClassVar[str] = keys.TAYLORSEER
    REQUIRED: ClassVar[dict[str, str]] = {"num_steps": "the step count the schedules were searched at"}

    num_steps: int | None = checked(lambda v: integer(v) and v >= 2, "an integer >= 2 (the searched step count)")
    jobs: list | None = checked(
        _optional(lambda v: isinstance(v, list) and all(integer(j) for j in v)), "a list of job indices"
    )
    schedules: dict | None = checked(
        _optional(_searched),
        "a dict of 'order=K,coordinate=C' -> {count: {steps: [count increasing steps from 0], score, converged, "
        "tried, seconds}}",
    )

    def check_together(self, where: str) -> None:
        for key, by_count in (self.schedules or {}).items():
            for count, found in by_count.items():
                if found["steps"][-1] >= self.num_steps:
                    raise SchemaError(
                        f"{where}.schedules[{key!r}][{count!r}] computes step {found['steps'][-1]}, out of range for "
                        f"num_steps={self.num_steps}"
                    )

    def schedule(self, order: int, coordinate: str, count: int) -> list[int] | None:
        found = (self.schedules or {}).get(searched_key(order, coordinate), {}).get(str(count))
        return None if found is None else list(found["steps"])


def _assignment(v: Any) -> bool:
    return (
        isinstance(v, dict)
        and isinstance(v.get("solvers"), list)
        and all(integer(s) and 0 <= s <= 2 for s in v["solvers"])
        and (v.get("error") is None or finite(v["error"]))
    )


@dataclass(frozen=True)
class HyCaSection(Section):
    """HyCa's solver per unit, searched on the final output of the calibration jobs: per schedule key
    (`hyca_schedule_key`: step count and computed steps), {"solvers": one order per unit in `units` order, "error":
    mean relative error of the final latents, "uniform": the same error of orders 0, 1, 2 everywhere, "speedup"}."""

    NAME: ClassVar[str] = keys.HYCA

    units: list | None = checked(
        _optional(lambda v: isinstance(v, list) and all(isinstance(u, str) for u in v)),
        "a list of unit labels (block.submodule)",
    )
    prompts: int | None = checked(_optional(lambda v: integer(v) and v >= 1), "an integer >= 1 (jobs searched on)")
    assignments: dict | None = checked(
        _optional(lambda v: isinstance(v, dict) and all(isinstance(k, str) and _assignment(a) for k, a in v.items())),
        'a dict of schedule key -> {"solvers": [0, 1 or 2 per unit], "error": number}',
    )
    seconds: float | None = checked(_optional(finite), "a number of seconds")

    def check_together(self, where: str) -> None:
        for key, found in (self.assignments or {}).items():
            if self.units is not None and len(found["solvers"]) != len(self.units):
                raise SchemaError(
                    f"{where}.assignments[{key!r}] has {len(found['solvers'])} solvers for {len(self.units)} units"
                )


def hyca_schedule_key(num_steps: int, computed: Sequence[int]) -> str:
    """The key of a HyCa assignment: the step count and the steps the schedule computes ("30:0,1,3,5")."""
    return f"{num_steps}:" + ",".join(str(int(s)) for s in sorted(computed))


@dataclass(frozen=True)
class PromptList(Section):
    """The calibration's prompt list (a resumed run must use the same one)."""

    NAME: ClassVar[str] = keys.CALIBRATION_PROMPTS

    sha: str | None = checked(_optional(_text), "a text (the list's hash)")
    labels: list | None = checked(
        _optional(lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)), "a list of prompt labels"
    )


# ---------------------------------------------------------------------------------------------------- per step
POSITIVE_PER_STEP = {keys.MAG_RATIO}  # ratios of norms: log-resampled, so zero or negative values are damage


@dataclass(frozen=True)
class BranchSteps:
    """One CFG branch's per-step lists, one entry per calibrated step, on `grid` (normalized sigma or position).
    Other per-step lists a writer added are in `extra` (checked the same way)."""

    grid: list | None = None
    sigma: list | None = None
    mag_ratio: list | None = None
    mag_ratio_std: list | None = None
    indicator_change: list | None = None
    output_change: list | None = None
    fb_change: list | None = None
    extra: dict = field(default_factory=dict, repr=False)

    @classmethod
    def read(cls, name: str, data: Any, steps: int | None) -> BranchSteps:
        """Check `data` (branch `name`): every list one number per step, as long as the grid, else `steps`."""
        where = f"branches.{name}"
        check(where, data, lambda d: isinstance(d, dict), "a dict of per-step lists")
        length = grid_length(f"{where}.{keys.GRID}", data[keys.GRID]) if keys.GRID in data else steps
        for key, values in data.items():
            if key == keys.GRID:
                continue
            n = per_step(f"{where}.{key}", values, positive=key in POSITIVE_PER_STEP)
            if length is not None and n != length:
                raise SchemaError(
                    f"{where}.{key} has {n} entries where the calibration has {length} steps (one per step)"
                )
            length = n
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: data[k] for k in known if k in data}, extra={k: v for k, v in data.items() if k not in known})

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**{k: v for k, v in data.items() if v is not None}, **self.extra}


@dataclass(frozen=True)
class RecordBranch:
    """One job's per-step lists of one branch (`keys.RECORD_LISTS`): `x`, `y` TeaCache's pairs, None where a step
    has no previous one; scalars a recorder adds are in `extra`."""

    steps: list | None = None
    sigma: list | None = None
    x: list | None = None
    y: list | None = None
    mag_ratio: list | None = None
    extra: dict = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class Record:
    """One calibration job (prompt x seed): its index (the key of its arrays, `keys.record_array`) and lists."""

    index: int
    branches: dict[str, RecordBranch]
    prompt: str | None = None
    seed: int | None = None
    extra: dict = field(default_factory=dict, repr=False)

    @classmethod
    def read(cls, i: int, record: Any, grids: dict[str, int | None]) -> Record:
        """Check record `i`; `grids`: branch -> its grid's length (the profile's), for the lengths of its lists."""
        where = f"records[{i}]"
        check(where, record, lambda r: isinstance(r, dict) and isinstance(r.get("branches"), dict),
              "a dict with the record's per-branch lists under 'branches'")  # fmt: skip
        check(f"{where}.index", record.get("index"), integer, "an integer")
        branches = {}
        for name, data in record["branches"].items():
            length = grids.get(name)
            check(f"{where}.branches.{name}", data, lambda d: isinstance(d, dict), "a dict of per-step lists")
            for key, values in data.items():
                if not isinstance(values, list):
                    continue  # scalars a recorder may add
                n = per_step(f"{where}.branches.{name}.{key}", values)
                if length is not None and n != length:
                    raise SchemaError(
                        f"{where}.branches.{name}.{key} has {n} entries where the branch's grid has {length} steps"
                    )
            known = {f.name for f in fields(RecordBranch)} - {"extra"}
            branches[name] = RecordBranch(**{k: data[k] for k in known if k in data},
                                          extra={k: v for k, v in data.items() if k not in known})  # fmt: skip
        top = {"index", "branches", "prompt", "seed"}
        return cls(record["index"], branches, record.get("prompt"), record.get("seed"),
                   {k: v for k, v in record.items() if k not in top})  # fmt: skip


# ---------------------------------------------------------------------------------------------------- whole profile
def read_branches(branches: Any, steps: int | None) -> dict[str, BranchSteps]:
    check("branches", branches, lambda b: isinstance(b, dict), "a dict of CFG branch -> per-step lists")
    return {name: BranchSteps.read(name, data, steps) for name, data in branches.items()}


def read_policies(policies: Any) -> dict[str, Section]:
    check("policies", policies, lambda p: isinstance(p, dict), "a dict of policy -> fitted numbers")
    read = {}
    for name, data in policies.items():
        check(f"policies.{name}", data, lambda d: isinstance(d, dict), "a dict")
        if name in SECTIONS:
            read[name] = SECTIONS[name].read(data)
    return read


def grid_lengths(branches: dict) -> dict[str, int | None]:
    return {name: len(data[keys.GRID]) if isinstance(data.get(keys.GRID), list) else None for name, data in
            branches.items()}  # fmt: skip


def read_records(records: Any, branches: dict) -> list[Record]:
    check("records", records, lambda r: isinstance(r, list), "a list of per-prompt records")
    grids = grid_lengths(branches)
    return [Record.read(i, record, grids) for i, record in enumerate(records)]


def _shape_error(key: str, want: str, shape: tuple) -> SchemaError:
    return SchemaError(f"arrays[{key!r}] must be {want}, got shape {shape}")


def check_arrays(arrays: dict, branches: dict, policies: dict) -> None:
    """Shapes of the large arrays against the step grid: LeMiCa edges (steps x steps) of `policies.lemica.num_steps`,
    pair tables (steps x steps), per-block tables (steps x blocks) and unit features (steps x units x samples) as long
    as their branch's grid. Keys of another layout are left alone."""
    num_steps = (policies.get(keys.LEMICA) or {}).get("num_steps")
    grids = grid_lengths(branches)
    for key, tensor in arrays.items():
        parsed = keys.parse(key)
        if parsed is None:
            continue
        shape = tuple(tensor.shape)
        if key in keys.EDGE_ARRAYS:
            if len(shape) != 2 or shape[0] != shape[1] or (num_steps is not None and shape[0] != num_steps):
                raise _shape_error(
                    key, f"a ({num_steps} x {num_steps}) matrix (one row and column per calibrated step)", shape
                )
            continue
        if parsed.branch is None:  # a job's global edges
            if len(shape) != 2 or shape[0] != shape[1]:
                raise _shape_error(key, "a square matrix (one row and column per calibrated step)", shape)
            continue
        n = grids.get(parsed.branch)
        if n is None:
            continue
        if parsed.kind in keys.PAIR_KINDS and shape != (n, n):
            raise _shape_error(key, f"({n} x {n}) like the branch's grid", shape)
        if parsed.kind in keys.BLOCK_KINDS and (len(shape) != 2 or shape[0] != n):
            raise _shape_error(key, f"({n} x blocks), one row per step of the branch's grid", shape)
        if parsed.kind == keys.UNIT_FEATURES and (len(shape) != 3 or shape[0] != n):
            raise _shape_error(key, f"({n} x units x samples), one row per step of the branch's grid", shape)


def check_profile(data: dict, arrays: dict | None = None) -> None:
    """Raise SchemaError for the first entry of a profile's sections that has the wrong type or length."""
    check("fingerprint", data.get("fingerprint"), lambda f: isinstance(f, dict) and isinstance(f.get("class"), str),
          "a dict with the model's 'class'")  # fmt: skip
    sampler = data.get("sampler", {})
    check("sampler", sampler, lambda s: isinstance(s, dict), "a dict")
    steps = sampler.get("steps")
    check("sampler.steps", steps, _optional(lambda v: integer(v) and v >= 1), "an integer >= 1")
    check("grid_kind", data.get("grid_kind", "position"), lambda v: v in ("sigma", "position"), "'sigma' or 'position'")
    check("prompts", data.get("prompts", 0), lambda v: integer(v) and v >= 0, "an integer >= 0")
    branches = data.get("branches", {})
    read_branches(branches, steps)
    read_policies(data.get("policies", {}))
    read_records(data.get("records", []), branches)
    if arrays:
        check_arrays(arrays, branches, data.get("policies", {}))
