#!/usr/bin/env bash
# Flash crowds with slow cold starts in the fleet simulation: a compressed day (trough -> peak
# -> trough over an hour) with two crowds (4x for 90 s, 6x for 45 s), three seeds
# (benches/flash_crowd.py), on benches/fleet/autoscale.yaml (llama-8b-h100 engine model,
# 1..24 replicas from 6, concurrency target 24), cold starts of 30 s and 120 s, the `infergate`
# scaler policy side by side with `hpa` and `kpa`. SLO: TTFT <= 2 s, mean ITL <= 100 ms.
# SLO_TARGETS="0.9 0.99" adds an `infergate` run per target with the pool's `slo` stated
# (TTFT 2 s, ITL 100 ms, that attainment target), so the scaler holds learned burst headroom.
# Prints one table row per seed, cold start and policy: SLO attainment, failed requests and
# replica-seconds.
#
# Usage: benches/fleet_flash.sh [OUT_DIR]   (BIN=path/to/infergate to run another build;
# ~1 min on 2 cores, ~20 s more per SLO target)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/fleet-flash}
mkdir -p "$OUT"
if [ -z "${BIN:-}" ]; then
  cargo build --release --locked -q
  BIN=target/release/infergate
fi
for seed in 1 2 3; do
  python3 benches/flash_crowd.py "$seed" "$OUT/day-$seed.csv" >/dev/null
  for cold in 30s 120s; do
    "$BIN" simulate -c benches/fleet/autoscale.yaml --trace "$OUT/day-$seed.csv" --replicas 6 \
      --scaler infergate,hpa,kpa --ttft-slo 2s --itl-slo 100ms --cold-start "$cold" --quiet \
      --out "$OUT/seed-$seed-cold-$cold" >/dev/null
    for target in ${SLO_TARGETS:-}; do
      config="$OUT/autoscale-slo-$target.yaml"
      sed "s/^    scaler:/    slo: {ttft: 2s, itl: 100ms, target: $target}\n    scaler:/" \
        benches/fleet/autoscale.yaml >"$config"
      "$BIN" simulate -c "$config" --trace "$OUT/day-$seed.csv" --replicas 6 \
        --scaler infergate --ttft-slo 2s --itl-slo 100ms --cold-start "$cold" --quiet \
        --out "$OUT/seed-$seed-cold-$cold-slo-$target" >/dev/null
    done
  done
done
python3 - "$OUT" ${SLO_TARGETS:-} <<'PY'
import json, sys, os
out, targets = sys.argv[1], sys.argv[2:]
print("| seed | cold start | policy | SLO met | failed | why | replica·s |")
print("|---|---|---|---:|---:|---|---:|")
for seed in (1, 2, 3):
    for cold in ("30s", "120s"):
        runs = [(run["name"].removeprefix("scaler="), run) for run in json.load(
            open(os.path.join(out, f"seed-{seed}-cold-{cold}", "report.json")))["runs"]]
        for target in targets:
            report = os.path.join(out, f"seed-{seed}-cold-{cold}-slo-{target}", "report.json")
            runs += [(f"infergate, slo {target}", json.load(open(report))["runs"][0])]
        for name, run in runs:
            failed = run["failed"]
            why = ", ".join(f"{k} {v}" for k, v in sorted(failed.items())) or "-"
            print(f"| {seed} | {cold} | {name} | "
                  f"{100 * run['slo_attainment']:.1f} % | {sum(failed.values())} | {why} | "
                  f"{run['replica_seconds']:.0f} |")
PY
