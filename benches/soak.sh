#!/usr/bin/env bash
# Soak: DURATION (default 30m) of mixed streamed load through one `infergate serve` in front of
# three simulated replicas (`infergate sim`, static discovery), with trouble along the way:
#   - every KILL_EVERY (default 3m) one replica in turn is killed (SIGKILL, streams cut
#     mid-answer) and started again 20 s later on the same port;
#   - every STALL_EVERY (default 3m, half a period after the kills) one replica in turn is
#     frozen (SIGSTOP) for 15 s: its streams and its /metrics stall, then it resumes (SIGCONT).
# Load: two `infergate loadgen` runs at once, streamed chat (Poisson, RATE/s, 1,000-token
# prompts, 200-token answers) and shared system prompts (RATE/4 per second).
# Every 10 s it records the gateway's RSS, open file descriptors, and its requests by status
# (`infergate_requests_total`) in soak.csv; at the end it prints RSS over time, the answers by
# status for each phase, and both load generators' reports.
#
# Usage: benches/soak.sh [OUT_DIR]   (loopback only; bounded by DURATION; stops only the
#        processes it started, by PID)
# Environment: DURATION=30m RATE=12 KILL_EVERY=180 STALL_EVERY=180 (seconds) BIN=path
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/soak}
DURATION=${DURATION:-30m}
RATE=${RATE:-12}
KILL_EVERY=${KILL_EVERY:-180}
STALL_EVERY=${STALL_EVERY:-180}
mkdir -p "$OUT"
# BIN: a binary of your own (copy it if you will rebuild during the soak: replicas restart from it).
[ -n "${BIN:-}" ] || { cargo build --release --locked -q; BIN=$PWD/target/release/infergate; }
# shellcheck source=benches/common.sh
. benches/common.sh
with_workdir
secs=$(python3 -c "import re,sys; m=re.fullmatch(r'(\d+)([smh]?)', '$DURATION'); print(int(m[1])*{'':1,'s':1,'m':60,'h':3600}[m[2]])")

# Replicas: llama-8b-h100 timings at 4x speed, so three of them carry the load on two cores.
ports=($(free_port) $(free_port) $(free_port))
replica=(0 0 0)
start_replica() { # index
  "$BIN" sim --port "${ports[$1]}" --model m --profile llama-8b-h100 --speed 4 \
    --seed "$1" >>"$OUT/replica-$1.log" 2>&1 &
  replica[$1]=$!
  pids+=($!)
}
for i in 0 1 2; do start_replica "$i"; done

GW=$(free_port)
ADMIN=$(free_port)
cat >"$OUT/config.yaml" <<EOF
listeners:
  gateway: 127.0.0.1:$GW
  admin: 127.0.0.1:$ADMIN
  drain_timeout: 5s
