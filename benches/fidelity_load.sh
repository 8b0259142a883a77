#!/usr/bin/env bash
# Fidelity under load: scenarios where routing and scaling decisions matter, each run both
# ways and compared —
#   real:      `infergate serve` (one or two gateways) in front of `infergate sim` replicas
#              (separate processes, or the scaler's local children) + `infergate loadgen`;
#   simulated: `infergate simulate` of the same config and workload in virtual time.
# Scenarios (SCENARIOS="..." picks some):
#   mooncake-pt   a Mooncake window at ~80 % of a 4-replica fleet's capacity, predicted-ttft
#   mooncake-rr   the same window, round-robin (the policies' ranking must agree both ways)
#   preempt       shared-prefix burst on 4 replicas with small KV caches (2,500 blocks): they
#                 fill and preempt
#   ramp-cold     a ramp 2 → 24 requests/s over WINDOW under the infergate scaler (1..6 local
#                 replicas that take 20 s to load: `sim --startup-delay 20s`)
#   two-gateways  the Mooncake window through two gateways that exchange routing state
# Each prints sim/real for TTFT p50/p90/p99, E2E p50/p90, prefix-cache hit rate, preemptions,
# ready replica-seconds, and each replica's share of the requests (real: read from the
# replicas' own /metrics at the end; simulated: from the report).
#
# Usage: benches/fidelity_load.sh   (loopback only; ~30 min; needs python3 and ../shared/traces)
# Environment: WINDOW (default 180s of each workload), SCENARIOS, OUT (default
# target/fidelity-load), CAP (the 4-replica Mooncake capacity in requests/s, to skip the search).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-target/fidelity-load}
TRACES=${TRACES:-../shared/traces}
WINDOW=${WINDOW:-180s}
SCENARIOS=${SCENARIOS:-mooncake-pt mooncake-rr preempt ramp-cold two-gateways}
mkdir -p "$OUT"
cargo build --release --locked -q
BIN=$PWD/target/release/infergate
# shellcheck source=benches/common.sh
. benches/common.sh
with_workdir
# Mooncake's timestamps are multiples of 3 s: about ten requests arrive in one instant, and in
# real time their order at the gateway is the scheduler's, not the trace's — round robin then
# pairs other prompts with other replicas (measured: hit rate 9.2 % real vs 4.1 % simulated,
# 20 preemptions vs 1, on the same 90 s). Spread over their 3 s (seeded), the order is the
# trace's both ways.
MOONCAKE="--trace $TRACES/mooncake_conversation.jsonl --arrival-jitter 3s"
SIM_FLAGS="--model m --profile llama-8b-h100 --max-model-len 131072"

# Starts n `infergate sim` replicas with extra flags; their URLs go to $work/endpoints and
# their PIDs to $work/replica-pids (and to `pids`, for the exit trap).
start_replicas() { # n [flags...]
  local n=$1
  shift
  : >"$work/endpoints"
  : >"$work/replica-pids"
  for i in $(seq "$n"); do
    rm -f "$work/sim-$i.out"
    # shellcheck disable=SC2086
    "$BIN" sim --port 0 $SIM_FLAGS --seed "$i" "$@" >"$work/sim-$i.out" 2>/dev/null &
    pids+=($!)
    echo $! >>"$work/replica-pids"
    for _ in $(seq 50); do [ -s "$work/sim-$i.out" ] && break; sleep 0.1; done
    echo "http://$(awk '{print $3}' "$work/sim-$i.out")" >>"$work/endpoints"
  done
}

stop_replicas() {
  while read -r p; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done <"$work/replica-pids"
}

# A pool of the static replicas in $work/endpoints.
static_pool() { # policy [more pool YAML lines]
  echo "pools:"
  echo "  - name: fid"
  echo "    models: [m]"
  echo "    discovery: {static: {endpoints: [$(paste -sd, "$work/endpoints")]}}"
  echo "    metrics: {format: vllm, scrape_interval: 100ms}"
  echo "    routing: {policy: $1}"
  echo "    scaler: {enabled: false, provider: static}"
}

