#!/usr/bin/env bash
# A 4x step in load while replicas take 20 s to start, in real time: `serve` with the local
# provider (1..6 `infergate sim --profile llama-8b-h100 --startup-delay 20s` replicas, the
# `infergate` scaler, concurrency target 16) and `loadgen` replaying RATE requests/s for 60 s,
# then 4x RATE for 90 s (Poisson, 1000 prompt and 200 output tokens, seeded). Prints the
# report's completed and failed requests (by reason), TTFT and E2E, and the replicas started.
# A replica takes at most 16 requests at once (`admission.max_inflight_per_replica`), so the step
# queues at the gateway while replicas start; MAX_QUEUE_WAIT sets `admission.max_queue_wait`
# (default 10s, shorter than the cold start: requests are kept only if the hold follows the
# capacity that is coming).
#
# Usage: benches/step_cold.sh   (loopback only; ~3 min; BIN=path/to/infergate for another build)
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${RATE:-4}
if [ -z "${BIN:-}" ]; then
  cargo build --release --locked -q
  BIN=$PWD/target/release/infergate
fi
# shellcheck source=benches/common.sh
. benches/common.sh
with_workdir
python3 - "$rate" "$work/step.csv" <<'PY'
import datetime, random, sys
rate, out = float(sys.argv[1]), sys.argv[2]
rng, t = random.Random(7), 0.0
start = datetime.datetime(2023, 11, 16)
with open(out, "w") as f:
    f.write("TIMESTAMP,ContextTokens,GeneratedTokens\n")
    while True:
        t += rng.expovariate(rate if t < 60 else 4 * rate)
        if t >= 150:
            break
        stamp = start + datetime.timedelta(seconds=t)
        f.write(f"{stamp.strftime('%Y-%m-%d %H:%M:%S.%f')}0,1000,200\n")
PY
gw=$(free_port); admin=$(free_port)
wait=${MAX_QUEUE_WAIT:-10s}
cat >"$work/gw.yaml" <<YAML
listeners: {gateway: 127.0.0.1:$gw, admin: 127.0.0.1:$admin}
pools:
  - name: step
    models: [m]
    discovery:
      local:
        replicas: 1
        command: ["$BIN", "sim", "--port", "0", "--model", "m", "--profile", "llama-8b-h100", "--startup-delay", "20s"]
        startup_timeout: 60s
    metrics: {format: vllm, scrape_interval: 100ms}
    admission: {max_inflight_per_replica: 16, max_queue_wait: $wait}
    scaler:
      enabled: true
      min_replicas: 1
      max_replicas: 6
      targets: {concurrency: 16}
      cold_start: 20s
      provider: local
YAML
RUST_LOG=info "$BIN" serve --config "$work/gw.yaml" 2>"$work/gw.log" &
pids+=($!)
sleep 25 # the first replica's own start
wait_ready "$admin"
kill -0 "${pids[-1]}" 2>/dev/null || { cat "$work/gw.log" >&2; exit 1; }
"$BIN" loadgen --url "http://127.0.0.1:$gw" --model m --trace "$work/step.csv" --trace-format azure \
  --seed 7 --out "$work/report.json" >"$work/loadgen.out" 2>&1
python3 - "$work/report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
run = r["runs"][0] if "runs" in r else r
failed = run["failed"]
print(f"requests {run['requests']}, completed {run['completed']}, failed {sum(failed.values())} "
      f"{failed or ''}; TTFT p50 {run['ttft']['p50']:.2f} s p90 {run['ttft']['p90']:.2f} s "
      f"p99 {run['ttft']['p99']:.2f} s; E2E p90 {run['e2e']['p90']:.2f} s")
PY
echo "replicas desired at the end: $(grep -o 'desired=[0-9]*' "$work/gw.log" | tail -1 | cut -d= -f2)"
