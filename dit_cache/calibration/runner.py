"""Running calibration: uncached generations with the recorder on, one record per (prompt, seed) job, checkpointed
after every job so an interrupted run resumes where it stopped; sharded over processes by job index."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..api import apply, recorded_traces, remove
from ..auto import DEFAULT_TARGETS, candidate_list
from ..config import Schedule
from ..distributed import context_parallel_rank, parallel_layout
from . import keys
from .candidates import measure_candidates
from .fit import build_profile, merge_profiles, split_record
from .hyca_search import search_hyca
from .profile import Profile, ProfileError, model_fingerprint
from .recorder import Recorder
from .replay import Replay
from .schedule_search import ScheduleSearch, search_schedules
from .sections import LeMiCaSection, PromptList

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CalibrationSettings:
    """What every calibration generation is called with (recorded in the profile; shards must agree on it)."""

    steps: int = 30
    guidance: float | None = None
    height: int | None = None
    width: int | None = None
    frames: int | None = None
    seeds: tuple[int, ...] = (0,)
    call_kwargs: dict = field(default_factory=dict)  # extra pipeline arguments, e.g. {"negative_prompt": ""}
    lemica: str = "proxy"  # "proxy" (free, from the recorded residuals) or "global" (replayed, costly)
    lemica_max_span: int = 8
    lemica_prompts: int | None = None  # global edges from the first N jobs only (None: all); the rest cost nothing
    lemica_forecast: tuple[int, ...] = (0,)  # global edges measured with each of these forecast orders (LeMiCa's)
    block_traces: bool = False  # per-block traces for block-level policies (a few extra passes per block)
    unit_feature_prompts: int | None = None  # HyCa's unit features kept for the first N jobs only (None: all, 0: none)

    def __post_init__(self):
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 2:
            raise ValueError(f"calibration needs at least 2 steps per generation, got steps={self.steps!r}")
        if not self.seeds:
            raise ValueError("calibration needs at least one seed")
        if self.lemica not in ("proxy", "global"):
            raise ValueError(f"lemica mode must be 'proxy' or 'global', got {self.lemica!r}")
        if self.lemica_max_span < 2:
            raise ValueError(f"lemica_max_span must be >= 2, got {self.lemica_max_span}")
        if self.lemica_prompts is not None and (isinstance(self.lemica_prompts, bool) or self.lemica_prompts < 1):
            raise ValueError(f"lemica_prompts must be at least 1 (or None for every prompt), got {self.lemica_prompts}")
        orders = tuple(self.lemica_forecast)
        if not orders or any(isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= 2 for k in orders):
            raise ValueError(f"lemica_forecast must list forecast orders 0, 1 or 2, got {self.lemica_forecast!r}")
        object.__setattr__(self, "lemica_forecast", tuple(sorted(set(orders))))
        n = self.unit_feature_prompts
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise ValueError(f"unit_feature_prompts must be 0 or more (or None for every prompt), got {n!r}")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["seeds"] = list(self.seeds)
        if self.unit_feature_prompts is None:
            data.pop("unit_feature_prompts")  # the default: older profiles resume and merge as before
        if self.lemica_forecast == (0,):
            data.pop("lemica_forecast")  # the default: profiles recorded before the option resume and merge as before
        else:
            data["lemica_forecast"] = list(self.lemica_forecast)
        return data

    def pipeline_kwargs(self, prompt: str | dict, seed: int, device: Any = None) -> dict:
        """Call arguments of one job; a prompt may be text or a dict of call arguments (e.g. prompt_embeds)."""
        kwargs = dict(self.call_kwargs)
        kwargs.update(prompt if isinstance(prompt, dict) else {"prompt": prompt})
        kwargs.update(num_inference_steps=self.steps, output_type="latent")
        for name, value in (
            ("guidance_scale", self.guidance),
            ("height", self.height),
            ("width", self.width),
            ("num_frames", self.frames),
        ):
            if value is not None:
                kwargs[name] = value
        kwargs["generator"] = torch.Generator(device="cpu").manual_seed(seed)
        return kwargs


def jobs_of(prompts: Sequence[str | dict], seeds: Sequence[int]) -> list[tuple[int, str | dict, int]]:
    """(index, prompt, seed) for every prompt and seed, in a fixed order."""
    return [(i * len(seeds) + j, prompt, seed) for i, prompt in enumerate(prompts) for j, seed in enumerate(seeds)]


def read_prompts(path: str | os.PathLike) -> list[str]:
    """One prompt a line; blank lines and lines starting with # are skipped."""
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        raise ValueError(f"prompt file {path} does not exist") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not prompts:
        raise ValueError(f"prompt file {path} has no prompts (one prompt a line)")
    return prompts