# Starts `serve` on free ports with a config; sets gw, admin and pid.
serve() { # config-file log-file
  gw=$(free_port); admin=$(free_port)
  sed -e "s/GATEWAY_PORT/$gw/" -e "s/ADMIN_PORT/$admin/" "$1" >"$1.real"
  RUST_LOG=info "$BIN" serve --config "$1.real" 2>"$2" &
  pid=$!
  pids+=($pid)
  wait_ready "$admin"
}

# Each replica's counters from its own /metrics page, as JSON (for the comparison).
replica_counters() { # -> $OUT/$name/replicas.json
  python3 - "$work/endpoints" >"$OUT/$name/replicas.json" <<'PY'
import json, sys, urllib.request
out = []
for url in open(sys.argv[1]).read().split():
    page = urllib.request.urlopen(url + "/metrics").read().decode()
    def total(metric):
        return sum(float(l.split()[-1]) for l in page.splitlines()
                   if l.startswith("vllm:" + metric) and not l.startswith("#"))
    out.append({"requests": total("request_success_total"),
                "prefix_hits": total("prefix_cache_hits_total"),
                "prefix_queries": total("prefix_cache_queries_total"),
                "preemptions": total("num_preemptions_total")})
print(json.dumps(out))
PY
}

compare() { # name
  python3 - "$OUT/$1" <<'PY'
import json, os, sys
d = sys.argv[1]
real = json.load(open(f"{d}/real.json"))
sim = json.load(open(f"{d}/sim/report.json"))["runs"][0]
reps = json.load(open(f"{d}/replicas.json")) if os.path.exists(f"{d}/replicas.json") else None
rows = []
def row(what, r, s, fmt):
    ratio = f"{s / r:.2f}" if r else "–"
    rows.append(f"| {what} | {fmt(r)} | {fmt(s)} | {ratio} |")
ms = lambda v: f"{v * 1000:.0f} ms"
sec = lambda v: f"{v:.2f} s"
for k in ("p50", "p90", "p99"):
    row(f"TTFT {k}", real["ttft"][k], sim["ttft"][k], ms)
for k in ("p50", "p90"):
    row(f"E2E {k}", real["e2e"][k], sim["e2e"][k], sec)
row("completed", real["completed"], sim["completed"], str)
if reps:
    hits = sum(r["prefix_hits"] for r in reps) / max(sum(r["prefix_queries"] for r in reps), 1)
    rows.append(f"| prefix-cache hit rate | {100 * hits:.1f} % | {100 * sim['prefix_cache_hit_rate']:.1f} % | {100 * (sim['prefix_cache_hit_rate'] - hits):+.1f} points |")
    row("preemptions", sum(r["preemptions"] for r in reps), sim["preemptions"], lambda v: f"{v:.0f}")
def ready_seconds(timeline):
    pts = sorted((p["t"], p["ready"]) for p in timeline)
    return sum((b[0] - a[0]) * a[1] for a, b in zip(pts, pts[1:]))
if real["timeline"]:
    row("ready replica-seconds", ready_seconds(real["timeline"]), ready_seconds(sim["timeline"]), lambda v: f"{v:.0f}")
    mean = lambda tl: sum(p["inflight"] for p in tl) / max(len(tl), 1)
    row("answers in flight, mean of 1 s samples", mean(real["timeline"]), mean(sim["timeline"]), lambda v: f"{v:.1f}")
print("| | real | simulated | sim / real |\n|---|---:|---:|---:|")
print("\n".join(rows))
if reps:
    rt = sum(r["requests"] for r in reps) or 1
    st = sum(r["requests"] for r in sim["replicas"]) or 1
    share = lambda xs, t: " ".join(f"{100 * x / t:.0f}" for x in xs)
    print(f"\nshare of requests per replica (%): real {share([r['requests'] for r in reps], rt)}; "
          f"simulated {share([r['requests'] for r in sim['replicas']], st)}")
if real["timeline"]:
    def at(tl, t):
        best = None
        for p in tl:
            if p["t"] <= t:
                best = p["ready"]
        return best
    span = int(min(real["timeline"][-1]["t"], sim["timeline"][-1]["t"]))
    pairs = [(at(real["timeline"], t), at(sim["timeline"], t)) for t in range(1, span)]
    pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
    same = sum(a == b for a, b in pairs) / max(len(pairs), 1)
    print(f"\nready replicas equal in {100 * same:.0f} % of {len(pairs)} seconds")
    print("t(s) real sim: " + ", ".join(f"{t}:{at(real['timeline'], t)}/{at(sim['timeline'], t)}"
                                        for t in range(0, span, max(span // 12, 1))))
PY
}

# The real scaler's tick offset from the load's start (seconds, within one 1 s interval), read
# off the first decision it logged after the start; nothing without one.
scaler_phase() { # serve-log load-start-unix-seconds
  [ -f "$1" ] || return 0
  python3 - "$1" "$2" <<'PY'
import datetime, re, sys
start = float(sys.argv[2])
for line in open(sys.argv[1]):
    m = re.match(r"\S*?(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z.*scaler decision", line)
    if not m:
        continue
    at = datetime.datetime.fromisoformat(m.group(1)).replace(tzinfo=datetime.timezone.utc).timestamp()
    if at >= start:
        print(f"{(at - start) % 1.0:.3f}")
        break
PY
}

# One scenario both ways. The workload flags go to loadgen and simulate alike.
run() { # name config-template workload-flags simulate-flags [gateways]
  local name=$1 config=$2 workload=$3 simflags=$4 gateways=${5:-1}
  mkdir -p "$OUT/$name"
  echo "== $name"
  local urls="" servers=() g
  if [ "$gateways" = 1 ]; then
    serve "$config" "$OUT/$name/serve.log"
    urls="http://127.0.0.1:$gw"
    servers=("$pid")
  else
    # Two gateways that know each other: ports chosen first, each config names both admins.
    local a1 a2 g1 g2
    a1=$(free_port); a2=$(free_port); g1=$(free_port); g2=$(free_port)
    for g in 1 2; do
      local gp ap
      [ "$g" = 1 ] && { gp=$g1; ap=$a1; } || { gp=$g2; ap=$a2; }
      sed -e "s/GATEWAY_PORT/$gp/" -e "s/ADMIN_PORT/$ap/" -e "s/PEER_ADMINS/127.0.0.1:$a1, 127.0.0.1:$a2/" \
        "$config" >"$config.$g"
      RUST_LOG=info "$BIN" serve --config "$config.$g" 2>"$OUT/$name/serve-$g.log" &
      pids+=($!)
      servers+=($!)
    done
    for ap in $a1 $a2; do
      wait_ready "$ap"
    done
    urls="http://127.0.0.1:$g1,http://127.0.0.1:$g2"
    admin=$a1
  fi
  local started
  started=$(date +%s.%N)
  # shellcheck disable=SC2086
  "$BIN" loadgen --url "$urls" --model m $workload --admin-url "http://127.0.0.1:$admin" \
    --out "$OUT/$name/real.json" >"$OUT/$name/real.txt"
  if [ -s "$work/endpoints" ]; then replica_counters; fi
  for p in "${servers[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  # The simulation's gateways exchange state by --gateways alone; the addresses are unused.
  sed -e "s/GATEWAY_PORT/0/" -e "s/ADMIN_PORT/0/" -e "/^cluster:/d" "$config" >"$config.sim"
  # The simulated scaler ticks where the real one did, counted from the load's start: its
  # decisions are 10 s means crossing thresholds, and on a ramp the instant a 1 s tick falls
  # on moved a decision by up to 20 s (BENCHMARKS.md, session 9).
  local phase
  phase=$(scaler_phase "$OUT/$name/serve.log" "$started")
  [ -n "$phase" ] && simflags="$simflags --scaler-phase ${phase}s"
  # shellcheck disable=SC2086
  "$BIN" simulate --config "$config.sim" $workload $simflags --gateways "$gateways" \
    --sample-every 1s --quiet --out "$OUT/$name/sim" >"$OUT/$name/sim.txt"
  compare "$name" | tee "$OUT/$name/compare.md"
  echo
}

# Mooncake's rate at 80 % of 4 replicas' capacity (the simulated search of
# benches/fleet_common.sh, least-request routing).
mooncake_scale() {
  local cap=${CAP:-}
  if [ -z "$cap" ]; then
    printf 'pools:\n  - name: fid\n    models: [m]\n    discovery: {static: {endpoints: [http://127.0.0.1:1, http://127.0.0.1:2, http://127.0.0.1:3, http://127.0.0.1:4]}}\n    metrics: {scrape_interval: 100ms}\n    scaler: {enabled: false, provider: static}\n' >"$work/cap.yaml"
    FLEET="-c $work/cap.yaml --no-scaler --max-model-len 131072"
    # shellcheck source=benches/fleet_common.sh
    . benches/fleet_common.sh
    cap=$(capacity mooncake "$MOONCAKE" 3.40 "")
  fi
  echo "Mooncake capacity of 4 replicas: $cap requests/s; offered at 80 %" >&2
  python3 -c "print(3.40 / ($cap * 0.8))"
}

for scenario in $SCENARIOS; do
  : >"$work/endpoints"
  case $scenario in
    mooncake-pt | mooncake-rr | two-gateways)
      scale=${scale:-$(mooncake_scale)}
      policy=predicted-ttft
      [ "$scenario" = mooncake-rr ] && policy=round-robin
      gateways=1
      [ "$scenario" = two-gateways ] && gateways=2
      start_replicas 4
      cfg="$work/$scenario.yaml"
      {
        echo "listeners: {gateway: 127.0.0.1:GATEWAY_PORT, admin: 127.0.0.1:ADMIN_PORT}"
        [ "$gateways" = 2 ] && echo "cluster: {peers: [PEER_ADMINS]}"
        static_pool "$policy"
      } >"$cfg"
      run "$scenario" "$cfg" "$MOONCAKE --time-scale $scale --window $WINDOW" \
        "--max-model-len 131072" "$gateways"
      stop_replicas
      ;;
    preempt)
      start_replicas 4 --kv-blocks 2500
      cfg="$work/preempt.yaml"
      { echo "listeners: {gateway: 127.0.0.1:GATEWAY_PORT, admin: 127.0.0.1:ADMIN_PORT}"; static_pool predicted-ttft; } >"$cfg"
      run preempt "$cfg" "--generator shared-prefix --groups 8 --prompts-per-group 32 --system-prompt-tokens 4096 --prompt-tokens 512 --output-tokens 1024 --rate 8 --duration $WINDOW --seed 7" \
        "--kv-blocks 2500 --max-model-len 131072"
      stop_replicas
      ;;
    ramp-cold)
      cfg="$work/ramp-cold.yaml"
      cat >"$cfg" <<YAML
listeners: {gateway: 127.0.0.1:GATEWAY_PORT, admin: 127.0.0.1:ADMIN_PORT}
pools:
  - name: fid
    models: [m]
    discovery:
      local:
        replicas: 1
        command: ["$BIN", "sim", "--port", "0", "--model", "m", "--profile", "llama-8b-h100", "--startup-delay", "20s"]
        startup_timeout: 60s
    metrics: {format: vllm, scrape_interval: 100ms}
    routing: {policy: predicted-ttft}
    scaler:
      enabled: true
      policy: infergate
      min_replicas: 1
      max_replicas: 6
      targets: {concurrency: 8}
      scale_down_stabilization: 30s
      cold_start: 20s
      provider: local
YAML
      run ramp-cold "$cfg" "--generator ramp --rate 2 --rate-end 24 --duration $WINDOW --prompt-tokens 1000 --output-tokens 200 --seed 7" ""
      ;;
    *) echo "unknown scenario $scenario" >&2; exit 2 ;;
  esac
done
