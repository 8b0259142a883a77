#!/usr/bin/env bash
# How many concurrent streams one simulator process sustains: `infergate load` keeps N streams
# open against one `infergate sim` (batch and KV limits raised so all N run at once) and we
# compare the observed answer time with the engine model's, and record the simulator's CPU.
# Loopback only; each run is bounded by its request count.
#
#   benches/sim_streams.sh [N ...]          (default: 250 1000 2000; builds --release)
set -euo pipefail
cd "$(dirname "$0")/.."
levels=("$@"); [ ${#levels[@]} -gt 0 ] || levels=(250 1000 2000)
cargo build --release --locked -q
bin=target/release/infergate
tokens=100
echo "| streams | answers/s | tokens/s | e2e p50 observed | e2e modelled (steady batch) | sim CPU (% of one core) | sim peak RSS MiB | failed |"
echo "|---|---|---|---|---|---|---|---|"
for n in "${levels[@]}"; do
  out=$(mktemp)
  "$bin" sim --port 0 --model m --max-num-seqs 100000 --kv-blocks 10000000 --max-num-batched-tokens 1000000 >"$out" 2>/dev/null &
  pid=$!
  sleep 0.5
  addr=$(awk '{print $3}' "$out")
  hz=$(getconf CLK_TCK)
  set -- $(cut -d' ' -f14,15 "/proc/$pid/stat"); before=$(( $1 + $2 ))
  start=$(date +%s.%N)
  report=$("$bin" load --url "http://$addr" --model m --concurrency "$n" --requests $((n * 3)) \
            --max-tokens $tokens --prompt-tokens 64 --duration 300s 2>/dev/null || true)
  end=$(date +%s.%N)
  set -- $(cut -d' ' -f14,15 "/proc/$pid/stat"); after=$(( $1 + $2 ))
  rss=$(awk '/VmHWM/{printf "%d", $2/1024}' "/proc/$pid/status")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  cpu=$(awk -v d=$((after - before)) -v hz="$hz" -v s="$start" -v e="$end" 'BEGIN{printf "%.0f", 100 * d / hz / (e - s)}')
  rps=$(echo "$report" | sed -n 's/.*(\([0-9.]*\) req\/s, \([0-9]*\) output tokens\/s).*/\1/p')
  tps=$(echo "$report" | sed -n 's/.*(\([0-9.]*\) req\/s, \([0-9]*\) output tokens\/s).*/\2/p')
  p50=$(echo "$report" | awk '/^e2e/{print $4}')
  failed=$(echo "$report" | sed -n 's/.* ok, \([0-9]*\) failed.*/\1/p')
  # Engine model (llama-8b-h100): a decode step for n sequences of ~100 tokens of context.
  model=$(awk -v n="$n" -v t=$tokens 'BEGIN{ step = 0.0075 + 60e-6*n + 2e-9*n*100; printf "%.0f", 1000 * t * step }')
  echo "| $n | $rps | $tps | ${p50} ms | ${model} ms | $cpu | $rss | $failed |"
  rm -f "$out"
done
