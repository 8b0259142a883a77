#!/usr/bin/env bash
# Scaling up vs out in the fleet simulation: one 8B model served by simulated L4s ($0.80 per
# replica-hour, speed 1) and H100s ($3.50, speed 6) as one tier (benches/fleet/tiers.yaml), side
# by side with each pool alone serving the same model (the same pool settings, SLO and
# `infergate` policy). One day (benches/daily_crowds.py: trough at 04:00, peak at 16:00, one 3x
# crowd of ten minutes at 09:00) at three sizes — small (0.1..2 requests/s), medium (0.3..6) and
# large (2..30) — seeds 1 and 2, 60 s cold starts. Prints one row per size, seed and setup:
# SLO attainment (TTFT 2 s, mean ITL 100 ms), failed requests, replica-seconds and cost, and
# the cost against the cheaper single pool.
#
# Usage: benches/fleet_tiers.sh [OUT_DIR]   (BIN=path/to/infergate to run another build;
# ~6 min on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh
OUT=${1:-target/fleet-tiers}
mkdir -p "$OUT"
if [ -z "${BIN:-}" ]; then
  cargo build --release --locked -q
  BIN=target/release/infergate
fi
# Each pool alone: the tier's pool, serving the tier's model name itself.
python3 - "$OUT" <<'PY'
import sys, yaml
out = sys.argv[1]
config = yaml.safe_load(open("benches/fleet/tiers.yaml"))
for pool in config["pools"]:
    alone = dict(pool, models=[config["tiers"][0]["model"]])
    alone["discovery"]["local"]["replicas"] = 1
    yaml.safe_dump({"pools": [alone]}, open(f"{out}/{pool['name']}-alone.yaml", "w"))
PY
run() { # size trough peak seed
  local trace="$OUT/$1-$4.csv"
  python3 benches/daily_crowds.py "$4" "$trace" --days 1 --trough "$2" --peak "$3" \
    --crowd-factor 3 >/dev/null
  local args=(--trace "$trace" --model llama-8b --seed "$4" --ttft-slo 2s --itl-slo 100ms
    --cold-start 60s --quiet --sample-every 60s)
  for setup in tier l4-alone h100-alone; do
    local config=benches/fleet/tiers.yaml
    [ "$setup" = tier ] || config="$OUT/$setup.yaml"
    "$BIN" simulate -c "$config" "${args[@]}" --out "$OUT/$1-$4-$setup" >/dev/null
  done
}
for seed in 1 2; do
  for size in "small 0.1 2" "medium 0.3 6" "large 2 30"; do
    # shellcheck disable=SC2086
    two_at_a_time run $size "$seed"
  done
done
wait
python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
print("| size | seed | setup | SLO met | failed | replica·s | cost | vs cheaper pool alone |")
print("|---|---|---|---:|---:|---:|---:|---:|")
for size in ("small", "medium", "large"):
    for seed in (1, 2):
        runs = {s: json.load(open(os.path.join(out, f"{size}-{seed}-{s}", "report.json")))["runs"][0]
                for s in ("tier", "l4-alone", "h100-alone")}
        cheaper = min(runs["l4-alone"]["cost"], runs["h100-alone"]["cost"])
        for setup, run in runs.items():
            print(f"| {size} | {seed} | {setup} | {100 * run['slo_attainment']:.1f} % | "
                  f"{sum(run['failed'].values())} | {run['replica_seconds']:.0f} | "
                  f"{run['cost']:.1f} | {run['cost'] / cheaper:.3f} |")
PY