def check_creatable(path: Path, what: str) -> None:
    """Fail now (saying "cannot write {what}: why") if `path` could not be created, without creating anything:
    a run that stops at a later check leaves no empty folder behind."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing != path and not existing.is_dir():
        raise ValueError(f"cannot write {what}: {existing} is a file, not a folder")
    folder = existing if existing.is_dir() else existing.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {what}: {folder} is not writable")


def check_writable(path: str | os.PathLike) -> Path:
    """Fail now, not after an hour of generation, if `path` cannot be written (creates nothing)."""
    path = Path(path)
    if path.suffix != ".json":
        path = path.with_suffix(".json")
    if path.is_dir():
        raise ValueError(f"cannot write the profile to {path}: it is a folder; give a file name ending in .json")
    check_creatable(path, f"the profile to {path}")
    return path


def prompt_list(prompts: Sequence[str | dict]) -> dict:
    """What the profile keeps of its prompt list: a resumed run must use the same one."""
    labels = [_label(p) for p in prompts]
    return {"sha": hashlib.sha256(json.dumps(labels).encode()).hexdigest()[:16], "labels": labels}


def _check_same_prompts(path: Path, previous: Profile, prompts: Sequence[str | dict], seeds: int) -> None:
    new = prompt_list(prompts)["labels"]
    kept = previous.section(PromptList)
    if kept is None:  # written before prompt lists were kept: the prompts of its recorded jobs must agree
        old = {r["index"] // seeds: r["prompt"] for r in previous.records}
        i = next((i for i in sorted(old) if i >= len(new) or old[i] != new[i]), None)
    else:
        old = dict(enumerate(kept.labels))
        i = next((i for i in range(max(len(old), len(new))) if old.get(i) != (new[i] if i < len(new) else None)), None)
    if i is None:
        return
    was = repr(old[i]) if i in old else "none (its list is shorter)"
    now = repr(new[i]) if i < len(new) else "none (this list is shorter)"
    raise ProfileError(
        f"cannot resume {path}: it was calibrated on another prompt list; the first difference is prompt {i + 1}: "
        f"{was} in the profile, {now} in this run. Resume with the same prompt file, or calibrate into another --out"
    )


def _sampler(pipe: Any, settings: CalibrationSettings) -> dict:
    config = dict(getattr(pipe.scheduler, "config", {}) or {})
    return {
        "scheduler": type(pipe.scheduler).__name__,
        "steps": settings.steps,
        "shift": config.get("shift"),
        "guidance": settings.guidance,
    }


def calibrate(
    pipe: Any,
    prompts: Sequence[str],
    settings: CalibrationSettings,
    out: str | os.PathLike | None = None,
    *,
    resume: bool = False,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    transformer: str = "transformer",
    candidates: str | Sequence[str] | None = None,
    candidate_targets: Sequence[float] = DEFAULT_TARGETS,
    candidate_prompts: int = 4,
    search: ScheduleSearch | None = None,
    hyca_targets: Sequence[float] | None = None,
    hyca_prompts: int = 2,
    hyca_sweeps: int = 1,
) -> Profile:
    """Record `pipe`'s transformer on every (prompt, seed) job of this rank and return (and save) the profile.

    transformer: the component to record. A two-expert pipeline (Wan 2.2 A14B) gets one profile per expert:
    `transformer` records the steps it runs, `transformer="transformer_2"` the others, each on the sigmas of its own
    steps (a profile places a call's steps by sigma, so an expert's profile serves that expert's steps at any step
    count). Save the second one as `dit_cache_profile.json` in the `transformer_2` folder, or pass it to `apply` on
    that expert.

    With `out`, the profile is rewritten atomically after each job; with `resume=True` the jobs already in `out`
    are skipped. Raises before generating anything if `out` cannot be written or belongs to another calibration.
    candidates: also run these `auto` candidates ("default", "all" or specs) at `candidate_targets` on the first
    `candidate_prompts` jobs (see dit_cache/auto.py); a sharded run records none (merge, then resume the merged
    profile with candidates).
    search: also search TaylorSeer schedules on the first `search.prompts` jobs (calibration/schedule_search.py),
    before the candidate runs (as the HyCa search), so that `taylorseer:searched=True` can be a candidate.
    hyca_targets: also search HyCa's solver per unit on the final output of the first `hyca_prompts` jobs at these
    speedups (`hyca_sweeps` coordinate-descent passes; calibration/hyca_search.py); not in a sharded run either.

    Under diffusers' context parallelism every rank of the group runs every job of this (data-parallel) `rank` on
    its shard of the tokens; the statistics are reduced over the group and the group's rank 0 alone writes `out`.
    """
    if not prompts:
        raise ValueError("calibration needs at least one prompt")
    if candidates is not None:
        candidate_list(candidates)  # a typo fails now, not after the recording pass
        _check_whole_profile_step("--candidates", world_size, candidate_prompts, "--candidate-prompts")
    if search is not None:
        _check_whole_profile_step("--search-schedules", world_size)  # its options checked by ScheduleSearch
    if hyca_targets is not None:
        _check_whole_profile_step("--hyca-targets", world_size, hyca_prompts, "--hyca-prompts")
    if not isinstance(getattr(pipe, transformer, None), torch.nn.Module):
        raise ValueError(
            f"calibration needs a diffusers pipeline with a {transformer!r} component, got {type(pipe).__name__}"
            + (f" (its {transformer!r} is None)" if hasattr(pipe, transformer) else "")
        )
    transformer = getattr(pipe, transformer)
    fingerprint = model_fingerprint(transformer)
    sampler = _sampler(pipe, settings)
    kept = prompt_list(prompts)
    records: list[dict] = []
    arrays: dict[str, torch.Tensor] = {}
    kept_sections: dict = {}  # results computed after the recording pass (auto's runs, searched schedules, HyCa's)
    path = check_writable(out) if out is not None else None
    layout = parallel_layout(transformer)
    writes = path is not None and context_parallel_rank(transformer) == 0
    if path is not None and path.exists():
        if not resume:
            raise ValueError(
                f"{path} already exists; pass resume=True (--resume) to continue it or choose another path"
            )
        previous = Profile.load(path)
        if previous.fingerprint != fingerprint or previous.sampler != sampler:
            raise ProfileError(
                f"cannot resume {path}: it was recorded for {previous.fingerprint} with {previous.sampler}, "
                f"this run is {fingerprint} with {sampler}"
            )
        if previous.policies.get(keys.CALIBRATION) != settings.to_dict():
            raise ProfileError(f"cannot resume {path}: its calibration settings differ from this run's")
        _check_same_prompts(path, previous, prompts, len(settings.seeds))
        records = list(previous.records)
        kept_sections = {
            k: previous.policies[k] for k in (keys.AUTO, keys.TAYLORSEER, keys.HYCA) if k in previous.policies
        }
        arrays = {k: v for k, v in previous.arrays.items() if k.startswith(keys.RECORDS)}
    done = {r["index"] for r in records}
    todo = [job for job in jobs_of(prompts, settings.seeds) if job[0] % world_size == rank and job[0] not in done]
    bar = _progress_bar(len(todo) * settings.steps, progress, rank)
    recorder = Recorder(progress=bar.update if bar else None, block_traces=settings.block_traces)
    apply(transformer, recorder, scheduler=pipe.scheduler)
    started = time.perf_counter()
    try:
        for index, prompt, seed in todo:
            pipe(**settings.pipeline_kwargs(prompt, seed, transformer.device))
            record = {"index": index, "prompt": _label(prompt), "seed": seed}
            record["branches"] = recorded_traces(transformer)
            drop_unit_features(record, settings)
            if settings.lemica == "global" and (settings.lemica_prompts is None or index < settings.lemica_prompts):
                remove(transformer)
                try:
                    for order in settings.lemica_forecast:
                        record[keys.edge_key(order)] = global_edges(pipe, settings, prompt, seed, forecast=order)
                finally:
                    apply(transformer, recorder, scheduler=pipe.scheduler)
            small, large = split_record(record)
            records.append(small)
            arrays.update(large)
            if writes:  # a checkpoint after every job: an interruption loses at most the current one
                _assemble(fingerprint, sampler, records, arrays, settings, kept, layout).save(path)
    finally:
        remove(transformer)
        if bar:
            bar.close()
    logger.info("calibrated %d jobs in %.1fs", len(todo), time.perf_counter() - started)
    profile = _assemble(fingerprint, sampler, records, arrays, settings, kept, layout)
    profile.policies.update(kept_sections)
    if writes:
        profile.save(path)
    if search is not None:
        device = transformer.device
        search_schedules(
            pipe, profile, jobs_of(prompts, settings.seeds)[: search.prompts],
            lambda prompt, seed: settings.pipeline_kwargs(prompt, seed, device), settings.steps, search,
            path if writes else None, progress, transformer,
        )  # fmt: skip
    if hyca_targets is not None:
        jobs = jobs_of(prompts, settings.seeds)[:hyca_prompts]
        device = transformer.device
        search_hyca(
            pipe, profile, jobs, lambda prompt, seed: settings.pipeline_kwargs(prompt, seed, device), hyca_targets,
            hyca_sweeps, path if writes else None, transformer,
        )  # fmt: skip
    if candidates is not None:
        jobs = jobs_of(prompts, settings.seeds)[:candidate_prompts]
        device = transformer.device
        measure_candidates(
            pipe, profile, jobs, lambda prompt, seed: settings.pipeline_kwargs(prompt, seed, device),
            candidates, candidate_targets, path if writes else None, progress, transformer,
        )  # fmt: skip
    return profile


def _check_whole_profile_step(flag: str, world_size: int, prompts: int | None = None, prompts_flag: str = "") -> None:
    """A step run after the recording on the whole profile (auto's candidates, the schedule and HyCa searches):
    refused in a sharded run, with the recipe; its count of prompts checked."""
    if world_size > 1:
        raise ValueError(
            f"{flag} needs the whole profile: calibrate the shards without {flag}, merge them, then run "
            f"`dit-cache calibrate ... --resume --out MERGED.json {flag} ...` on one process"
        )
    if prompts_flag and (isinstance(prompts, bool) or not isinstance(prompts, int) or prompts < 1):
        raise ValueError(f"{prompts_flag} must be at least 1, got {prompts!r}")


def drop_unit_features(record: dict, settings: CalibrationSettings) -> None:
    """HyCa's unit features (a few MB a job on big models) kept only for the first `unit_feature_prompts` jobs."""
    if settings.unit_feature_prompts is not None and record["index"] >= settings.unit_feature_prompts:
        for data in record["branches"].values():
            data.pop(keys.UNIT_FEATURES, None)


def _label(prompt: str | dict) -> str:
    if isinstance(prompt, str):
        return prompt
    digest = hashlib.sha256()
    for key in sorted(prompt):
        value = prompt[key]
        digest.update(key.encode())
        digest.update(value.cpu().numpy().tobytes() if isinstance(value, torch.Tensor) else repr(value).encode())
    return f"<call arguments {digest.hexdigest()[:12]}>"


def _assemble(
    fingerprint: dict,
    sampler: dict,
    records: list,
    arrays: dict,
    settings: CalibrationSettings,
    prompts: dict,
    layout: dict | None = None,
) -> Profile:
    profile = build_profile(fingerprint, sampler, records, arrays, settings.to_dict())
    profile.policies[keys.CALIBRATION_PROMPTS] = prompts
    if layout:  # the context-parallel layout it was recorded under (shards of different layouts do not merge)
        profile.policies[keys.PARALLEL_LAYOUT] = layout
    _add_proxy_edges(profile, settings)
    return profile


def _progress_bar(total: int, enabled: bool, rank: int):
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"calibrate[{rank}]" if rank else "calibrate", unit="step")


