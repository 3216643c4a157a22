"""What a cached pipeline call computed, reused and forecast, per transformer, CFG branch and step."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class StepRecord:
    transformer: str
    branch: str
    step: int
    sigma: float | None
    decision: str  # "computed", "reused", "forecast" or "partial"
    indicator: float | None  # the value the decision was taken on (policy-specific), if any
    computed_units: float  # attention and MLP calls actually run in this call (fractional: token subsets, half batches)
    total_units: float  # attention and MLP calls of an uncached call


class Stats:
    """Records of the last pipeline call. `compute_fraction`: the share of the uncached run's attention and MLP
    calls that were actually computed (reused or forecast outputs count as not computed)."""

    def __init__(self, records: list[StepRecord], policy: str = "", auto: dict | None = None) -> None:
        # in step order: with two experts (Wan 2.2 A14B) the table reads as the trajectory, expert by expert
        self.records = sorted(records, key=lambda r: (r.step, r.transformer, r.branch))
        self.policy = policy
        self.auto = auto  # under "auto": the candidate it picked, its config and calibrated figures (auto.Choice)

    @property
    def compute_fraction(self) -> float:
        total = sum(r.total_units for r in self.records)
        return sum(r.computed_units for r in self.records) / total if total else 1.0

    @property
    def calls(self) -> int:
        return len(self.records)

    def count(self, decision: str) -> int:
        return sum(r.decision == decision for r in self.records)

    def decisions(self, transformer: str | None = None, branch: str | None = None) -> list[str]:
        return [
            r.decision
            for r in self.records
            if (transformer is None or r.transformer == transformer) and (branch is None or r.branch == branch)
        ]

    def computed_steps(self, branch: str | None = None, transformer: str | None = None) -> list[int]:
        return [
            r.step
            for r in self.records
            if r.decision == "computed"
            and (branch is None or r.branch == branch)
            and (transformer is None or r.transformer == transformer)
        ]

    def steps_by_transformer(self) -> dict[str, list[int]]:
        """The steps each transformer ran (Wan 2.2 A14B: `transformer` the high-noise steps, `transformer_2` the
        rest), in step order."""
        steps: dict[str, list[int]] = {}
        for r in self.records:
            if r.step not in steps.setdefault(r.transformer, []):
                steps[r.transformer].append(r.step)
        return steps

    def to_dict(self) -> dict:
        return {
            "policy": self.policy,
            "auto": self.auto,
            "compute_fraction": self.compute_fraction,
            "records": [asdict(r) for r in self.records],
        }

    def table(self) -> str:
        header = ("transformer", "branch", "step", "sigma", "decision", "indicator", "work")
        rows = [
            (
                r.transformer,
                r.branch,
                str(r.step),
                "-" if r.sigma is None else f"{r.sigma:.4f}",
                r.decision,
                "-" if r.indicator is None else f"{r.indicator:.4g}",
                f"{r.computed_units:.4g}/{r.total_units:.4g}",
            )
            for r in self.records
        ]
        widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
        partial = f", {self.count('partial')} partial" if self.count("partial") else ""
        summary = (
            f"{self.policy or 'dit_cache'}: {self.calls} transformer calls, {self.count('computed')} computed, "
            f"{self.count('reused')} reused, {self.count('forecast')} forecast{partial}; "
            f"compute fraction {self.compute_fraction:.3f}"
        )
        by_transformer = self.steps_by_transformer()
        if len(by_transformer) > 1:  # experts: which one ran which steps, and what each computed
            summary += "\n" + "; ".join(
                f"{name} ran steps {_ranges(steps)}, computed {len(self.computed_steps(transformer=name))} calls"
                for name, steps in by_transformer.items()
            )
        if self.auto is not None:
            summary += f"; auto picked {self.auto['candidate']} (calibrated fraction {self.auto['fraction']:.3f})"
        return "\n".join([*lines, summary])

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        return f"Stats(policy={self.policy!r}, calls={self.calls}, compute_fraction={self.compute_fraction:.3f})"


def _ranges(steps: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2, 5"."""
    parts: list[str] = []
    for step in steps:
        if parts and step == int(parts[-1].split("-")[-1]) + 1:
            parts[-1] = f"{parts[-1].split('-')[0]}-{step}"
        else:
            parts.append(str(step))
    return ", ".join(parts)
