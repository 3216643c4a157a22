"""Timing and peak memory of one pipeline call, on the device the transformer runs on.

GPU work is asynchronous: a clock read while kernels are still queued measures the launch, not the work. Every clock
read here first synchronizes the CUDA device the transformer lives on. Peak memory is CUDA's allocator peak on a
CUDA device, else the process's peak resident set size (the kernel's high-water mark, reset before the call).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import threading
import time

import torch


def transformers(pipe) -> list[torch.nn.Module]:
    """The pipeline's transformer components (`transformer`, `transformer_2`, ...)."""
    return [m for n, m in pipe.components.items() if n.startswith("transformer") and m is not None]


def pipeline_device(pipe) -> torch.device:
    """The device the pipeline computes on: diffusers' `_execution_device` (right under CPU offloading, where the
    weights wait on the CPU), else the first transformer parameter's device, else the CPU."""
    try:
        device = getattr(pipe, "_execution_device", None)
    except Exception:  # a pipeline whose components cannot say; fall back to the parameters
        device = None
    if device is not None:
        return torch.device(device)
    for module in transformers(pipe):
        for parameter in module.parameters():
            return parameter.device
    return torch.device("cpu")


def device_clock(device: torch.device) -> float:
    """`time.perf_counter()` once the device has finished the work queued so far (CUDA: synchronize first)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class TransformerTimer:
    """Wall time of the block it wraps (`wall_seconds`) and of the pipeline's transformer calls inside it
    (`seconds`: torch hooks around every transformer's __call__, outside any cache's own hooks), i.e. the part of a
    call that caching can shorten. On CUDA each clock read synchronizes the transformer's device first."""

    def __init__(self, pipe, device: torch.device | None = None) -> None:
        self.modules = transformers(pipe)
        self.device = device if device is not None else pipeline_device(pipe)
        self.seconds = 0.0
        self.wall_seconds = 0.0

    def _start(self, *_):
        self._t0 = device_clock(self.device)

    def _stop(self, *_):
        self.seconds += device_clock(self.device) - self._t0

    def __enter__(self) -> TransformerTimer:
        self.seconds = 0.0
        self._handles = [h for m in self.modules for h in (m.register_forward_pre_hook(self._start),
                                                             m.register_forward_hook(self._stop))]  # fmt: skip
        self._wall0 = device_clock(self.device)
        return self

    def __exit__(self, *exc) -> None:
        self.wall_seconds = device_clock(self.device) - self._wall0
        for handle in self._handles:
            handle.remove()


class PeakMemory:
    """Peak memory while the block runs, in MiB: `peak_mb` (absolute) and `growth_mb` (over the start), measured by
    `source`:

    - "cuda-allocator": torch.cuda.max_memory_allocated after reset_peak_memory_stats, on the CUDA device given
      (tensors only: the allocator's cache and the CUDA context are not counted);
    - "cpu-rss": the process's peak resident set size (VmHWM, reset through /proc/self/clear_refs) after
      malloc_trim has returned freed heap pages, so that memory freed by the previous call and reused by this one
      counts as this call's; it counts every thread's allocations and the interpreter, not only tensors;
    - "cpu-rss-sampled": where VmHWM cannot be reset (not Linux), the resident set size sampled every millisecond
      (a peak shorter than that can be missed).
    """

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.peak_mb = self.growth_mb = None
        self.source = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            self.source = "cuda-allocator"
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            return self
        _trim_heap()
        self.source = "cpu-rss" if _reset_peak_rss() else "cpu-rss-sampled"
        self._start = self._peak = _rss()
        if self.source == "cpu-rss-sampled":
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self._peak = max(self._peak, _rss())

    def __exit__(self, *exc) -> None:
        if self.source == "cuda-allocator":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.source == "cpu-rss":
            peak = max(_peak_rss() or 0, _rss())
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, _rss())
        self.peak_mb = peak / 2**20
        self.growth_mb = (peak - self._start) / 2**20


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _rss() -> int:
    """Current resident set size in bytes (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def _peak_rss() -> int | None:
    kib = _status_kib("VmHWM")
    return None if kib is None else kib * 1024


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _peak_rss() is not None


@functools.lru_cache(maxsize=1)
def _libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return libc if libc is not None and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def _trim_heap() -> None:
    """Give freed heap pages back to the system (glibc), so the next call's peak RSS shows its own allocations."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