pools:
  - name: soak
    models: [m]
    discovery:
      static:
        endpoints: [http://127.0.0.1:${ports[0]}, http://127.0.0.1:${ports[1]}, http://127.0.0.1:${ports[2]}]
    routing: {policy: predicted-ttft}
    scaler: {enabled: false, provider: static}
EOF
"$BIN" check-config "$OUT/config.yaml" >/dev/null
RUST_LOG=warn "$BIN" serve --config "$OUT/config.yaml" 2>"$OUT/serve.log" &
gateway=$!
pids+=($gateway)
wait_ready "$ADMIN"

"$BIN" loadgen --url "http://127.0.0.1:$GW" --model m --generator poisson --rate "$RATE" \
  --duration "$DURATION" --prompt-tokens 1000 --output-tokens 200 --seed 11 --timeout 120s \
  --out "$OUT/chat.json" >"$OUT/chat.txt" 2>&1 &
chat=$!
pids+=($chat)
"$BIN" loadgen --url "http://127.0.0.1:$GW" --model m --generator shared-prefix \
  --rate "$(python3 -c "print($RATE / 4)")" --duration "$DURATION" --groups 8 \
  --system-prompt-tokens 3000 --prompt-tokens 300 --output-tokens 100 --seed 12 --timeout 120s \
  --out "$OUT/shared.json" >"$OUT/shared.txt" 2>&1 &
shared=$!
pids+=($shared)

# One line every 10 s: seconds, event, RSS (KiB), open fds, answers by status.
echo "t,event,rss_kib,fds,status_200,status_other" >"$OUT/soak.csv"
sample() { # t event
  local rss fds page ok other
  rss=$(awk '/^VmRSS/ {print $2}' "/proc/$gateway/status" 2>/dev/null || echo 0)
  fds=$(ls "/proc/$gateway/fd" 2>/dev/null | wc -l)
  page=$(curl -sf "http://127.0.0.1:$ADMIN/metrics" || true)
  ok=$(echo "$page" | awk '/^infergate_requests_total/ && /status="200"/ {s += $NF} END {print s + 0}')
  other=$(echo "$page" | awk '/^infergate_requests_total/ && !/status="200"/ {s += $NF} END {print s + 0}')
  echo "$1,$2,$rss,$fds,$ok,$other" >>"$OUT/soak.csv"
}

start=$(date +%s)
killed=-1
stalled=-1
next_kill=$((KILL_EVERY))
next_stall=$((STALL_EVERY / 2))
restart_at=-1
resume_at=-1
k=0
s=0
while :; do
  t=$(($(date +%s) - start))
  [ "$t" -ge "$secs" ] && break
  event=""
  if [ "$t" -ge "$next_kill" ]; then
    killed=$((k % 3)); k=$((k + 1))
    kill -KILL "${replica[$killed]}" 2>/dev/null || true
    restart_at=$((t + 20)); next_kill=$((next_kill + KILL_EVERY)); event="kill-$killed"
  fi
  if [ "$restart_at" -ge 0 ] && [ "$t" -ge "$restart_at" ]; then
    start_replica "$killed"; restart_at=-1; event="$event restart-$killed"
  fi
  if [ "$t" -ge "$next_stall" ]; then
    stalled=$((s % 3)); s=$((s + 1))
    # Not the one being killed: both at once would leave one replica.
    [ "$stalled" = "$killed" ] && [ "$restart_at" -ge 0 ] && stalled=$(((stalled + 1) % 3))
    kill -STOP "${replica[$stalled]}" 2>/dev/null || true
    resume_at=$((t + 15)); next_stall=$((next_stall + STALL_EVERY)); event="$event stall-$stalled"
  fi
  if [ "$resume_at" -ge 0 ] && [ "$t" -ge "$resume_at" ]; then
    kill -CONT "${replica[$stalled]}" 2>/dev/null || true; resume_at=-1; event="$event resume-$stalled"
  fi
  sample "$t" "$(echo "$event" | xargs)"
  sleep 10
done
for p in "${replica[@]}"; do kill -CONT "$p" 2>/dev/null || true; done
wait "$chat" "$shared" || true
sample "$(($(date +%s) - start))" end

python3 - "$OUT" <<'PY'
import csv, json, sys
out = sys.argv[1]
rows = list(csv.DictReader(open(f"{out}/soak.csv")))
rss = [int(r["rss_kib"]) / 1024 for r in rows]
print(f"gateway RSS MiB: first {rss[0]:.1f}, after 5 min {rss[min(30, len(rss) - 1)]:.1f}, "
      f"end {rss[-1]:.1f}, max {max(rss):.1f}; open fds: first {rows[0]['fds']}, max "
      f"{max(int(r['fds']) for r in rows)}, end {rows[-1]['fds']}")
print("\n| minutes | events | answers 200 | other statuses | RSS MiB | fds |")
print("|---|---|---:|---:|---:|---:|")
prev = {"status_200": 0, "status_other": 0}
for i in range(0, len(rows), 18):  # 3-minute phases
    chunk = rows[i:i + 18]
    last = chunk[-1]
    events = " ".join(r["event"] for r in chunk if r["event"]).strip()
    print(f"| {int(chunk[0]['t']) / 60:.0f}–{int(last['t']) / 60:.0f} | {events or '—'} | "
          f"{int(float(last['status_200']) - float(prev['status_200']))} | "
          f"{int(float(last['status_other']) - float(prev['status_other']))} | "
          f"{int(last['rss_kib']) / 1024:.1f} | {last['fds']} |")
    prev = last
for name in ("chat", "shared"):
    try:
        r = json.load(open(f"{out}/{name}.json"))
        r = r["runs"][0] if "runs" in r else r
    except Exception as e:  # the report is missing: say so rather than fail
        print(f"\n{name}: no report ({e})")
        continue
    print(f"\n{name}: {r['completed']} completed of {r['requests']}, failed {r.get('failed')}, "
          f"TTFT p50 {r['ttft']['p50']:.3f} s p99 {r['ttft']['p99']:.3f} s")
PY
