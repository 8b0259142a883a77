#!/usr/bin/env bash
# Several gateways in the fleet simulation: the same workload through 1, 2 and 4 gateway
# replicas in front of a fixed fleet of 8 llama-8b-h100 replicas (benches/fleet/fixed-8.yaml),
# predicted-ttft routing, at 80 % of the fleet's capacity (the capacity search of
# benches/fleet_routing.sh, with one gateway). Each gateway has its own routing state: its own
# in-flight counts, learned speeds and prefix index; a request goes to a gateway by its session
# (a client's keep-alive connection), else in turn. The gateways exchange routing state every
# `cluster.sync_interval` (50 ms: their requests in flight and prefill pending per replica, and
# the prefixes they placed); the last row of each table turns that off (`--sync-interval 0s`),
# each gateway routing on its own view. Mooncake's timestamps are multiples of 3 s, so its
# requests arrive in bursts of ~10 in one instant; it runs as is and with each arrival spread
# over its 3 s (`--arrival-jitter 3s`). Prints TTFT and the prefix-cache hit rate per count.
#
# Usage: benches/fleet_gateways.sh [OUT_DIR]   (needs ../shared/traces; a few minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/fleet-gateways}
TRACES=${TRACES:-../shared/traces}
mkdir -p "$OUT"
[ -n "${BIN:-}" ] || { cargo build --release --locked -q; BIN=target/release/infergate; }
FLEET="-c benches/fleet/fixed-8.yaml --no-scaler --max-model-len 131072"
WINDOW=${WINDOW:-900s}
# shellcheck source=benches/fleet_common.sh
. benches/fleet_common.sh

workloads=(
  "mooncake|--trace $TRACES/mooncake_conversation.jsonl|3.40|"
  "mooncake-spread|--trace $TRACES/mooncake_conversation.jsonl|3.40|--arrival-jitter 3s"
  "shared-prefix|--generator shared-prefix --groups 16 --prompts-per-group 64 --system-prompt-tokens 3072 --prompt-tokens 512 --output-tokens 256|GEN|"
)
for w in "${workloads[@]}"; do
  IFS='|' read -r name source rate extra <<<"$w"
  cap=$(capacity "$name" "$source" "$rate" "$extra")
  target=$(python3 -c "print($cap * 0.8)")
  flags=$(offered_flags "$source" "$rate" "$target" "$WINDOW")
  for n in 1 2 4 4-own; do
    sync=""
    [ "$n" = 4-own ] && sync="--sync-interval 0s"
    # shellcheck disable=SC2086
    $BIN simulate $FLEET $extra $flags --routing predicted-ttft --gateways "${n%-own}" $sync \
      --quiet --out "$OUT/$name-$n" >/dev/null
  done
  python3 - "$OUT" "$name" "$cap" "$target" <<'PY'
import json, sys
out, name, cap, target = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
print(f"\n**{name}** at 80 % of capacity ({target:.2f} of {cap:.2f} requests/s)\n")
print("| gateways | TTFT p50 ms | p90 ms | p99 ms | cache hit | SLO | p90 vs 1 gateway | hit rate vs 1 |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|")
base = None
for n in ("1", "2", "4", "4-own"):
    r = json.load(open(f"{out}/{name}-{n}/report.json"))["runs"][0]
    t, hit = r["ttft"], r["prefix_cache_hit_rate"]
    base = base or (t["p90"], hit)
    label = "4, each its own view" if n == "4-own" else n
    print(f"| {label} | {t['p50']*1e3:.0f} | {t['p90']*1e3:.0f} | {t['p99']*1e3:.0f} | {hit*100:.1f} % "
          f"| {r['slo_attainment']*100:.1f} % | {t['p90']/base[0]:.2f}x | {hit/base[1]:.3f}x |")
PY
done
