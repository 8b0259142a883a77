#!/usr/bin/env bash
# Routing across a fast and a 4x slower replica, in real time, as a user sees it: two
# `infergate sim --profile llama-8b-h100` replicas (one `--speed 0.25`), a gateway per routing
# policy in front of both, and the official `openai` SDK sending N streamed chat completions of
# ~1,500 prompt tokens (100 output tokens), 16 at a time. Prints per policy: TTFT p50/p90/p99,
# end-to-end p99, throughput (requests/s) and the fast replica's share, as a Markdown row:
# | policy | TTFT p50 s | p90 s | p99 s | E2E p99 s | requests/s | fast replica's share |
#
# Usage: benches/hetero_realtime.sh [N]   (default 300; loopback only; ~1 min per policy;
# POLICIES="round-robin least-request predicted-ttft"; BIN=another build)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-300}
policies=${POLICIES:-round-robin least-request predicted-ttft predicted-ttft-unbounded}
if [ -z "${BIN:-}" ]; then
  cargo build --release --locked -q
  BIN=$PWD/target/release/infergate
fi
# shellcheck source=benches/common.sh
. benches/common.sh
with_workdir
start_sim() { # speed name: starts a replica (not in a subshell: its pid is kept)
  "$BIN" sim --port 0 --model m --profile llama-8b-h100 --speed "$1" >"$work/$2.out" 2>/dev/null &
  pids+=($!)
}
address_of() { # name -> the replica's address, once it printed it
  for _ in $(seq 50); do
    [ -s "$work/$1.out" ] && break
    sleep 0.1
  done
  awk '{print $3}' "$work/$1.out"
}
served() { # replica address -> requests it finished (its vLLM counter)
  curl -s "http://$1/metrics" | awk '/^vllm:request_success_total/ {s += $2} END {print s + 0}'
}
for policy in $policies; do
  # Fresh replicas for each policy: empty caches, nothing counted yet.
  start_sim 1 "fast-$policy"
  start_sim 0.25 "slow-$policy"
  sim_pids=("${pids[-2]}" "${pids[-1]}")
  fast=$(address_of "fast-$policy")
  slow=$(address_of "slow-$policy")
  routing="policy: $policy"
  [ "$policy" != predicted-ttft-unbounded ] || routing="policy: predicted-ttft, load_bound: 0"
  gw=$(free_port); admin=$(free_port)
  cat >"$work/gw.yaml" <<YAML
listeners: {gateway: 127.0.0.1:$gw, admin: 127.0.0.1:$admin}
pools:
  - name: mixed
    models: [m]
    discovery: {static: {endpoints: ["http://$fast", "http://$slow"]}}
    metrics: {format: vllm, scrape_interval: 100ms}
    routing: {$routing}
YAML
  "$BIN" serve --config "$work/gw.yaml" 2>"$work/gw-$policy.log" &
  gw_pid=$!
  pids+=("$gw_pid")
  wait_ready "$admin"
  python3 - "$gw" "$n" "$policy" "$fast" <<'PY'
import asyncio, statistics, sys, time
import openai

port, n, policy, fast = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()

async def one(i, ttfts, e2es):
    prompt = " ".join(words[(i + k) % 10] + str(k % 97) for k in range(1500))
    t0 = time.monotonic()
    first = None
    stream = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": prompt}], max_tokens=100,
        stream=True, extra_body={"ignore_eos": True})
    async for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.monotonic() - t0
    ttfts.append(first if first is not None else time.monotonic() - t0)
    e2es.append(time.monotonic() - t0)

async def main():
    ttfts, e2es, sem = [], [], asyncio.Semaphore(16)
    async def guarded(i):
        async with sem:
            await one(i, ttfts, e2es)
    t0 = time.monotonic()
    await asyncio.gather(*(guarded(i) for i in range(n)))
    wall = time.monotonic() - t0
    q = lambda xs, p: sorted(xs)[min(len(xs) - 1, int(p * len(xs)))]
    print(f"| {policy} | {q(ttfts, .5):.3f} | {q(ttfts, .9):.3f} | {q(ttfts, .99):.3f} | "
          f"{q(e2es, .99):.2f} | {n / wall:.2f} |", end="", flush=True)

asyncio.run(main())
PY
  f=$(served "$fast"); w=$(served "$slow")
  echo " $(python3 -c "print(round(100 * $f / max($f + $w, 1)))") % |"
  kill "$gw_pid" "${sim_pids[@]}"
  wait "$gw_pid" "${sim_pids[@]}" 2>/dev/null || true
done