# ---------------------------------------------------------------------------------------------------- LeMiCa edges
def proxy_edges(profile: Profile, max_span: int) -> np.ndarray:
    """LeMiCa edge weights estimated from recorded residuals (a proxy, not the paper's global error):
    w(i, j) = sum over skipped k of rel-L1(r_k, r_i) * (sigma_k - sigma_(k+1)), the first-order error the reused
    residual adds to the latent, averaged over branches."""
    matrices = []
    for branch, data in profile.branches.items():
        pairs = profile.arrays.get(keys.branch_array(branch, keys.RES_PAIRS))
        if pairs is None:
            continue
        d = pairs.numpy()
        sigma = np.asarray(data.get(keys.SIGMA) or [], dtype=np.float64)
        n = d.shape[0]
        step = np.abs(np.diff(np.append(sigma, 0.0))) if len(sigma) == n else np.full(n, 1.0 / n)
        w = np.full((n, n), np.inf)
        for i in range(n):
            w[i, i + 1 : i + 2] = 0.0
            total = 0.0
            for j in range(i + 2, min(n, i + max_span + 1)):
                total += d[j - 1, i] * step[j - 1]
                w[i, j] = total
        matrices.append(w)
    if not matrices:
        raise ProfileError("the profile has no residual traces to estimate LeMiCa edges from")
    return np.mean(matrices, axis=0)


