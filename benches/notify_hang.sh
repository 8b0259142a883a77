#!/usr/bin/env bash
# Does a chat server that never answers slow the data plane? Two gateways side by side in one
# run, each in front of its own `infergate sim --instant` replica: one without webhooks, one
# whose webhook (a loopback listener that accepts and never answers) is told of operator
# actions sent back to back (cordon/uncordon of a second pool's replica, one curl each, about
# 40 a second) while every message to it hangs until its timeout and retries. wrk drives small completions at each in turn, ROUNDS times (interleaved), and
# the script prints throughput and latency percentiles per gateway and the events dropped.
#
# Usage: benches/notify_hang.sh [seconds-per-run]   (needs wrk; loopback only; bounded by -d)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
rounds=${ROUNDS:-3}
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)"; exit 1; }
[ -n "${BIN:-}" ] || { cargo build --release --locked -q; BIN=target/release/infergate; }
# shellcheck source=benches/common.sh
. benches/common.sh
with_workdir

# Four replicas (two per gateway), started here so that their PIDs are ours to stop.
for name in quiet-p quiet-e hang-p hang-e; do
  "$BIN" sim --port 0 --model m --instant >"$work/sim.$name" 2>/dev/null &
  pids+=($!)
done
for name in quiet-p quiet-e hang-p hang-e; do
  for _ in $(seq 50); do [ -s "$work/sim.$name" ] && break; sleep 0.1; done
done
replica() { awk '{print $3}' "$work/sim.$1"; }
hang_port=$(free_port)
python3 - "$hang_port" >/dev/null 2>&1 <<'PY' &
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(64)
held = []
while True:
    c, _ = s.accept(); held.append(c)  # read nothing, answer nothing, keep it open
PY
pids+=($!)
echo "http://127.0.0.1:$hang_port/hook" >"$work/hook-url"

start_gateway() { # name chatops-yaml: writes $work/<name>.addr ("gateway admin")
  local gw admin
  gw=$(free_port); admin=$(free_port)
  cat >"$work/$1.yaml" <<YAML
listeners: {gateway: 127.0.0.1:$gw, admin: 127.0.0.1:$admin}
$2
pools:
  - name: p
    models: [m]
    discovery: {static: {endpoints: ["http://$(replica "$1-p")"]}}
  - name: events
    models: [e]
    discovery: {static: {endpoints: ["http://$(replica "$1-e")"]}}
YAML
  "$BIN" serve --config "$work/$1.yaml" >/dev/null 2>"$work/$1.log" &
  pids+=($!)
  wait_ready "$admin"
  echo "127.0.0.1:$gw 127.0.0.1:$admin" >"$work/$1.addr"
}
start_gateway quiet ""
start_gateway hang "chatops: {notify: [{url_file: $work/hook-url, min_interval: 1ms}]}"
read -r quiet_gw quiet_admin <"$work/quiet.addr"
read -r hang_gw hang_admin <"$work/hang.addr"
events_replica=$(replica hang-e)

# Operator actions back to back on the hanging gateway, for as long as the runs last.
first=$(curl -s -X POST "http://$hang_admin/admin/actions" \
  -d "{\"action\": \"uncordon\", \"pool\": \"events\", \"replica\": \"$events_replica\"}")
echo "$first" | grep -q '"ok":true' || { echo "the actions fail: $first"; exit 1; }
(
  end=$((SECONDS + rounds * 2 * (secs + 2) + 5)); i=0
  while [ $SECONDS -lt $end ]; do
    action=$([ $((i % 2)) = 0 ] && echo cordon || echo uncordon); i=$((i + 1))
    curl -s -o /dev/null -X POST "http://$hang_admin/admin/actions" \
      -d "{\"action\": \"$action\", \"pool\": \"events\", \"replica\": \"$events_replica\"}"
    sleep 0.01
  done
) &
pids+=($!)

cat >"$work/small.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model": "m", "prompt": "Say hello to the benchmark.", "max_tokens": 4}'
done = function(summary, latency, requests)
  local f = io.open(os.getenv("WRK_OUT"), "w")
  f:write(summary.requests, " ", latency:percentile(50), " ", latency:percentile(99), "\n")
  f:close()
end
LUA
sleep 2
for r in $(seq "$rounds"); do
  for name in quiet hang; do
    url=$([ $name = quiet ] && echo "$quiet_gw" || echo "$hang_gw")
    WRK_OUT="$work/$name.$r" wrk -t2 -c32 -d"${secs}s" -s "$work/small.lua" "http://$url/v1/completions" >/dev/null
    sleep 2
  done
done
dropped=$(curl -s "http://$hang_admin/metrics" | awk '/^infergate_notify_dropped_total/ {s += $NF} END {print s + 0}')
python3 - "$work" "$rounds" "$secs" "$dropped" <<'PY'
import sys
work, rounds, secs, dropped = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
print("| gateway | round | requests/s | p50 ms | p99 ms |\n|---|---:|---:|---:|---:|")
for r in range(1, rounds + 1):
    for name, label in (("quiet", "no webhook"), ("hang", "webhook that never answers")):
        n, p50, p99 = open(f"{work}/{name}.{r}").read().split()
        print(f"| {label} | {r} | {int(n) / secs:.0f} | {float(p50) / 1e3:.2f} | {float(p99) / 1e3:.2f} |")
print(f"\nevents dropped by the hanging webhook's full queue: {dropped}")
PY
