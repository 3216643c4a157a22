#!/usr/bin/env bash
# GPU check in one command, each stage under its own time cap (about 9 minutes in all on an H200):
#   1. the machine (env.txt);
#   2. kernels: every Triton kernel against its PyTorch twin in float64, the copy ceiling, timings of each kernel and
#      its eager sequence, peak extra memory, a block-shape sweep while time allows (kernel_bench.{json,log});
#   3. the kernel, timer and compile tests on CUDA (pytest_cuda.log);
#   4. the policies' wall speedup at FLUX.1-dev's size in bf16, kernels on and off, beside diffusers' caches
#      (gpu_speed.{json,log});
#   5. torch.compile with and without caching on CUDA (compile.{json,log}).
# Usage:   bash benchmarks/gpu_check.sh [kernel_bench.py options, e.g. --sizes-mb 256 --no-sweep]
#          Stage caps in seconds: KERNEL_S (150), TESTS_S (75), SPEED_S (200), COMPILE_S (100); 0 skips a stage.
# Output:  in $OUT when set (device machines), else in benchmarks/results/. Without CUDA stage 2 checks the twins at
#          small size and the other stages are skipped.
# A device image without diffusers: put its wheels in .whl/ (see docs/kernels.md) and they are installed first.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
out_dir="${OUT:-$root/benchmarks/results}"
mkdir -p "$out_dir"
cd "$root" || exit 1
py="${PYTHON:-python3}"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
status=0

stage() {  # stage NAME CAP_SECONDS LOG COMMAND...: runs COMMAND under a cap, output to the terminal and LOG
  local name="$1" cap="$2" log="$3"
  shift 3
  if [ "$cap" = "0" ]; then echo "== $name: skipped"; return 0; fi
  echo "== $name (at most ${cap} s)"
  local start=$SECONDS
  timeout --signal=INT --kill-after=10 "$cap" "$@" 2>&1 | tee "$log"
  local rc="${PIPESTATUS[0]}"
  echo "== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$log"
  [ "$rc" -eq 0 ] || status=1
}

{
  date -u; uname -a; nvidia-smi 2>&1 | head -15
  "$py" -c "import torch, sys; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
  "$py" -c "import triton; print('triton', triton.__version__)" 2>&1
  "$py" -c "import diffusers; print('diffusers', diffusers.__version__)" 2>&1
} >"$out_dir/env.txt" 2>&1
cat "$out_dir/env.txt"

stage kernels "${KERNEL_S:-150}" "$out_dir/kernel_bench.log" \
  "$py" benchmarks/kernel_bench.py --json "$out_dir/kernel_bench.json" \
  --budget-s "$(( ${KERNEL_S:-150} * 6 / 10 ))" --stop-s "$(( ${KERNEL_S:-150} * 8 / 10 ))" "$@"
if ! "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "no CUDA: the GPU stages are skipped"
  exit "$status"
fi
stage tests "${TESTS_S:-75}" "$out_dir/pytest_cuda.log" \
  "$py" -m pytest -q -p no:cacheprovider --deselect tests/kernels/test_interpreter_subprocess.py \
  tests/kernels tests/test_measure.py tests/test_torch_compile.py
stage speed "${SPEED_S:-200}" "$out_dir/gpu_speed.log" \
  "$py" benchmarks/gpu_speed.py --steps 20 --size 1024 --runs 1 --json "$out_dir/gpu_speed.json"
stage compile "${COMPILE_S:-100}" "$out_dir/compile.log" \
  "$py" benchmarks/compile.py --device cuda --models flux --policies schedule --steps 8 --runs 1 \
  --out "$out_dir/compile.json"
exit "$status"