def _add_proxy_edges(profile: Profile, settings: CalibrationSettings) -> None:
    if not profile.records:
        return
    proxy = torch.as_tensor(proxy_edges(profile, settings.lemica_max_span), dtype=torch.float32)
    profile.arrays[keys.LEMICA_PROXY_EDGES] = proxy
    if keys.LEMICA_EDGES not in profile.arrays:  # global edges, when recorded, take precedence
        profile.arrays[keys.LEMICA_EDGES] = proxy.clone()
        section = LeMiCaSection(num_steps=int(proxy.shape[0]), mode="proxy", max_span=settings.lemica_max_span)
        profile.policies[keys.LEMICA] = section.to_dict()


def _final_latents(pipe: Any, settings: CalibrationSettings, prompt: str, seed: int) -> torch.Tensor:
    out = pipe(**settings.pipeline_kwargs(prompt, seed, pipe.transformer.device))
    for attr in ("images", "frames"):
        if hasattr(out, attr):
            return torch.as_tensor(getattr(out, attr)).float()
    return torch.as_tensor(out[0]).float()


edge_key = keys.edge_key  # the record key of global edges measured with a forecast order (kept importable here)


def global_edges(pipe: Any, settings: CalibrationSettings, prompt: str, seed: int, forecast: int = 0) -> np.ndarray:
    """LeMiCa's edge weights: w(i, j) = rel-L1 of the final latents when only the segment between computed steps i
    and j reuses the cache (every other step computed), for segments up to `lemica_max_span` steps. Each runs through
    the real pipeline with a dit_cache schedule, replayed from the reference run's transformer outputs up to step i
    (`Replay`): each costs only its steps from i on, about (span - 1) x steps / 2 generations in all (105 at 30
    steps and span 8) where regenerating every one in full would cost twice that. With `forecast=k` the segment's
    steps are forecast from the k + 1 computed steps before it, as LeMiCa(forecast=k) will run them: replay then
    stops k steps earlier, so that those steps run through dit_cache and fill its history."""
    n, span = settings.steps, settings.lemica_max_span
    replay = Replay(pipe)
    with replay.recording():
        reference = _final_latents(pipe, settings, prompt, seed)
    scale = float(reference.abs().mean()) or 1.0
    w = np.full((n, n), np.inf)
    for i in range(n - 1):
        w[i, i + 1] = 0.0
        for j in range(i + 2, min(n, i + span + 1)):
            steps = tuple(k for k in range(n) if not i < k < j)
            apply(pipe.transformer, Schedule(steps=steps, forecast=forecast), scheduler=pipe.scheduler)
            try:
                with replay.replaying(until=max(0, i - forecast)):
                    cached = _final_latents(pipe, settings, prompt, seed)
            finally:
                remove(pipe.transformer)
            w[i, j] = float((cached - reference).abs().mean()) / scale
    return w


