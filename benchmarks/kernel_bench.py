#!/usr/bin/env python3
"""GPU check of dit-cache's fused reuse kernels: correctness, bandwidth, speedup, memory.

On a CUDA machine, in one run (a few minutes on an H200):

1. checks every Triton kernel against its PyTorch twin computed in float64, on fresh random data (float32, bfloat16,
   float16; odd and large shapes), and that DIT_CACHE_KERNELS=auto dispatches CUDA tensors to Triton;
2. measures a device-to-device copy (`dst.copy_(src)`) as the bandwidth ceiling;
3. times each kernel and the eager PyTorch sequence it replaces (its twin) at 256 MB and 1 GB inputs: median of many
   runs with CUDA events, GB/s over the minimal traffic, % of the copy ceiling, speedup, and the peak memory beyond
   inputs and outputs (torch.cuda.max_memory_allocated deltas);
4. sweeps a few block shapes of each kernel at the largest size (skipped when the time budget runs low);
5. writes everything as JSON (rewritten after every step, so a cut-off run still leaves its results).

Each kernel is measured in its own try block: a failure is printed and recorded, and the run goes on. Exit status:
0 when every correctness check passed, 1 otherwise (performance misses are reported, not fatal).

Without CUDA it says so, runs the correctness check through the public ops (the PyTorch twins) at small size and
exits 0 when that passes.

    python benchmarks/kernel_bench.py [--sizes-mb 256,1024] [--dtype bf16] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import dit_cache.kernels as K  # noqa: E402
from dit_cache.kernels import _backend, twins  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
EPS32 = torch.finfo(torch.float32).eps
TARGET_COPY_FRACTION = 0.80
TARGET_SPEEDUP = 1.5
MB = 1 << 20
DEVICE = "cuda"
GPU_CHECK_SHAPES = [(1, 1), (3, 129), (77, 5120), (4099, 5120)]  # one row, odd, non-multiple of 16, large


def log(msg: str = "") -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------------------------------------ op cases
#
# A case builds inputs for a shape (tokens, channels), runs the kernel (Triton launcher) or the twin on them, and
# names the minimal traffic in units of one input tensor. `fresh` clones what a run mutates.


def _rand(shape, dtype, device, seed, scale=1.0):
    g = torch.Generator(device=device).manual_seed(seed)
    return (torch.randn(shape, generator=g, device=device, dtype=torch.float32) * scale).to(dtype)


def _f64(t):
    return t.double() if isinstance(t, torch.Tensor) else t


class Case:
    name: str
    checked = True  # part of the correctness check
    traffic: float  # bytes moved / bytes of one input tensor
    reduction = False

    def make(self, shape, dtype, device, seed=0) -> dict:
        raise NotImplementedError

    def kernel(self, tk, d: dict, **tune):
        raise NotImplementedError

    def twin(self, d: dict):
        raise NotImplementedError

    keep_dtype: tuple[str, ...] = ()
    mutated: tuple[str, ...] = ()

    def fresh(self, d: dict) -> dict:
        return {k: (v.clone() if k in self.mutated else v) for k, v in d.items()}

    def result(self, d: dict, out):
        """What to compare: the output and the mutated tensors."""
        return [out] if isinstance(out, torch.Tensor) else []

    def scale(self, d: dict) -> float:
        return max(float(v.abs().max()) for v in d.values() if isinstance(v, torch.Tensor) and v.is_floating_point())

    sweep: tuple[dict, ...] = ()


class RelL1(Case):
    name, traffic, reduction = "rel_l1_parts", 2.0, True
    sweep = ({"block": 1024}, {"block": 2048}, {"block": 4096}, {"block": 2048, "num_warps": 4})

    def make(self, shape, dtype, device, seed=0):
        return {"a": _rand(shape, dtype, device, seed), "b": _rand(shape, dtype, device, seed + 1)}

    def kernel(self, tk, d, **tune):
        return tk.rel_l1_parts(d["a"], d["b"], **tune)

    def twin(self, d):
        return twins.rel_l1_parts(d["a"], d["b"])


class StoreResidual(Case):
    name, traffic = "store_residual", 3.0
    mutated = ("buffer",)
    sweep = ({"block": 1024}, {"block": 2048}, {"block": 4096}, {"block": 8192}, {"block": 4096, "num_warps": 4})

    def make(self, shape, dtype, device, seed=0):
        return {
            "out": _rand(shape, dtype, device, seed),
            "inp": _rand(shape, dtype, device, seed + 1),
            "buffer": torch.empty(shape, dtype=dtype, device=device),
        }

    def kernel(self, tk, d, **tune):
        return tk.store_residual(d["out"], d["inp"], d["buffer"], **tune)

    def twin(self, d):
        # the eager sequence without the fused op: a temporary difference copied into the cache buffer
        return d["buffer"].copy_(d["out"] - d["inp"])


class StoreResidualSubOut(StoreResidual):
    """The same kernel against the best eager form, one `torch.sub(out=buffer)` (the twin with a matching buffer)."""

    name = "store_residual[vs sub-out]"
    checked = False  # the kernel is StoreResidual's: checked there

    def twin(self, d):
        return torch.sub(d["out"], d["inp"], out=d["buffer"])


class ApplyResidual(Case):
    traffic = 3.0
    sweep = (
        {"block_r": 1, "block_c": 1024},
        {"block_r": 4, "block_c": 1024},
        {"block_r": 8, "block_c": 512},
        {"block_r": 16, "block_c": 256},
        {"block_r": 4, "block_c": 1024, "num_warps": 4},
    )

    def __init__(self, scale_kind: str):
        self.scale_kind = scale_kind
        self.name = f"apply_residual[{scale_kind}]"
        self.keep_dtype = ()

    def make(self, shape, dtype, device, seed=0):
        d = {"inp": _rand(shape, dtype, device, seed), "residual": _rand(shape, dtype, device, seed + 1, 0.5)}
        if self.scale_kind == "per-channel":
            d["scale"] = _rand((shape[-1],), torch.float32, device, seed + 2)
        return d

    def _scale(self, d):
        return {"none": None, "float": 0.5, "per-channel": d.get("scale")}[self.scale_kind]

    def kernel(self, tk, d, **tune):
        return tk.apply_residual(d["inp"], d["residual"], self._scale(d), **tune)

    def twin(self, d):
        return twins.apply_residual(d["inp"], d["residual"], self._scale(d))


class Magnitude(Case):
    name, traffic, reduction = "magnitude_ratio", 2.0, True
    sweep = (
        {"block_r": 2, "block_c": 1024},
        {"block_r": 4, "block_c": 512},
        {"block_r": 8, "block_c": 256},
        {"block_r": 4, "block_c": 512, "num_warps": 4},
    )

    def make(self, shape, dtype, device, seed=0):
        return {"r_t": _rand(shape, dtype, device, seed), "r_prev": _rand(shape, dtype, device, seed + 1)}

    def kernel(self, tk, d, **tune):
        return tk.magnitude_ratio(d["r_t"], d["r_prev"], **tune)

    def twin(self, d):
        return twins.magnitude_ratio(d["r_t"], d["r_prev"])


class TaylorUpdate(Case):
    """Order 2 with a full history: reads the feature and D_0, D_1, writes D_0, D_1, D_2."""

    name, traffic = "taylor_update[order2]", 6.0
    mutated = ("d0", "d1", "d2")
    sweep = ({"block": 1024}, {"block": 2048}, {"block": 4096}, {"block": 4096, "num_warps": 4})

    def make(self, shape, dtype, device, seed=0):
        d = {f"d{i}": _rand(shape, dtype, device, seed + i) for i in range(3)}
        d["feature"] = _rand(shape, dtype, device, seed + 5)
        return d

    def _ds(self, d):
        return [d["d0"], d["d1"], d["d2"]]

    def kernel(self, tk, d, **tune):
        tk.taylor_update(self._ds(d), d["feature"], 2.0, 3, **tune)

    def twin(self, d):
        twins.taylor_update(self._ds(d), d["feature"], 2.0, 3)

    def result(self, d, out):
        return self._ds(d)


class TaylorForecast(Case):
    name, traffic = "taylor_forecast[order2]", 4.0
    sweep = ({"block": 1024}, {"block": 2048}, {"block": 4096}, {"block": 8192}, {"block": 4096, "num_warps": 4})

    def make(self, shape, dtype, device, seed=0):
        return {f"d{i}": _rand(shape, dtype, device, seed + i) for i in range(3)}

    def kernel(self, tk, d, **tune):
        return tk.taylor_forecast([d["d0"], d["d1"], d["d2"]], 3, 1.5, **tune)

    def twin(self, d):
        return twins.taylor_forecast([d["d0"], d["d1"], d["d2"]], 3, 1.5)


class TokenScatter(Case):
    """B = 1, a quarter of the tokens recomputed, a (B, 1, C) float32 gate (as Wan's modulation)."""

    name = "token_scatter_gate[25%]"
    traffic = 3.25  # x + cache (75%) + rows (25%) read; out + cache rows (25%) written
    mutated = ("cache",)
    keep_dtype = ("index",)
    sweep = (
        {"block_r": 1, "block_c": 1024},
        {"block_r": 4, "block_c": 1024},
        {"block_r": 8, "block_c": 512},
        {"block_r": 4, "block_c": 1024, "num_warps": 4},
    )

    def make(self, shape, dtype, device, seed=0):
        n, c = shape
        m = max(1, n // 4)
        g = torch.Generator(device="cpu").manual_seed(seed)
        index = torch.randperm(n, generator=g)[:m].to(device)
        return {
            "x": _rand((1, n, c), dtype, device, seed),
            "cache": _rand((1, n, c), dtype, device, seed + 1),
            "index": index,
            "rows": _rand((1, m, c), dtype, device, seed + 2),
            "gate": _rand((1, 1, c), torch.float32, device, seed + 3),
        }

    def kernel(self, tk, d, **tune):
        return tk.token_scatter_gate(d["x"], d["cache"], d["index"], d["rows"], d["gate"], **tune)

    def twin(self, d):
        return twins.token_scatter_gate(d["x"], d["cache"], d["index"], d["rows"], d["gate"])

    def result(self, d, out):
        return [out, d["cache"]]


CASES: list[Case] = [
    RelL1(),
    StoreResidual(),
    StoreResidualSubOut(),
    ApplyResidual("none"),
    ApplyResidual("float"),
    ApplyResidual("per-channel"),
    Magnitude(),
    TaylorUpdate(),
    TaylorForecast(),
    TokenScatter(),
]


# ------------------------------------------------------------------------------------------------ correctness


def compare(case: Case, got: list, ref: list, dtype: torch.dtype, scale: float, fused: bool) -> tuple[bool, float]:
    """Each output against the float64 twin. Returns (ok, worst error relative to its bound).

    Elementwise: |got - ref| <= eps(dtype) * (|ref| + k * scale) + 16 eps32 * scale, scale = max |input|: the
    output's rounding plus roundings of intermediates (a fused kernel rounds only the Taylor D_i it stores and
    re-reads, k = 1; the eager twins round every step in the tensors' dtype, k = 8). Reductions: rtol 1e-5.
    """
    worst = 0.0
    k = 1.0 if fused else 8.0
    for g, r in zip(got, ref):
        g, r = g.double(), r.double()
        if g.shape != r.shape:
            return False, math.inf
        if case.reduction:
            bound = 1e-5 * r.abs() + 1e-30
        else:
            e = torch.finfo(dtype).eps
            bound = e * (r.abs() + k * scale) + 16 * EPS32 * scale + 1e-30
        ratio = float(((g - r).abs() / bound).max()) if g.numel() else 0.0
        if not math.isfinite(ratio):
            return False, math.inf
        worst = max(worst, ratio)
    return worst <= 1.0, worst


def check_kernels(tk, device: str, shapes, dtypes, report: dict) -> bool:
    """`tk` is the Triton launcher module, or `dit_cache.kernels` (the public ops: twins on CPU)."""
    all_ok = True
    for case in (c for c in CASES if c.checked):
        for dtype_name, dtype in dtypes.items():
            for shape in shapes:
                label = f"{case.name:28s} {dtype_name:5s} {str(shape):14s}"
                try:
                    d = case.make(shape, dtype, device, seed=hash((case.name, shape)) % 1000)
                    dk, dr = case.fresh(d), case.fresh(d)
                    out = case.kernel(tk, dk)
                    got = case.result(dk, out)
                    dr64 = {k: (_f64(v) if k not in case.keep_dtype else v) for k, v in dr.items()}
                    ref = case.result(dr64, case.twin(dr64))
                    ok, worst = compare(case, got, ref, dtype, case.scale(d), fused=tk is not K)
                    status = "PASS" if ok else "FAIL"
                    report["correctness"].append(
                        {
                            "op": case.name,
                            "dtype": dtype_name,
                            "shape": list(shape),
                            "ok": ok,
                            "error_over_bound": worst,
                        }
                    )
                    log(f"  {status} {label} error/bound {worst:.3f}")
                except Exception as exc:  # keep going: record and print
                    ok = False
                    report["correctness"].append(
                        {"op": case.name, "dtype": dtype_name, "shape": list(shape), "ok": False, "error": repr(exc)}
                    )
                    log(f"  FAIL {label} raised {exc!r}")
                    report["errors"].append({"stage": "correctness", "op": case.name, "trace": traceback.format_exc()})
                all_ok &= ok
    return all_ok


def check_dispatch(device: str, report: dict) -> bool:
    """DIT_CACHE_KERNELS=auto sends CUDA tensors to Triton, and the public op agrees with the launcher."""
    try:
        os.environ.pop(_backend.ENV_VAR, None)
        a = _rand((64, 256), torch.bfloat16, device, 1)
        picked = _backend.use_triton("rel_l1_parts", [a, a])
        got = K.rel_l1_parts(a, a * 0.5)
        ref = twins.rel_l1_parts(a.double(), a.double() * 0.5).double()
        ok = picked and bool(torch.allclose(got.double(), ref, rtol=1e-5, atol=0))
        log(f"  {'PASS' if ok else 'FAIL'} auto dispatch picks Triton on CUDA: {picked}")
        report["dispatch"] = {"auto_picks_triton": picked, "ok": ok}
        return ok
    except Exception as exc:
        log(f"  FAIL auto dispatch raised {exc!r}")
        report["errors"].append({"stage": "dispatch", "trace": traceback.format_exc()})
        return False


# ------------------------------------------------------------------------------------------------ timing


def time_cuda(fn: Callable[[], object], warmup: int, iters: int) -> float:
    """Median milliseconds of `fn` over `iters` runs, each between its own pair of CUDA events.

    The runs are queued back to back and synchronised once at the end, so the host's launch overhead overlaps the
    previous run's GPU work instead of being timed as idle GPU time.
    """
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for start, end in zip(starts, ends):
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


def extra_memory(fn: Callable[[], object]) -> tuple[int, int]:
    """(peak bytes allocated during fn beyond what existed before, bytes of what fn returned)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    outs = out if isinstance(out, (list, tuple)) else [out]
    returned = sum(t.numel() * t.element_size() for t in outs if isinstance(t, torch.Tensor))
    del out, outs
    return peak, returned


def measure_copy(nbytes: int, device: str, warmup: int, iters: int) -> dict:
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=device).normal_()
    dst = torch.empty_like(src)
    ms = time_cuda(lambda: dst.copy_(src), warmup, iters)
    gbps = 2 * nbytes / (ms * 1e-3) / 1e9
    return {"bytes": nbytes, "ms": ms, "GBps": gbps}


def shape_for(nbytes: int, dtype: torch.dtype, channels: int) -> tuple[int, int]:
    return (max(1, nbytes // (channels * torch.tensor([], dtype=dtype).element_size())), channels)


def bench_case(case: Case, tk, shape, dtype, device, copy_gbps: float, warmup: int, iters: int) -> dict:
    d = case.make(shape, dtype, device)
    in_bytes = shape[0] * shape[1] * torch.tensor([], dtype=dtype).element_size()
    moved = case.traffic * in_bytes
    k_ms = time_cuda(lambda: case.kernel(tk, d), warmup, iters)
    e_ms = time_cuda(lambda: case.twin(d), warmup, iters)
    k_peak, k_out = extra_memory(lambda: case.kernel(tk, d))
    e_peak, e_out = extra_memory(lambda: case.twin(d))
    k_gbps = moved / (k_ms * 1e-3) / 1e9
    row = {
        "op": case.name,
        "input_MB": in_bytes / MB,
        "shape": list(shape),
        "traffic_bytes": moved,
        "kernel_ms": k_ms,
        "kernel_GBps": k_gbps,
        "pct_of_copy": 100 * k_gbps / copy_gbps,
        "eager_ms": e_ms,
        "eager_GBps": moved / (e_ms * 1e-3) / 1e9,
        "speedup": e_ms / k_ms,
        "kernel_extra_MB": max(0, k_peak - k_out) / MB,
        "kernel_output_MB": k_out / MB,
        "eager_extra_MB": max(0, e_peak - e_out) / MB,
    }
    row["meets_copy_target"] = row["pct_of_copy"] >= 100 * TARGET_COPY_FRACTION
    row["meets_speedup_target"] = row["speedup"] >= TARGET_SPEEDUP
    row["no_input_sized_temporaries"] = row["kernel_extra_MB"] < 0.01 * in_bytes / MB + 1
    return row


HEADER = (
    f"{'op':28s} {'input':>7s} {'kernel ms':>10s} {'GB/s':>8s} {'% copy':>7s} {'eager ms':>10s} {'speedup':>8s} "
    f"{'extra MB':>9s} {'eager extra MB':>15s}"
)


def format_row(r: dict) -> str:
    flag = "" if r["meets_copy_target"] and r["meets_speedup_target"] else "  <- below target"
    return (
        f"{r['op']:28s} {r['input_MB']:6.0f}M {r['kernel_ms']:10.3f} {r['kernel_GBps']:8.0f} {r['pct_of_copy']:6.1f}% "
        f"{r['eager_ms']:10.3f} {r['speedup']:7.2f}x {r['kernel_extra_MB']:9.1f} {r['eager_extra_MB']:15.1f}{flag}"
    )


def sweep_case(case: Case, tk, shape, dtype, device, copy_gbps, warmup, iters) -> list[dict]:
    d = case.make(shape, dtype, device)
    in_bytes = shape[0] * shape[1] * torch.tensor([], dtype=dtype).element_size()
    rows = []
    for tune in ({},) + case.sweep:
        try:
            ms = time_cuda(lambda tune=tune: case.kernel(tk, d, **tune), warmup, iters)
            gbps = case.traffic * in_bytes / (ms * 1e-3) / 1e9
            rows.append({"op": case.name, "config": tune or "default", "ms": ms, "GBps": gbps})
            log(f"    {str(tune or 'default'):45s} {ms:8.3f} ms {gbps:7.0f} GB/s {100 * gbps / copy_gbps:5.1f}%")
        except Exception as exc:
            rows.append({"op": case.name, "config": tune, "error": repr(exc)})
            log(f"    {str(tune):45s} failed: {exc!r}")
    return rows


# ------------------------------------------------------------------------------------------------ main


def environment() -> dict:
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "triton": None,
        "DIT_CACHE_KERNELS": os.environ.get(_backend.ENV_VAR),
    }
    if _backend.triton_available():
        import triton

        env["triton"] = triton.__version__
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env.update(
            device=torch.cuda.get_device_name(0),
            capability=f"{p.major}.{p.minor}",
            sms=p.multi_processor_count,
            memory_GB=round(p.total_memory / 1e9, 1),
            cuda=torch.version.cuda,
        )
    return env


def write_json(path: Path | None, report: dict) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str))
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes-mb", default="256,1024", help="input tensor sizes in MiB (default 256,1024)")
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES), help="dtype of the timed runs")
    ap.add_argument("--channels", type=int, default=5120, help="channel count C of the (tokens, C) inputs (Wan 14B)")
    ap.add_argument("--iters", type=int, default=30, help="timed runs per measurement (median)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--no-sweep", action="store_true", help="skip the block-shape sweep")
    ap.add_argument("--budget-s", type=float, default=400.0, help="stop the sweep once this many seconds have passed")
    ap.add_argument("--stop-s", type=float, default=480.0, help="skip remaining timings after this many seconds")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "kernel_bench.json")
    args = ap.parse_args(argv)

    t0 = time.time()
    report: dict = {"env": environment(), "correctness": [], "errors": [], "copy": [], "results": [], "sweep": []}
    report["targets"] = {"pct_of_copy": 100 * TARGET_COPY_FRACTION, "speedup": TARGET_SPEEDUP}
    log("dit-cache kernel check: " + ", ".join(f"{k}={v}" for k, v in report["env"].items()))

    if not torch.cuda.is_available():
        log("no CUDA device: no timings. Checking the public ops (PyTorch twins) against float64 at small size.")
        ok = check_kernels(K, "cpu", [(1, 7), (13, 31), (37, 129)], DTYPES, report)
        report["ok"] = ok
        write_json(args.json, report)
        log(f"correctness {'passed' if ok else 'FAILED'}; JSON: {args.json}")
        return 0 if ok else 1

    device = DEVICE
    if not _backend.triton_available():
        log("Triton is not importable here: only the twins can run. Install triton to check the kernels.")
        ok = check_kernels(K, device, [(37, 129)], DTYPES, report)
        report["ok"] = False
        write_json(args.json, report)
        return 1
    tk = _backend.triton_module()

    log("\n== correctness: Triton kernels vs twins in float64 (error/bound must be <= 1)")
    ok = check_kernels(tk, device, GPU_CHECK_SHAPES, DTYPES, report)
    ok &= check_dispatch(device, report)
    report["ok"] = ok
    torch.cuda.empty_cache()
    write_json(args.json, report)

    dtype = DTYPES[args.dtype]
    sizes = [int(s) * MB for s in args.sizes_mb.split(",") if s.strip()]
    log(f"\n== bandwidth ceiling: device-to-device copy ({args.dtype}; GB/s counts read + write)")
    copies = {}
    for nbytes in sizes:
        try:
            c = measure_copy(nbytes, device, args.warmup, args.iters)
            copies[nbytes] = c["GBps"]
            report["copy"].append(c)
            log(f"  copy {nbytes // MB:6d} MB: {c['ms']:.3f} ms, {c['GBps']:.0f} GB/s")
        except Exception as exc:
            log(f"  copy {nbytes // MB} MB failed: {exc!r}")
            report["errors"].append({"stage": "copy", "bytes": nbytes, "trace": traceback.format_exc()})
        torch.cuda.empty_cache()
    write_json(args.json, report)

    log(f"\n== kernels vs eager twins ({args.dtype}, (tokens, {args.channels}); median of {args.iters} runs)")
    log(f"   targets: >= {100 * TARGET_COPY_FRACTION:.0f}% of copy GB/s, >= {TARGET_SPEEDUP}x eager; extra MB = peak")
    log("   allocation beyond inputs and outputs (temporaries)")
    log(HEADER)
    for nbytes in sizes:
        if nbytes not in copies:
            continue
        shape = shape_for(nbytes, dtype, args.channels)
        for case in CASES:
            if time.time() - t0 > args.stop_s:
                log(f"{case.name:28s} {nbytes // MB:6d}M skipped: {args.stop_s:.0f} s time limit reached")
                continue
            try:
                row = bench_case(case, tk, shape, dtype, device, copies[nbytes], args.warmup, args.iters)
                report["results"].append(row)
                log(format_row(row))
            except Exception as exc:
                log(f"{case.name:28s} {nbytes // MB:6d}M failed: {exc!r}")
                report["errors"].append({"stage": "bench", "op": case.name, "trace": traceback.format_exc()})
            torch.cuda.empty_cache()
            write_json(args.json, report)

    if not args.no_sweep and sizes and max(sizes) in copies:
        nbytes = max(sizes)
        shape = shape_for(nbytes, dtype, args.channels)
        log(f"\n== block-shape sweep at {nbytes // MB} MB (default first)")
        for case in CASES:
            if time.time() - t0 > args.budget_s:
                log(f"  time budget of {args.budget_s:.0f} s reached: sweep stopped")
                break
            log(f"  {case.name}")
            try:
                report["sweep"] += sweep_case(case, tk, shape, dtype, device, copies[nbytes], args.warmup, args.iters)
            except Exception as exc:
                log(f"    failed: {exc!r}")
                report["errors"].append({"stage": "sweep", "op": case.name, "trace": traceback.format_exc()})
            torch.cuda.empty_cache()
            write_json(args.json, report)

    rows = report["results"]
    if rows:
        met = [r for r in rows if r["meets_copy_target"] and r["meets_speedup_target"]]
        log(
            f"\n{len(met)}/{len(rows)} measurements meet both targets; "
            f"{sum(r['no_input_sized_temporaries'] for r in rows)}/{len(rows)} allocate no input-sized temporary"
        )
    log(
        f"correctness {'passed' if ok else 'FAILED'}; {len(report['errors'])} errors; "
        f"{time.time() - t0:.0f} s; JSON: {args.json}"
    )
    write_json(args.json, report)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
