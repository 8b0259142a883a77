#!/usr/bin/env bash
# Routing quality in the fleet simulation: predicted-ttft against round-robin, least-request,
# weighted (Inference Extension defaults) and cache-aware (SGLang defaults), on a fixed fleet of
# 8 llama-8b-h100 replicas (benches/fleet/fixed-8.yaml), at 50 %, 80 % and 95 % of the fleet's
# capacity, for four workloads:
#   a) the Mooncake conversation trace   b) the Azure conversation trace
#   c) the shared-prefix generator       d) a heterogeneous fleet (a quarter at half speed),
#                                           Azure conversation trace
# Capacity: each workload is offered at rising rates (doubling from 2 requests/s) with
# least-request routing until the fleet falls behind (requests refused at the gateway, or a
# median TTFT over 5 s: a queue that keeps growing); the completed requests per second of
# virtual time at that overload is the fleet's capacity for the workload's request mix. Loads are then set by time-scaling the trace
# (or the generator's rate) to 50/80/95 % of it.
#
# Usage: benches/fleet_routing.sh [OUT_DIR]   (needs ../shared/traces; ~10-20 min on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/fleet-routing}
TRACES=${TRACES:-../shared/traces}
mkdir -p "$OUT"
cargo build --release --locked -q
BIN=target/release/infergate
FLEET="-c benches/fleet/fixed-8.yaml --no-scaler --max-model-len 131072"
POLICIES=predicted-ttft,round-robin,least-request,weighted,cache-aware
WINDOW=${WINDOW:-900s}   # virtual time kept of each (scaled) workload

# name | source flags | mean request rate of the source at scale 1 (req/s) | extra fleet flags
workloads=(
  "mooncake|--trace $TRACES/mooncake_conversation.jsonl|3.40|"
  "azure-conv|--trace $TRACES/azure_llm_conv.csv|5.53|"
  "shared-prefix|--generator shared-prefix --groups 16 --prompts-per-group 64 --system-prompt-tokens 3072 --prompt-tokens 512 --output-tokens 256|GEN|"
  "heterogeneous|--trace $TRACES/azure_llm_conv.csv|5.53|--slow-fraction 0.25 --slow-factor 2"
)

# shellcheck source=benches/fleet_common.sh
. benches/fleet_common.sh

for w in "${workloads[@]}"; do
  IFS='|' read -r name source rate extra <<<"$w"
  cap=$(capacity "$name" "$source" "$rate" "$extra")
  echo "== $name: capacity $cap requests/s on 8 replicas"
  for load in 50 80 95; do
    target=$(python3 -c "print($cap * $load / 100)")
    flags=$(offered_flags "$source" "$rate" "$target" "$WINDOW")
    echo "-- $name at $load % ($target requests/s)"
    # shellcheck disable=SC2086
    $BIN simulate $FLEET $extra $flags --routing $POLICIES --quiet --out "$OUT/$name-$load"
  done
done
python3 benches/fleet_summary.py "$OUT"
