#!/usr/bin/env bash
# Render a dit-cache HTML report in headless Chromium (Debian's `chromium`) and save a PNG screenshot.
#   scripts/screenshot_report.sh runs/eval/report.html docs/images/report.png [WIDTHxHEIGHT]
# Chromium runs with networking features off: the report is self-contained, so nothing needs fetching.
set -euo pipefail
report=${1:?usage: screenshot_report.sh REPORT.html OUT.png [WIDTHxHEIGHT]}
out=${2:?usage: screenshot_report.sh REPORT.html OUT.png [WIDTHxHEIGHT]}
size=${3:-1280x2400}
browser=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$browser" ]; then
  echo "chromium is not installed: apt-get install chromium" >&2
  exit 2
fi
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
mkdir -p "$(dirname "$out")"
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --hide-scrollbars --user-data-dir="$profile" \
  --window-size="${size/x/,}" --screenshot="$(realpath -m "$out")" "file://$(realpath "$report")" 2>/dev/null
test -s "$out" && echo "screenshot: $out"
