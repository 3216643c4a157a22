#!/usr/bin/env bash
# Calibrate the profiles shipped with the zoo models (dit_cache/eval/zoo/NAME/dit_cache_profile.json): the zoo's
# own 12 prompts, its default settings, global LeMiCa edge weights (from 4 of the prompts) and per-block traces, one thread.
#   bash scripts/calibrate_zoo.sh [NAME...]        (default: every zoo model)
set -euo pipefail
cd "$(dirname "$0")/.."
names=("$@")
if [ ${#names[@]} -eq 0 ]; then names=(shapes-image shapes-video); fi
work=$(mktemp -d)
for name in "${names[@]}"; do
  python - "$name" "$work" <<'PY'
import json, sys
from dit_cache.eval import zoo
name, work = sys.argv[1:]
settings = zoo.settings(name)
steps = settings.pop("num_inference_steps")
open(f"{work}/{name}.prompts", "w").write("\n".join(zoo.prompts(name)) + "\n")
open(f"{work}/{name}.call", "w").write(json.dumps(settings))
open(f"{work}/{name}.steps", "w").write(str(steps))
PY
  OMP_NUM_THREADS=1 python -m dit_cache.cli calibrate --model "zoo:$name" --prompts "$work/$name.prompts" \
    --steps "$(cat "$work/$name.steps")" --call-kwargs "$(cat "$work/$name.call")" \
    --lemica global --lemica-prompts 4 --block-traces --out "dit_cache/eval/zoo/$name/dit_cache_profile.json"
done
rm -rf "$work"
