#!/usr/bin/env bash
# Calibrate the profiles shipped with the zoo models (dit_cache/eval/zoo/NAME/dit_cache_profile.json) out of sample:
# the zoo's calibration prompts and seeds (zoo.calibration_prompts / calibration_seeds, disjoint from the prompts and
# seeds `dit-cache eval` scores), its default settings, global LeMiCa edge weights (from 2 of the image prompts, 1 of the video ones) and
# per-block traces, LeMiCa edges measured with and without forecasting (--lemica-forecast 0 1) and `auto`'s
# default candidates on 2 prompts (4 for shapes-video: on 2 its candidates ranked against the scored prompts, see
# docs/benchmarks.md), HyCa's unit features of the first prompt only, none for
# shapes-video (each folder stays under 10 MB), and for shapes-video a TaylorSeer schedule for 3x searched along
# sigma on its 8 calibration prompts (--search-schedules: about 30-60 minutes; taylorseer:searched=True reads it),
# one thread.
#   bash scripts/calibrate_zoo.sh [NAME...]        (default: every zoo model)
set -euo pipefail
cd "$(dirname "$0")/.."
names=("$@")
if [ ${#names[@]} -eq 0 ]; then names=(shapes-image shapes-video shapes-pixart); fi
for name in "${names[@]}"; do
  search=()
  if [ "$name" = shapes-video ]; then search=(--search-schedules 3 --search-coordinate sigma --search-prompts 8 --search-budget 3000); fi
  OMP_NUM_THREADS=1 python -m dit_cache.cli calibrate --model "zoo:$name" \
    --lemica global --lemica-prompts "$([ "$name" = shapes-video ] && echo 1 || echo 2)" --block-traces --lemica-forecast 0 1 \
    --unit-feature-prompts "$([ "$name" = shapes-video ] && echo 0 || echo 1)" --candidates default --candidate-prompts "$([ "$name" = shapes-video ] && echo 4 || echo 2)" "${search[@]}" --no-progress --out "dit_cache/eval/zoo/$name/dit_cache_profile.json"
done
