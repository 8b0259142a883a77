#!/usr/bin/env bash
# Cost of scraping: one gateway scraping N replicas' /metrics every 100 ms (the issue's goal:
# 200 replicas under a quarter of a core). N `infergate sim` processes on loopback, no request
# traffic; the gateway's CPU time over the measurement window is all scraping (plus idle
# timers). Bounded: the window is fixed and everything started here is stopped at the end.
#
#   benches/scrape_cost.sh [replicas] [seconds]       (builds --release)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-200}
secs=${2:-20}
cargo build --release --locked -q
bin=target/release/infergate
# shellcheck source=benches/common.sh
. benches/common.sh
with_workdir

for i in $(seq 1 "$n"); do
  "$bin" sim --port 0 --model m >"$work/sim$i.out" 2>/dev/null &
  pids+=($!)
done
endpoints=""
for i in $(seq 1 "$n"); do
  for _ in $(seq 1 100); do [ -s "$work/sim$i.out" ] && break; sleep 0.05; done
  endpoints="$endpoints\"http://$(awk '{print $3}' "$work/sim$i.out")\", "
done
admin=$(free_port)
cat >"$work/gw.yaml" <<YAML
listeners: {gateway: 127.0.0.1:$(free_port), admin: 127.0.0.1:$admin}
pools:
  - name: scrape
    models: [m]
    discovery: {static: {endpoints: [${endpoints%, }]}}
    metrics: {scrape_interval: 100ms, scrape_timeout: 1s, stale_after: 1s}
YAML
RUST_LOG=warn "$bin" serve --config "$work/gw.yaml" 2>"$work/gw.log" &
gw=$!
pids+=($gw)
sleep 3   # connections up, first scrapes done
hz=$(getconf CLK_TCK)
set -- $(cut -d' ' -f14,15 "/proc/$gw/stat"); before=$(( $1 + $2 ))
sleep "$secs"
set -- $(cut -d' ' -f14,15 "/proc/$gw/stat"); after=$(( $1 + $2 ))
fresh=$(curl -s "http://127.0.0.1:$admin/admin/status" | python3 -c 'import json,sys; r=json.load(sys.stdin)["pools"][0]["replicas"]; print(sum(1 for x in r if x["engine"]), len(r))')
rss=$(awk '/VmHWM/{printf "%d", $2/1024}' "/proc/$gw/status")
awk -v d=$((after - before)) -v hz="$hz" -v s="$secs" -v n="$n" -v f="$fresh" -v rss="$rss" 'BEGIN {
  cpu = d / hz / s;
  split(f, a, " ");
  printf "| %d replicas, 100 ms interval | %.1f%% of one core | %.1f µs per scrape | %s of %s replicas with fresh stats | %s MiB peak RSS |\n", n, 100 * cpu, 1e6 * cpu / (n * 10), a[1], a[2], rss
}'
