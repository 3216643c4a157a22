"""The evaluation sweep: the uncached reference once per sample, then every method at every target, each row
(compute fraction, wall speedup, PSNR, SSIM, LPIPS, temporal consistency, peak memory) appended to a JSON-lines file
as it finishes, so a rerun resumes; samples sharded over processes under `accelerate launch`."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import api
from ..calibration.runner import check_creatable
from ..policies import policies_where
from ..schedulers.targets import within
from .counting import WorkCounter
from .measure import PeakMemory, TransformerTimer, pipeline_device
from .methods import Method, compute_fraction, ours, switch_on
from .metrics import compare, lpips_status, to_frames
from .peers import PeerContext, peer

logger = logging.getLogger(__name__)
RESULTS = "results.jsonl"
# what `dit-cache eval` compares without --policies: the policies whose class says so (`in_default_eval`), in a fixed
# order (a results file records it), then the every-k-th-step baseline
DEFAULT_POLICIES = (*policies_where(in_default_eval=True), "uniform")


@dataclass
class EvalPlan:
    """Everything that defines a results file; a rerun with another plan refuses to append to it."""

    model: str
    prompts: list[str]
    samples: int
    steps: int
    call_kwargs: dict = field(default_factory=dict)
    policies: list[str] = field(default_factory=lambda: list(DEFAULT_POLICIES))
    peers: list[str] = field(default_factory=list)
    targets: list[float] = field(default_factory=lambda: [1.5, 2.0, 3.0])
    runs: int = 3
    timing_samples: int = 1
    calibration: list[tuple[str, int]] = field(default_factory=list)  # (prompt, seed) the peers calibrate on
    profile_provenance: dict | None = None  # provenance.check_out_of_sample of the profile the methods read

    def header(self) -> dict:
        digest = hashlib.sha256(json.dumps(self.prompts).encode()).hexdigest()[:16]
        header = {
            "model": self.model,
            "prompts_sha": digest,
            "steps": self.steps,
            "call_kwargs": {k: v for k, v in sorted(self.call_kwargs.items()) if _jsonable(v)},
        }
        if self.profile_provenance is not None:
            header["profile"] = self.profile_provenance
        if self.calibration:
            header["peer_calibration"] = [list(job) for job in self.calibration]
        return header

    def sample(self, index: int) -> tuple[str, int]:
        return self.prompts[index % len(self.prompts)], index

    def scored(self) -> list[tuple[str, int]]:
        """Every (prompt, seed) this plan scores."""
        return [self.sample(i) for i in range(self.samples)]


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except TypeError:
        return False


# ---------------------------------------------------------------------------------------------------- files
def check_output_dir(out: str | os.PathLike, *, create: bool = True) -> Path:
    """The output folder, checked writable; with create=False nothing is created (the checks before loading a
    model: a run that fails validation leaves no empty folder behind)."""
    out = Path(out)
    if not create:
        check_creatable(out, f"to the output directory {out}")
        if out.exists() and not out.is_dir():
            raise ValueError(f"cannot write to the output directory {out}: it is a file; give a folder")
        return out
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-probe-{os.getpid()}"  # one per process: sharded ranks probe the same folder
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"cannot write to the output directory {out}: {e}") from None
    return out


def dumps(row: dict) -> str:
    """One strict-JSON line: non-finite floats (an identical output's PSNR is inf) become null and are listed
    under "nonfinite" ({"psnr": "inf"}), which `read_rows` turns back into floats."""
    flagged: dict[str, str] = {}

    def clean(value, path):
        if isinstance(value, float) and not math.isfinite(value):
            flagged[path] = str(value)
            return None
        if isinstance(value, dict):
            return {k: clean(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v, f"{path}.{i}") for i, v in enumerate(value)]
        return value

    cleaned = clean(row, "")
    if flagged:
        cleaned["nonfinite"] = flagged
    return json.dumps(cleaned, allow_nan=False)


def _restore_nonfinite(item: dict) -> dict:
    for path, text in item.pop("nonfinite", {}).items():
        *parents, last = path.split(".")
        target = item
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        target[int(last) if isinstance(target, list) else last] = float(text)
    return item


def repair_torn_tail(path: Path) -> None:
    """A run killed mid-write leaves a last line without its newline: keep it if it is a whole row (only the
    newline is missing), else cut it, so that the next append starts on a line of its own."""
    if not path.exists():
        return
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    cut = data.rfind(b"\n") + 1
    tail = data[cut:]
    try:
        json.loads(tail)
        whole = True
    except ValueError:
        whole = False
    with path.open("r+b") as f:
        if whole:
            f.seek(0, os.SEEK_END)
            f.write(b"\n")
        else:
            logger.warning("%s: dropping a row cut short by an interruption (%d bytes); it is redone", path, len(tail))
            f.truncate(cut)


def read_rows(path: Path) -> tuple[dict | None, list[dict]]:
    if not path.exists():
        return None, []
    header, rows = None, []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            item = _restore_nonfinite(json.loads(line))
        except json.JSONDecodeError:  # a row cut short by an interruption: it is redone
            continue
        if "header" in item:
            header = item["header"]
        else:
            rows.append(item)
    return header, rows


class ResultsFile:
    def __init__(self, path: Path, header: dict) -> None:
        self.path = path
        repair_torn_tail(path)
        existing, self.rows = read_rows(path)
        if existing is not None and existing != header:
            raise ValueError(
                f"{path} holds results of another model or prompt set ({existing}); this run is {header}. "
                "Use another --out directory rather than mixing them"
            )
        if existing is None:
            with path.open("a") as f:
                f.write(dumps({"header": header}) + "\n")
        self.done = {(r["method"], r["sample"]) for r in self.rows}

    def append(self, row: dict) -> None:
        with self.path.open("a") as f:
            f.write(dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.rows.append(row)
        self.done.add((row["method"], row["sample"]))


# ---------------------------------------------------------------------------------------------------- measuring
def generate(pipe, plan: EvalPlan, prompt: str, seed: int) -> np.ndarray:
    kwargs = dict(plan.call_kwargs, prompt=prompt, num_inference_steps=plan.steps, output_type="np")
    kwargs["generator"] = torch.Generator(device="cpu").manual_seed(seed)
    out = pipe(**kwargs)
    result = out.frames if hasattr(out, "frames") else out.images
    return to_frames(result[0])


@dataclass
class Timing:
    seconds: float | None = None  # median pipeline call
    transformer_seconds: float | None = None  # median time inside the transformer calls
    peak_memory_mb: float | None = None  # the largest peak of the calls, absolute (measure.PeakMemory)
    memory_source: str | None = None  # how: cuda-allocator, cpu-rss or cpu-rss-sampled
    seconds_runs: list[float] | None = None  # every timed call in order: the run-to-run spread
    transformer_seconds_runs: list[float] | None = None


def timed_generate(pipe, plan: EvalPlan, prompt: str, seed: int, runs: int) -> tuple[np.ndarray, Timing]:
    """The output, and with `runs` > 0 the median timings of `runs` calls after a warm-up call (with `runs` = 0
    only the peak memory of the one call)."""
    timings = []
    for _ in range(runs + 1 if runs else 1):  # the first run is the warm-up
        output, timing = _timed_call(pipe, plan, prompt, seed)
        timings.append(timing)
    if not runs:
        return output, Timing(peak_memory_mb=timing.peak_memory_mb, memory_source=timing.memory_source)
    return output, _median_timing(timings[1:])


def interleaved_timing(method, pipe, plan: EvalPlan, prompt: str, seed: int, runs: int) -> tuple[Timing, Timing]:
    """Median timings of the method and of the uncached pipeline, timed run by run alternately after a warm-up of
    each, so that both see the same machine load (a speedup from timings taken minutes apart measures the load)."""
    cached, uncached = [], []
    for _ in range(runs + 1):  # the first round is the warm-up
        uncached.append(_timed_call(pipe, plan, prompt, seed)[1])
        switch_on(method, pipe)
        try:
            cached.append(_timed_call(pipe, plan, prompt, seed)[1])
        finally:
            method.off(pipe)
    return _median_timing(cached[1:]), _median_timing(uncached[1:])


def _timed_call(pipe, plan: EvalPlan, prompt: str, seed: int) -> tuple[np.ndarray, Timing]:
    with PeakMemory(pipeline_device(pipe)) as memory, TransformerTimer(pipe) as timer:
        output = generate(pipe, plan, prompt, seed)
    return output, Timing(timer.wall_seconds, timer.seconds, memory.peak_mb, memory.source)


def _median_timing(timings: list[Timing]) -> Timing:
    calls, inside = [t.seconds for t in timings], [t.transformer_seconds for t in timings]
    return Timing(statistics.median(calls), statistics.median(inside), max(t.peak_memory_mb for t in timings),
                  timings[0].memory_source, calls, inside)  # fmt: skip


# ---------------------------------------------------------------------------------------------------- the sweep
def build_methods(plan: EvalPlan, profile: Any) -> list[Method]:
    methods = []
    for spec in plan.policies:
        if ":" in spec or not plan.targets:
            methods.append(ours(spec, None, plan.steps, profile))
        else:
            methods += [ours(spec, t, plan.steps, profile) for t in plan.targets]
    for name in plan.peers:
        p = peer(name)
        ok, reason = p.status()
        for target in plan.targets:
            methods.append(
                Method(f"peer:{name}@{target:g}", name, "peer", target, available=ok, reason=reason, counted=True)
            )
    return methods


def evaluate(
    pipe,
    plan: EvalPlan,
    out: str | os.PathLike,
    *,
    profile: Any = None,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
) -> Path:
    """Run (or resume) the sweep of `plan`, appending rows to OUT/results.jsonl (OUT/results.rank<r>.jsonl when
    sharded). Returns the results path."""
    if plan.samples < 1:
        raise ValueError(f"--samples must be at least 1, got {plan.samples}")
    out = check_output_dir(out)
    methods = build_methods(plan, profile)
    results = ResultsFile(out / (RESULTS if world_size == 1 else f"results.rank{rank}.jsonl"), plan.header())
    mine = [i for i in range(plan.samples) if i % world_size == rank]
    lpips_ok, lpips_reason = lpips_status()
    (out / "refs").mkdir(exist_ok=True)
    (out / "samples").mkdir(exist_ok=True)
    pipe.set_progress_bar_config(disable=True)
    total = len(mine) * (1 + len(methods))
    bar = _bar(total, progress, rank)
    try:
        references = {}
        for i in mine:
            references[i] = _reference(pipe, plan, results, out, i)
            _tick(bar)
        with WorkCounter(pipe) as counter:
            generate(pipe, plan, *plan.sample(0))
        full_calls = counter.calls
        tuning = _load_tuning(out)
        for method in methods:
            if not method.available:
                if (method.key, -1) not in results.done:
                    results.append({"method": method.key, "sample": -1, "family": method.family, "name": method.name,
                                    "target": method.target, "skipped": method.reason})  # fmt: skip
                _tick(bar, len(mine))
                continue
            if method.family == "peer":
                try:
                    _prepare_peer(method, pipe, plan, profile, full_calls, tuning, out)
                except Exception as e:  # a peer that crashes on this model is a row that says how, not a dead sweep
                    logger.warning("%s failed: %s", method.key, _error_text(e))
                    if (method.key, -1) not in results.done:
                        results.append(_crash_row(method, -1, e))
                    _tick(bar, len(mine))
                    continue
            for i in mine:
                if (method.key, i) not in results.done:
                    results.append(
                        _measure(method, pipe, plan, i, references[i], full_calls, lpips_ok, lpips_reason, out)
                    )
                _tick(bar)
    finally:
        if bar is not None:
            bar.close()
    return results.path


def _bar(total, enabled, rank):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="eval" if rank == 0 else f"eval[{rank}]", unit="run")


def _tick(bar, n: int = 1) -> None:
    if bar is not None:
        bar.update(n)


def _reference(pipe, plan: EvalPlan, results: ResultsFile, out: Path, index: int) -> np.ndarray:
    path = out / "refs" / f"sample{index}.npy"
    if ("uncached", index) in results.done and path.exists():
        return np.load(path)
    prompt, seed = plan.sample(index)
    runs = plan.runs if index < plan.timing_samples else 0
    output, timing = timed_generate(pipe, plan, prompt, seed, runs)
    np.save(path, output)
    if index == 0:
        save_preview(output, out / "samples" / "uncached.png")
    results.append(
        {"method": "uncached", "sample": index, "family": "reference", "name": "uncached", "target": 1.0,
         "prompt": prompt, "seed": seed, "compute_fraction": 1.0, **asdict(timing)}
    )  # fmt: skip
    return output


def _measure(method, pipe, plan, index, reference, full_calls, lpips_ok, lpips_reason, out) -> dict:
    prompt, seed = plan.sample(index)
    runs = plan.runs if index < plan.timing_samples else 0
    try:
        switch_on(method, pipe)
    except ValueError as e:  # e.g. a speedup the profile's traces cannot reach: a row that says why
        return {"method": method.key, "sample": index, "family": method.family, "name": method.name,
                "target": method.target, "skipped": str(e)}  # fmt: skip
    try:
        with WorkCounter(pipe) as counter:
            output = generate(pipe, plan, prompt, seed)
        fraction = compute_fraction(method, pipe, counter, full_calls)
        picked = (api.stats(pipe).auto or {}).get("candidate") if method.family == "dit_cache" else None
    except Exception as e:
        if method.family != "peer":
            raise
        return _crash_row(method, index, e)
    finally:
        method.off(pipe)
    timing, uncached = interleaved_timing(method, pipe, plan, prompt, seed, runs) if runs else (Timing(), Timing())
    quality = compare(reference, output, with_lpips=lpips_ok)
    if index == 0:
        save_preview(output, out / "samples" / f"{_file_key(method.key)}.png")
    # diffusers' MagCache reads the profile's ratios only when there is no calibration set to record its own on
    reads_profile = "profile" in method.options or (method.name == "diffusers-magcache" and not plan.calibration)
    in_sample = (plan.profile_provenance or {}).get("in_sample")
    row = {
        "method": method.key, "sample": index, "family": method.family, "name": method.name,
        "target": method.target, "options": _describe(method.options), "prompt": prompt, "seed": seed,
        "compute_fraction": fraction, **asdict(timing), **quality,
        "uncached_seconds": uncached.seconds, "uncached_transformer_seconds": uncached.transformer_seconds,
        "uncached_seconds_runs": uncached.seconds_runs,
        "uncached_transformer_seconds_runs": uncached.transformer_seconds_runs,
    }  # fmt: skip
    if picked is not None:
        row["auto_picked"] = picked  # what `auto` ran (stats().auto): the candidate the profile ranked first
    if reads_profile and in_sample:
        row["profile_in_sample"] = True  # allowed with --allow-in-sample: scored on the samples it was fitted to
    if not lpips_ok:
        row["lpips_unavailable"] = lpips_reason
    flag = off_target(fraction, method.target)
    if flag is not None:
        row["off_target"] = flag
    return row


def off_target(fraction: float, target: float | None) -> bool | None:
    """Whether a row's achieved compute fraction is more than 0.05 from 1 / its speedup target (None: no
    target, or no measured fraction). Planning misses are refused at apply; this catches the run's own drift
    (prompts unlike the calibration ones, a peer tuned by interval)."""
    if target is None or fraction is None or math.isnan(fraction):
        return None
    return not within(fraction, target)


def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:500]


def _crash_row(method: Method, sample: int, error: BaseException) -> dict:
    """The row of a peer that crashed: its error, and `skipped` (what readers of skipped rows show) saying so."""
    text = _error_text(error)
    return {"method": method.key, "sample": sample, "family": method.family, "name": method.name,
            "target": method.target, "error": text, "skipped": f"crashed: {text}"}  # fmt: skip


def _describe(options: dict) -> dict:
    return {k: (v if _jsonable(v) else getattr(v, "source", None) or type(v).__name__) for k, v in options.items()}


def _file_key(key: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.@" else "_" for c in key)


def _load_tuning(out: Path) -> dict:
    path = out / "tuning.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _prepare_peer(method: Method, pipe, plan: EvalPlan, profile, full_calls: int, tuning: dict, out: Path) -> None:
    p = peer(method.name)
    ctx = PeerContext(pipe, plan.steps, profile, method.target, plan.calibration,
                      lambda prompt, seed: generate(pipe, plan, prompt, seed))  # fmt: skip
    if method.key not in tuning:

        def measure(knob) -> float:
            p.enable(ctx, knob)
            try:
                with WorkCounter(pipe) as counter:
                    generate(pipe, plan, *plan.sample(0))
            finally:
                p.disable(pipe)
            return counter.calls / full_calls

        tuning[method.key] = p.tune(ctx, measure)
        (out / "tuning.json").write_text(json.dumps(tuning, indent=1))
    knob = tuning[method.key]
    knob = tuple(knob) if isinstance(knob, list) else knob
    method.options = {p.knob: knob}
    method.on = lambda pipe, options: p.enable(ctx, knob)
    method.off = p.disable


def save_preview(frames: np.ndarray, path: Path) -> None:
    """An image, or a video's frames side by side, as a PNG."""
    from PIL import Image

    frames = to_frames(frames)
    strip = np.concatenate(list(frames), axis=1) if frames.shape[0] > 1 else frames[0]
    Image.fromarray((np.clip(strip, 0, 1) * 255).round().astype(np.uint8)).save(path)


