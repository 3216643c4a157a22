#!/usr/bin/env bash
# GPU check of the fused reuse kernels, in one command (a few minutes on an H200):
#   correctness of every Triton kernel against its PyTorch twin in float64, the device-to-device copy ceiling,
#   timings of each kernel and its eager sequence at 256 MB and 1 GB, peak extra memory, a block-shape sweep;
#   then, with CUDA, torch.compile with and without caching (benchmarks/compile.py, compile.json / compile.log).
# Usage:   bash benchmarks/gpu_check.sh [kernel_bench.py options, e.g. --sizes-mb 256 --no-sweep]
# Output:  the table on stdout; kernel_bench.json and kernel_bench.log in $OUT when set (device machines), else in
#          benchmarks/results/. Without CUDA it says so, checks the twins at small size and exits 0.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
out_dir="${OUT:-$root/benchmarks/results}"
mkdir -p "$out_dir"
cd "$root" || exit 1
py="${PYTHON:-python3}"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
"$py" benchmarks/kernel_bench.py --json "$out_dir/kernel_bench.json" "$@" 2>&1 | tee "$out_dir/kernel_bench.log"
status="${PIPESTATUS[0]}"
if "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  "$py" benchmarks/compile.py --device cuda --out "$out_dir/compile.json" 2>&1 | tee "$out_dir/compile.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi
exit "$status"
