"""The calibration profile: what a model's uncached trajectories look like, for the policies to plan with.

On disk: `NAME.json` (small numbers, human-readable) and, when there are large arrays, `NAME.safetensors` beside it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import keys
from .resample import position_grid, resample, resample_ratios, sigma_grid
from .schema import FIX, SchemaError
from .sections import Record, S, check_profile, read_records

logger = logging.getLogger(__name__)

PROFILE_FORMAT_VERSION = 1


class ProfileError(ValueError):
    """A profile that cannot be read or does not belong to the model it is applied to."""


def model_fingerprint(transformer: torch.nn.Module) -> dict:
    """Class, a hash of the public config, and dtype of a diffusers transformer."""
    config = dict(getattr(transformer, "config", {}) or {})
    public = {k: v for k, v in config.items() if not str(k).startswith("_")}
    digest = hashlib.sha256(json.dumps(public, sort_keys=True, default=str).encode()).hexdigest()[:16]
    try:
        dtype = str(next(transformer.parameters()).dtype).replace("torch.", "")
    except StopIteration:
        dtype = "unknown"
    return {"class": type(transformer).__name__, "config_hash": digest, "dtype": dtype}


@dataclass
class Profile:
    """Calibration data of one model.

    fingerprint: {"class", "config_hash", "dtype"} of the calibrated model; built-in profiles carry {"class", "name",
        "match"} instead, `match` being the config values that identify the published model.
    sampler: scheduler class, steps, shift, guidance of the calibration runs.
    grid_kind: "sigma" (normalized sigma of the calibration trajectory) or "position" (step index / (steps - 1)).
    branches: per CFG branch ("cond", "uncond", "batch"), per-step lists on the branch's "grid" (typed view:
        sections.BranchSteps).
    policies: per policy, fitted numbers and defaults ({"teacache": {"coefficients": [...], "threshold": ...}});
        read them typed and checked with `section(TeaCacheFit)` (sections.py).
    arrays: large tensors (per-block traces, LeMiCa edge weights), saved as safetensors; their keys are built by
        keys.py (`keys.record_array(index, branch, kind)`, `keys.lemica_edges(forecast)`...).
    records: the raw per-prompt numbers the aggregates were built from (their large arrays are in `arrays` under
        "records/<index>/..."), so shards can be merged and thresholds replayed per prompt (typed: `job_records()`).

    The sections stay as the JSON has them, so a file round-trips bitwise and in-memory edits are plain dict edits;
    `validate()` (run on load and when a Profile object is applied) checks them all.
    """

    fingerprint: dict
    sampler: dict = field(default_factory=dict)
    prompts: int = 0
    grid_kind: str = "position"
    branches: dict[str, dict[str, list]] = field(default_factory=dict)
    policies: dict[str, dict] = field(default_factory=dict)
    arrays: dict[str, torch.Tensor] = field(default_factory=dict)
    records: list[dict] = field(default_factory=list)  # per calibration prompt: its raw per-step numbers
    source: str | None = None
    format_version: int = PROFILE_FORMAT_VERSION

    # ------------------------------------------------------------------------------------------------ identity
    @property
    def name(self) -> str:
        return self.fingerprint.get("name") or Path(self.source or "profile").stem

    def matches(self, transformer: torch.nn.Module) -> bool:
        fp = self.fingerprint
        if fp.get("class") != type(transformer).__name__:
            return False
        if "match" in fp:
            config = getattr(transformer, "config", {}) or {}
            return all(config.get(k) == v for k, v in fp["match"].items())
        return fp.get("config_hash") == model_fingerprint(transformer)["config_hash"]

    def check_model(self, transformer: torch.nn.Module) -> None:
        """Raise `ProfileError` naming both fingerprints unless this profile was made for `transformer`."""
        if not self.matches(transformer):
            raise ProfileError(
                f"profile {self.name!r} was calibrated for another model: profile fingerprint {self.fingerprint}, "
                f"model fingerprint {model_fingerprint(transformer)}. Calibrate this model (dit-cache calibrate) "
                "or pick a profile of the same model"
            )
        mine = model_fingerprint(transformer)["dtype"]
        theirs = self.fingerprint.get("dtype")
        if theirs and theirs != mine:
            logger.warning("profile %s was calibrated in %s, the model runs in %s", self.name, theirs, mine)

    # ------------------------------------------------------------------------------------------------ per-step data
    def branch(self, name: str, key: str) -> dict[str, list]:
        """The per-step data of CFG branch `name` that holds `key`: the branch itself, else "cond" (a batched or
        unnamed branch runs the conditional prediction), else any branch that has it."""
        for candidate in (name, "cond", "batch", *self.branches):
            data = self.branches.get(candidate)
            if data and key in data:
                return data
        raise ProfileError(f"profile {self.name!r} has no per-step {key!r} data (branches: {sorted(self.branches)})")

    def has(self, key: str) -> bool:
        return any(key in data for data in self.branches.values())

    def grid(self, branch: str) -> list[float] | None:
        """The step grid of `branch` (normalized sigma or position of each calibrated step), if it has one."""
        return self.branches.get(branch, {}).get(keys.GRID)

    # ------------------------------------------------------------------------------------------------ typed sections
    def section(self, kind: type[S]) -> S | None:
        """The policy section `kind.NAME` as its typed, checked class (sections.py), or None where there is none."""
        data = self.policies.get(kind.NAME)
        if data is None:
            return None
        try:
            return kind.read(data)
        except SchemaError as e:
            raise ProfileError(f"profile {self.name!r} is damaged: {e}; {FIX}") from None

    def job_records(self) -> list[Record]:
        """The per-job records, typed and checked (their arrays: `record_table(record.index, branch, kind)`)."""
        try:
            return read_records(self.records, self.branches)
        except SchemaError as e:
            raise ProfileError(f"profile {self.name!r} is damaged: {e}; {FIX}") from None

    def record_table(self, index: int, branch: str, kind: str) -> torch.Tensor | None:
        """Job `index`'s `kind` table (keys.FB_PAIRS, keys.BLOCK_INPUT_CHANGE, keys.UNIT_FEATURES...) of `branch`."""
        return self.arrays.get(keys.record_array(index, branch, kind))

    def has_array(self, kind: str, *, records: bool | None = None) -> bool:
        """Whether any `kind` table is stored; records=True: a job's, False: a mean over jobs."""
        return any(keys.is_kind(key, kind, records=records) for key in self.arrays)

    def call_grid(self, num_steps: int, sigmas: list[float] | None) -> np.ndarray:
        """A call's grid in this profile's coordinate: its sigmas normalized by the calibration run's first and last
        sigma, so a step lands where the calibration passed the same noise level (a coarser call, which stops at a
        larger sigma, does not stretch its last steps over the calibration's end)."""
        if self.grid_kind == "sigma" and sigmas is not None and len(sigmas) == num_steps:
            try:
                return sigma_grid(sigmas, self.sigma_ends())
            except ValueError:
                pass
        return position_grid(num_steps)

    def sigma_ends(self) -> tuple[float, float] | None:
        """(first, last) sigma of the calibration trajectory, when the profile recorded them."""
        for data in self.branches.values():
            sigma = data.get(keys.SIGMA)
            if isinstance(sigma, list) and len(sigma) >= 2 and all(isinstance(v, (int, float)) for v in sigma):
                if sigma[0] != sigma[-1]:
                    return float(sigma[0]), float(sigma[-1])
        return None

    def per_step(self, branch: str, key: str, num_steps: int, sigmas: list[float] | None = None) -> np.ndarray:
        """Per-step values of `key` for a call of `num_steps` steps (ratios resampled multiplicatively)."""
        data = self.branch(branch, key)
        values = data[key]
        grid = data.get(keys.GRID) or list(position_grid(len(values)))
        dst = self.call_grid(num_steps, sigmas)
        if key.endswith("ratio"):
            return resample_ratios(values, grid, dst)
        return resample(values, grid, dst)

    # ------------------------------------------------------------------------------------------------ disk format
    def to_dict(self) -> dict:
        return {
            "format_version": self.format_version,
            "fingerprint": self.fingerprint,
            "sampler": self.sampler,
            "prompts": self.prompts,
            "grid_kind": self.grid_kind,
            "branches": self.branches,
            "policies": self.policies,
            "arrays": sorted(self.arrays),
            "records": self.records,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write `path` (.json) and, if there are arrays, the .safetensors beside it; atomically."""
        path = Path(path)
        if path.suffix != ".json":
            path = path.with_suffix(".json")
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.arrays:
            from safetensors.torch import save_file

            tensors = {k: v.detach().cpu().contiguous() for k, v in self.arrays.items()}
            tmp = path.with_suffix(".safetensors.tmp")
            save_file(tensors, str(tmp))
            os.chmod(tmp, 0o644)  # safetensors creates it owner-only; a profile is meant to be shared
            os.replace(tmp, path.with_suffix(".safetensors"))
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1, default=_json_default))
        os.replace(tmp, path)
        self.source = str(path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, model: torch.nn.Module | None = None) -> Profile:
        """Read a profile; with `model`, also check that it was calibrated for that model."""
        path = Path(path)
        if not path.exists() and path.with_suffix(".json").exists():
            path = path.with_suffix(".json")
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ProfileError(f"no profile at {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ProfileError(f"profile {path} is truncated or corrupted ({e}); recalibrate or restore it") from None
        profile = cls.from_dict(data, source=str(path))
        if data.get("arrays"):
            tensors_path = path.with_suffix(".safetensors")
            try:
                from safetensors.torch import load_file

                profile.arrays = load_file(str(tensors_path))
            except Exception as e:
                raise ProfileError(f"profile arrays {tensors_path} are missing or corrupted ({e})") from None
            missing = set(data["arrays"]) - set(profile.arrays)
            if missing:
                raise ProfileError(f"profile arrays {tensors_path} lack {sorted(missing)}; recalibrate")
            profile.validate()
        if model is not None:
            profile.check_model(model)
        return profile

    @classmethod
    def from_dict(cls, data: dict, source: str | None = None) -> Profile:
        if not isinstance(data, dict) or "fingerprint" not in data:
            raise ProfileError(f"{source or 'data'} is not a dit_cache profile (no fingerprint)")
        version = data.get("format_version")
        if version != PROFILE_FORMAT_VERSION:
            raise ProfileError(
                f"profile {source or ''} has format version {version!r}; this dit_cache reads version "
                f"{PROFILE_FORMAT_VERSION}. Recalibrate with this version (dit-cache calibrate)"
            )
        try:
            check_profile(data)
        except SchemaError as e:
            raise ProfileError(f"profile {source or ''} is damaged: {e}; {FIX}") from None
        return cls(
            fingerprint=data["fingerprint"],
            sampler=data.get("sampler", {}),
            prompts=data.get("prompts", 0),
            grid_kind=data.get("grid_kind", "position"),
            branches=data.get("branches", {}),
            policies=data.get("policies", {}),
            records=data.get("records", []),
            source=source,
        )

    def validate(self) -> None:
        """Raise `ProfileError` naming the first entry whose type or length does not fit its section."""
        try:
            check_profile(self.to_dict(), self.arrays)
        except SchemaError as e:
            raise ProfileError(f"profile {self.name!r} is damaged: {e}; {FIX}") from None

    def copy(self) -> Profile:
        clone = copy.copy(self)
        clone.branches = copy.deepcopy(self.branches)
        clone.policies = copy.deepcopy(self.policies)
        clone.arrays = dict(self.arrays)
        clone.records = copy.deepcopy(self.records)
        return clone


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} into a profile")
