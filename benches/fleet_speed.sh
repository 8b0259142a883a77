#!/usr/bin/env bash
# Speed of the fleet simulation: virtual seconds per wall second for 16 replicas at 50
# requests/s (the #8 goal: at least 100x real time on this 2-core machine), for three request
# mixes, each run alone (one core) and timed by the command itself (`wall_seconds` in the report).
#
# Usage: benches/fleet_speed.sh [DURATION]   (default 10m of virtual time per run)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10m}
OUT=${OUT:-target/fleet-speed}
mkdir -p "$OUT"
cargo build --release --locked -q
BIN=target/release/infergate
COMMON="--replicas 16 --no-scaler --rate 50 --duration $DURATION --quiet"
echo "| workload | requests | virtual s | wall s | x real time |"
echo "|---|---:|---:|---:|---:|"
for w in "poisson-1k-200|--generator poisson --prompt-tokens 1000 --output-tokens 200" \
         "shared-prefix|--generator shared-prefix --system-prompt-tokens 2048 --prompt-tokens 512 --output-tokens 200" \
         "bursty-4k-500|--generator bursty --cv 4 --prompt-tokens 4000 --output-tokens 500"; do
  IFS='|' read -r name flags <<<"$w"
  # shellcheck disable=SC2086
  $BIN simulate $COMMON $flags --out "$OUT/$name" >/dev/null
  python3 - "$OUT/$name/report.json" "$name" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
r = d["runs"][0]
print(f'| {sys.argv[2]} | {d["workload"]["requests"]} | {r["duration"]:.0f} | {r["wall_seconds"]:.2f} | {r["duration"] / r["wall_seconds"]:.0f} |')
PY
done
