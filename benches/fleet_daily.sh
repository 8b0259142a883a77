#!/usr/bin/env bash
# Daily shapes in the fleet simulation: four days (benches/daily_crowds.py: a trough at 04:00,
# a peak at 16:00, 2..12 requests/s) with a 6x crowd of ten minutes each day, at 09:00 every
# day (`same`) or at a random hour (`random`), seeds 1 and 2, on benches/fleet/autoscale.yaml
# (llama-8b-h100 engine model, 1..24 replicas, concurrency target 24) with 120 s cold starts.
# Side by side: `hpa`, `kpa` and `infergate` with the pool's `slo` stated (TTFT 2 s, ITL 100 ms,
# attainment target SLO_TARGET, default 0.99), whose burst headroom follows the time of day
# where the history shows a daily shape. BEFORE=path/to/infergate adds a row for another
# build's `infergate` with the same SLO (e.g. one that learns from the last day only).
# Prints one table row per workload, seed and policy: SLO attainment, failed requests,
# replica-seconds, and replica-seconds on the days a daily shape can be seen (days 3 and 4).
#
# Usage: benches/fleet_daily.sh [OUT_DIR]   (BIN=path/to/infergate to run another build;
# ~2 min per run, two at a time: ~25 min on 2 cores with BEFORE)
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh
OUT=${1:-target/fleet-daily}
TARGET=${SLO_TARGET:-0.99}
mkdir -p "$OUT"
if [ -z "${BIN:-}" ]; then
  cargo build --release --locked -q
  BIN=target/release/infergate
fi
config="$OUT/autoscale-slo-$TARGET.yaml"
sed "s/^    scaler:/    slo: {ttft: 2s, itl: 100ms, target: $TARGET}\n    scaler:/" \
  benches/fleet/autoscale.yaml >"$config"
run() { # crowds seed
  local trace="$OUT/$1-$2.csv"
  python3 benches/daily_crowds.py "$2" "$trace" --crowds "$1" --days 4 --trough 2 --peak 12 \
    --crowd-factor 6 >/dev/null
  local args=(-c "$config" --trace "$trace" --replicas 2 --ttft-slo 2s --itl-slo 100ms
    --cold-start 120s --quiet --sample-every 60s)
  "$BIN" simulate "${args[@]}" --scaler infergate,hpa,kpa --out "$OUT/$1-$2" >/dev/null
  if [ -n "${BEFORE:-}" ]; then
    "$BEFORE" simulate "${args[@]}" --scaler infergate --out "$OUT/$1-$2-before" >/dev/null
  fi
}
for crowds in same random; do
  for seed in 1 2; do
    two_at_a_time run "$crowds" "$seed"
  done
done
wait
python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
print("| crowds | seed | policy | SLO met | failed | replica·s | replica·s, days 3-4 |")
print("|---|---|---|---:|---:|---:|---:|")
for crowds in ("same", "random"):
    for seed in (1, 2):
        runs = [(run["name"].removeprefix("scaler="), run) for run in json.load(
            open(os.path.join(out, f"{crowds}-{seed}", "report.json")))["runs"]]
        before = os.path.join(out, f"{crowds}-{seed}-before", "report.json")
        if os.path.exists(before):
            runs.append(("infergate (before)", json.load(open(before))["runs"][0]))
        for name, run in runs:
            late = 60 * sum(p["ready"] + p["starting"] + p["draining"]
                            for p in run["timeline"] if p["t"] >= 2 * 86400)
            print(f"| {crowds} | {seed} | {name} | {100 * run['slo_attainment']:.1f} % | "
                  f"{sum(run['failed'].values())} | {run['replica_seconds']:.0f} | {late:.0f} |")
PY
