#!/usr/bin/env bash
# Fidelity of the fleet simulation: one scenario run both ways and compared.
#   real:      `infergate serve` with the embedded default's pool (simulated vLLM replicas as
#              child processes, autoscaled 1..4) + `infergate loadgen` in real time;
#   simulated: `infergate simulate` of the same config and workload in virtual time.
# Workload: a diurnal curve over one period (rate 6/s ± 90 %: up to ~11/s and down to ~0.6/s),
# 1,000-token prompts, 200-token answers. Prints both tables, TTFT p50/p90 side by side and the
# ready-replica counts over time.
#
# Usage: benches/fidelity.sh [DURATION]   (default 4m; loopback only; needs python3)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-4m}
OUT=${OUT:-target/fidelity}
mkdir -p "$OUT"
cargo build --release --locked -q
BIN=$PWD/target/release/infergate
# shellcheck source=benches/common.sh
. benches/common.sh
GW=$(free_port)
ADMIN=$(free_port)
# The embedded default on free ports.
sed -e "s/127.0.0.1:8080/127.0.0.1:$GW/" -e "s/127.0.0.1:9090/127.0.0.1:$ADMIN/" config/local.yaml >"$OUT/config.yaml"
WORKLOAD="--generator diurnal --rate 6 --amplitude 0.9 --period $DURATION --duration $DURATION --prompt-tokens 1000 --output-tokens 200 --seed 7"

RUST_LOG=info "$BIN" serve --config "$OUT/config.yaml" 2>"$OUT/serve.log" &
SERVE=$!
trap 'kill $SERVE 2>/dev/null || true' EXIT
wait_ready "$ADMIN"
# shellcheck disable=SC2086
"$BIN" loadgen --url "http://127.0.0.1:$GW" --model sim-llama-3.1-8b $WORKLOAD \
  --admin-url "http://127.0.0.1:$ADMIN" --out "$OUT/real.json" | tee "$OUT/real.txt"
kill $SERVE
wait $SERVE 2>/dev/null || true
# Time from a scale-up decision to the replica taking traffic, as the real run logged it.
python3 - "$OUT/serve.log" >"$OUT/cold_start.txt" <<'PY'
import re, sys, datetime
times = []
pending = []
for line in open(sys.argv[1]):
    line = re.sub(r"\x1b\[[0-9;]*m", "", line)
    t = line.split()[0] if line.strip() else ""
    try:
        ts = datetime.datetime.fromisoformat(t.rstrip("Z"))
    except ValueError:
        continue
    if "scaler decision" in line:
        m = re.search(r"ready=(\d+) starting=(\d+) desired=(\d+)", line)
        if m and int(m.group(3)) > int(m.group(1)) + int(m.group(2)):
            pending += [ts] * (int(m.group(3)) - int(m.group(1)) - int(m.group(2)))
    elif "local replica ready" in line and pending:
        times.append((ts - pending.pop(0)).total_seconds())
print(f"{sum(times) / len(times):.2f}" if times else "0.5")
PY
COLD=$(cat "$OUT/cold_start.txt")
echo "measured time to ready of a new local replica: ${COLD} s"
# shellcheck disable=SC2086
"$BIN" simulate --config "$OUT/config.yaml" $WORKLOAD --cold-start "${COLD}s" --sample-every 1s \
  --quiet --out "$OUT/sim" | tee "$OUT/sim.txt"
python3 - "$OUT/real.json" "$OUT/sim/report.json" <<'PY'
import json, sys
real = json.load(open(sys.argv[1]))
sim = json.load(open(sys.argv[2]))["runs"][0]
print("\n| | real | simulated | sim/real |\n|---|---:|---:|---:|")
for k in ("p50", "p90", "p99"):
    r, s = real["ttft"][k], sim["ttft"][k]
    print(f"| TTFT {k} ms | {r * 1000:.0f} | {s * 1000:.0f} | {s / r:.2f} |")
for k in ("p50", "p90"):
    r, s = real["e2e"][k], sim["e2e"][k]
    print(f"| E2E {k} s | {r:.2f} | {s:.2f} | {s / r:.2f} |")
r, s = real["itl"]["p50"], sim["itl"]["p50"]
print(f"| ITL p50 ms | {r * 1000:.1f} | {s * 1000:.1f} | {s / r:.2f} |")
print(f'| replica-seconds | {real["replica_seconds"]:.0f} | {sim["replica_seconds"]:.0f} | {sim["replica_seconds"] / max(real["replica_seconds"], 1e-9):.2f} |')
print(f'| max replicas | {real["max_replicas"]} | {sim["max_replicas"]} | |')
# Ready replicas, second by second (the real run polled /admin/status once a second).
def at(timeline, t):
    best = None
    for p in timeline:
        if p["t"] <= t:
            best = p["ready"]
    return best
span = int(min(real["timeline"][-1]["t"], sim["timeline"][-1]["t"]))
diffs = [abs(at(real["timeline"], t) - at(sim["timeline"], t)) for t in range(1, span)
         if at(real["timeline"], t) is not None and at(sim["timeline"], t) is not None]
same = sum(1 for d in diffs if d == 0) / max(len(diffs), 1)
print(f"\nready replicas equal in {100 * same:.0f} % of {len(diffs)} seconds; mean |difference| {sum(diffs) / max(len(diffs), 1):.2f}")
print("t(s)  real  sim")
for t in range(0, span, max(span // 24, 1)):
    print(f"{t:5d}  {at(real['timeline'], t)!s:>4}  {at(sim['timeline'], t)!s:>4}")
PY