def merge_shards(paths: Sequence[str | os.PathLike], out: str | os.PathLike) -> Profile:
    """`dit-cache calibrate merge`: one profile from shard profiles of the same model and settings."""
    target = check_writable(out)
    shards = [Profile.load(p) for p in paths]
    layouts = {json.dumps(s.policies.get(keys.PARALLEL_LAYOUT, {}), sort_keys=True) for s in shards}
    if len(layouts) > 1:
        found = ", ".join(
            f"{p}: {s.policies.get(keys.PARALLEL_LAYOUT) or 'one process'}" for p, s in zip(paths, shards)
        )
        raise ProfileError(
            f"cannot merge shards recorded under different parallel layouts ({found}); record every shard with the "
            "same ContextParallelConfig (ring_degree, ulysses_degree), or none"
        )
    profile = merge_profiles(shards)
    lists = {json.dumps(s.policies.get(keys.CALIBRATION_PROMPTS)) for s in shards}
    if len(lists) > 1:
        raise ProfileError("cannot merge shards calibrated on different prompt lists; rerun them on one prompt file")
    if shards[0].policies.get(keys.PARALLEL_LAYOUT):
        profile.policies[keys.PARALLEL_LAYOUT] = shards[0].policies[keys.PARALLEL_LAYOUT]
    if shards[0].policies.get(keys.CALIBRATION_PROMPTS) is not None:
        profile.policies[keys.CALIBRATION_PROMPTS] = shards[0].policies[keys.CALIBRATION_PROMPTS]
    _add_proxy_edges(profile, settings_from_profile(profile))
    profile.save(target)
    return profile


def settings_from_profile(profile: Profile) -> CalibrationSettings:
    data = dict(profile.policies.get(keys.CALIBRATION, {}))
    data["seeds"] = tuple(data.get("seeds", (0,)))
    return CalibrationSettings(**data)