def merge_rank_files(out: str | os.PathLike, world_size: int) -> Path:
    """Concatenate the per-process results of a sharded run into OUT/results.jsonl (same header required)."""
    out = Path(out)
    header, rows = None, {}
    for r in range(world_size):
        h, part = read_rows(out / f"results.rank{r}.jsonl")
        if h is None:
            raise ValueError(f"missing results of process {r} in {out}")
        if header is not None and h != header:
            raise ValueError(f"process {r} evaluated another plan: {h} vs {header}")
        header = h
        for row in part:
            rows[(row["method"], row["sample"])] = row
    target = out / RESULTS
    with target.open("w") as f:
        f.write(dumps({"header": header}) + "\n")
        for key in sorted(rows, key=lambda k: (k[0], k[1])):
            f.write(dumps(rows[key]) + "\n")
    return target


def write_equal_compute(out: str | os.PathLike) -> dict:
    """OUT/equal_compute.json: every method's Pareto frontier of PSNR against measured compute fraction,
    interpolated at fractions 0.5 and 0.33 (`frontier.equal_compute`), with the results header (profile provenance)."""
    from .frontier import equal_compute

    header, rows = read_rows(Path(out) / RESULTS)
    table = {"header": header, **equal_compute(rows)}
    (Path(out) / "equal_compute.json").write_text(dumps(table))
    return table


def remove_if_applied(pipe) -> None:
    if api.is_applied(pipe):
        api.remove(pipe)
