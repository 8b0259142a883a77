#!/usr/bin/env bash
# Streamed answers in bursts, direct to one simulated replica and through infergate: `infergate
# load` keeps N streams open (all N start at once, then each one ended is replaced), against an
# `infergate sim` replica with the llama-8b-h100 engine model (batch of 256, 8192 tokens per
# step). Shows what the gateway's admission queue costs or saves when a burst fits the
# replica's batch. Rounds alternate direct and gateway. Loopback only; every run is bounded by
# its request count and --duration.
#
#   benches/stream_burst.sh [streams] [requests-per-run]     (default 256 768; builds --release)
#
# Environment: ROUNDS=N (default 2); POOL_EXTRA='admission: {max_waiting_per_replica: 64}' adds
# YAML to the gateway's pool; PROMPT_TOKENS (default 64); MAX_TOKENS (default 100).
set -euo pipefail
cd "$(dirname "$0")/.."
streams=${1:-256}
requests=${2:-768}
rounds=${ROUNDS:-2}
cargo build --release --locked -q
bin=target/release/infergate
# shellcheck source=benches/common.sh
. benches/common.sh
with_workdir

"$bin" sim --port 0 --model m >"$work/sim.out" 2>/dev/null &
pids+=($!)
sleep 0.5
sim=$(awk '{print $3}' "$work/sim.out")
gw_port=$(free_port); admin_port=$(free_port)
cat >"$work/gw.yaml" <<YAML
listeners: {gateway: 127.0.0.1:$gw_port, admin: 127.0.0.1:$admin_port}
pools:
  - name: bench
    models: [m]
    discovery: {static: {endpoints: ["http://$sim"]}}
    ${POOL_EXTRA:-}
YAML
RUST_LOG=warn "$bin" serve --config "$work/gw.yaml" 2>"$work/gw.log" &
pids+=($!)
sleep 1

held() { python3 -c 'import sys,urllib.request
page = urllib.request.urlopen(sys.argv[1]).read().decode()
print(sum(int(float(l.split()[-1])) for l in page.splitlines() if l.startswith("infergate_queue_wait_seconds_count")))' "http://127.0.0.1:$admin_port/metrics"; }

echo "$streams streams at once, $requests requests per run, ${PROMPT_TOKENS:-64}-token prompts, ${MAX_TOKENS:-100}-token answers, $(date -u '+%Y-%m-%d %H:%M') UTC${POOL_EXTRA:+, pool: $POOL_EXTRA}"
echo
echo "| round | path | req/s | TTFT p50 ms | TTFT p90 ms | TTFT p99 ms | e2e p50 ms | e2e p99 ms | held at the gateway |"
echo "|---|---|---|---|---|---|---|---|---|"
for ((round = 1; round <= rounds; round++)); do
  for path in direct infergate; do
    url="http://$sim"; [ "$path" = infergate ] && url="http://127.0.0.1:$gw_port"
    sleep 1
    before=$(held)
    report=$("$bin" load --url "$url" --model m --concurrency "$streams" --requests "$requests" \
      --max-tokens "${MAX_TOKENS:-100}" --prompt-tokens "${PROMPT_TOKENS:-64}" --duration 120s 2>/dev/null)
    after=$(held)
    rps=$(echo "$report" | sed -n 's/.*(\([0-9.]*\) req\/s.*/\1/p')
    ttft=$(echo "$report" | awk '/^ttft/{print $4 " | " $6 " | " $8}')
    e2e=$(echo "$report" | awk '/^e2e/{print $4 " | " $8}')
    failed=$(echo "$report" | sed -n 's/.* ok, \([0-9]*\) failed.*/\1/p')
    [ "${failed:-0}" = 0 ] || rps="$rps ($failed failed)"
    echo "| $round | $path | $rps | $ttft | $e2e | $((after - before)) |"
  done
done
