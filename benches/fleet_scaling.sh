#!/usr/bin/env bash
# Autoscaling in the fleet simulation: the `infergate` scaler policy against `hpa` (15 s sync,
# 10 % tolerance, 300 s scale-down stabilisation) and `kpa` (60 s stable / 6 s panic windows,
# 2 s tick), same concurrency target, on benches/fleet/autoscale.yaml (llama-8b-h100 engine
# model, 1..24 replicas, starting at 6), with cold starts of 30 s and 120 s, and concurrency
# targets of 24 (generous: every policy meets the SLO, cost differs) and 48 per replica
# (tight: the SLO is at stake). Workloads:
#   the Azure conversation and code traces, each request repeated 8x (--rate-scale 8: the
#   hour-long arrival pattern kept, 8x the load), and a ramp with bursts (gamma arrivals,
#   cv 3, 5 -> 60 requests/s over 30 minutes).
# SLO: TTFT <= 2 s and mean inter-token latency <= 100 ms per request. SLO_TARGETS="0.9 0.95"
# adds an `infergate` run per target with the pool's `slo` stated (that attainment target), so
# the scaler holds learned burst headroom (rows "infergate, slo T").
#
# Usage: benches/fleet_scaling.sh [OUT_DIR]   (needs ../shared/traces; ~5 min on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/fleet-scaling}
TRACES=${TRACES:-../shared/traces}
mkdir -p "$OUT"
if [ -z "${BIN:-}" ]; then
  cargo build --release --locked -q
  BIN=target/release/infergate
fi
COMMON="--replicas 6 --ttft-slo 2s --itl-slo 100ms --quiet"
for target in 24 48; do
  sed "s/concurrency: 24/concurrency: $target/" benches/fleet/autoscale.yaml >"$OUT/autoscale-$target.yaml"
done
workloads=(
  "azure-conv|--trace $TRACES/azure_llm_conv.csv --rate-scale 8"
  "azure-code|--trace $TRACES/azure_llm_code.csv --rate-scale 8"
  "ramp-bursts|--generator ramp --cv 3 --rate 5 --rate-end 60 --duration 30m --prompt-tokens 1000 --output-tokens 250"
)
for w in "${workloads[@]}"; do
  IFS='|' read -r name source <<<"$w"
  for target in 24 48; do
    for cold in 30s 120s; do
      echo "-- $name, target $target, cold start $cold"
      # shellcheck disable=SC2086
      $BIN simulate -c "$OUT/autoscale-$target.yaml" $COMMON $source --cold-start $cold \
        --scaler infergate,hpa,kpa --out "$OUT/$name-target-$target-cold-$cold"
      for slo in ${SLO_TARGETS:-}; do
        sed "s/^    scaler:/    slo: {ttft: 2s, itl: 100ms, target: $slo}\n    scaler:/" \
          "$OUT/autoscale-$target.yaml" >"$OUT/autoscale-$target-slo-$slo.yaml"
        # shellcheck disable=SC2086
        $BIN simulate -c "$OUT/autoscale-$target-slo-$slo.yaml" $COMMON $source \
          --cold-start $cold --scaler infergate --out "$OUT/$name-target-$target-cold-$cold-slo-$slo"
      done
    done
  done
done
python3 benches/fleet_summary.py "$OUT"
