"""Ahead-of-time build of the kernels for an sm_90 (Hopper) GPU, on a machine without one.

The interpreter runs the kernels' Python, not Triton's compiler: this builds each kernel through TTIR, TTGIR, LLVM
and PTX to a cubin with the ptxas that ships in the Triton wheel, and checks what can be checked without a GPU:
it compiles, the bulk loads of the streaming kernels are 128-bit vectors, and no registers spill to local memory.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile

import pytest

triton = pytest.importorskip("triton")

pytestmark = pytest.mark.triton

BF16 = "*bf16"

# kernel name -> (pointer args, scalar arg types, constexprs, args known 16-divisible (aligned pointers, C % 16 == 0))
SPECS = {
    "rel_l1": (
        "_rel_l1_partials_kernel",
        {"a_ptr": BF16, "b_ptr": BF16, "part_ptr": "*fp32", "numel": "i64", "iters": "i32"},
        {"BLOCK": 2048},
    ),
    "sum_partials": (
        "_sum_partials_kernel",
        {"part_ptr": "*fp32", "out_ptr": "*fp32", "n_parts": "i32", "divisor": "fp32"},
        {"WIDTH": 2, "BLOCK_P": 2048},
    ),
    "store_residual": (
        "_store_residual_kernel",
        {"out_ptr": BF16, "inp_ptr": BF16, "buf_ptr": BF16, "numel": "i64"},
        {"BLOCK": 4096},
    ),
    "apply_residual_per_channel": (
        "_apply_residual_kernel",
        {
            "inp_ptr": BF16,
            "res_ptr": BF16,
            "scale_ptr": "*fp32",
            "y_ptr": BF16,
            "n_rows": "i32",
            "n_cols": "i32",
            "scale_value": "fp32",
        },
        {"SCALE_MODE": 3, "BLOCK_R": 4, "BLOCK_C": 1024},
    ),
    "magnitude": (
        "_magnitude_partials_kernel",
        {"rt_ptr": BF16, "rp_ptr": BF16, "part_ptr": "*fp32", "n_rows": "i32", "n_cols": "i32", "iters": "i32"},
        {"BLOCK_R": 4, "BLOCK_C": 512},
    ),
    "taylor_update_order5": (
        "_taylor_update_kernel",
        {"f_ptr": BF16, **{f"d{i}": BF16 for i in range(6)}, "numel": "i64", "inv_gap": "fp32"},
        {"NEW_FILLED": 6, "BLOCK": 4096},
    ),
    "taylor_forecast_order5": (
        "_taylor_forecast_kernel",
        {"y_ptr": BF16, **{f"d{i}": BF16 for i in range(6)}, "numel": "i64", **{f"c{i}": "fp32" for i in range(1, 6)}},
        {"FILLED": 6, "BLOCK": 4096},
    ),
    "token_scatter_gate_tensor": (
        "_token_scatter_gate_kernel",
        {
            "x_ptr": BF16,
            "cache_ptr": BF16,
            "rows_ptr": BF16,
            "inv_ptr": "*i32",
            "gate_ptr": "*fp32",
            "y_ptr": BF16,
            "n_tok": "i32",
            "n_idx": "i32",
            "n_cols": "i32",
            "n_rows": "i32",
            "g_sb": "i32",
            "g_sn": "i32",
            "gate_value": "fp32",
        },
        {"GATE_MODE": 2, "BLOCK_R": 4, "BLOCK_C": 1024, "g_sc": 1},
    ),
}

# the streaming loads of these kernels must be 128-bit vectors: (kernel, minimum count of ld.global.v4)
VECTOR_LOADS = {
    "rel_l1": 2,
    "store_residual": 4,
    "apply_residual_per_channel": 4,
    "magnitude": 2,
    "taylor_update_order5": 10,
    "taylor_forecast_order5": 12,
    "token_scatter_gate_tensor": 6,
}


@pytest.fixture(scope="module")
def built(tk_compiled):
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError as e:  # an older or newer Triton layout
        pytest.skip(f"this Triton has no ahead-of-time compile API: {e}")
    target = GPUTarget("cuda", 90, 32)
    cache = {}

    def build(name):
        if name not in cache:
            kernel_name, types, constexprs = SPECS[name]
            fn = getattr(tk_compiled, kernel_name)
            assert set(fn.arg_names) == set(types) | set(constexprs), f"{kernel_name}: spec out of date"
            signature = {n: ("constexpr" if n in constexprs else types[n]) for n in fn.arg_names}
            aligned = [
                (i,)
                for i, n in enumerate(fn.arg_names)
                if n in types and (types[n].startswith("*") or n in ("n_cols", "numel"))
            ]
            attrs = {key: [["tt.divisibility", 16]] for key in aligned}
            src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
            cache[name] = triton.compile(src, target=target, options={"num_warps": 8})
        return cache[name]

    return build


@pytest.mark.parametrize("name", sorted(SPECS))
def test_builds_for_sm90(built, name):
    kernel = built(name)
    assert "ptx" in kernel.asm and "cubin" in kernel.asm
    if name in VECTOR_LOADS:
        vectors = len(re.findall(r"ld\.global\S*\.v4\.", kernel.asm["ptx"]))
        assert vectors >= VECTOR_LOADS[name], f"{name}: {vectors} 128-bit loads, want >= {VECTOR_LOADS[name]}"


def _cuobjdump() -> str | None:
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    return path if os.path.exists(path) else shutil.which("cuobjdump")


@pytest.mark.parametrize("name", sorted(SPECS))
def test_no_register_spills(built, name):
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("no cuobjdump (it ships in Triton's wheel on Linux)")
    kernel = built(name)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        proc = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        pytest.skip(f"cuobjdump failed here: {proc.stderr.strip()[:200]}")
    usage = re.search(r"REG:(\d+).*LOCAL:(\d+)", proc.stdout)
    assert usage, proc.stdout
    regs, local = int(usage.group(1)), int(usage.group(2))
    assert local == 0, f"{name}: {local} bytes of local memory (register spills), {regs} registers"
    assert regs <= 128, f"{name}: {regs} registers per thread limits occupancy"
