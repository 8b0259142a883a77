#!/usr/bin/env bash
# Proxy overhead, side by side in one run: wrk against an `infergate sim --instant` replica
# directly, through infergate, and through nginx as a plain keep-alive reverse proxy.
# Small requests and a 1 MB-prompt case; each measured run follows a 2-second warm-up run. Prints a Markdown table (throughput, p99, CPU per
# request of the proxy process, its peak memory). Loopback only; every run is bounded by -d.
#
#   benches/proxy.sh [seconds-per-run]      (needs: wrk, nginx; builds --release)
#
# Environment: WORKERS=N gives both proxies N worker threads/processes (default: the gateway's
# default, one per core, and nginx's `auto`); CASES="small" runs only some cases.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
workers=${WORKERS:-}
cases=${CASES:-small large}
conns=64
threads=2
command -v wrk >/dev/null && command -v nginx >/dev/null || { echo "needs wrk and nginx (apt-get install wrk nginx)"; exit 1; }
cargo build --release --locked -q
bin=target/release/infergate
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; kill "$(cat "$work/nginx.pid" 2>/dev/null)" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The replica: answers at once, context large enough for the 1 MB prompt.
"$bin" sim --port 0 --model m --instant --max-model-len 1000000 >"$work/sim.out" 2>/dev/null &
pids+=($!)
sleep 0.5
sim=$(awk '{print $3}' "$work/sim.out")

gw_port=$(free_port); admin_port=$(free_port)
cat >"$work/gw.yaml" <<YAML
listeners: {gateway: 127.0.0.1:$gw_port, admin: 127.0.0.1:$admin_port${workers:+, worker_threads: $workers}}
pools:
  - name: bench
    models: [m]
    discovery: {static: {endpoints: ["http://$sim"]}}
YAML
RUST_LOG=warn "$bin" serve --config "$work/gw.yaml" 2>"$work/gw.log" &
gw_pid=$!
pids+=($gw_pid)

ng_port=$(free_port)
cat >"$work/nginx.conf" <<NGINX
worker_processes ${workers:-auto};
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_max_body_size 64m;
  client_body_buffer_size 2m;
  upstream sim { server $sim; keepalive 128; }
  server {
    listen 127.0.0.1:$ng_port;
    location / {
      proxy_pass http://sim;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
NGINX
# In the foreground of this session like the gateway (a daemon gets a scheduler group of its
# own, which changes its share of the two cores against wrk and the replica).
nginx -c "$work/nginx.conf" -g 'daemon off;' &
pids+=($!)
sleep 1

cat >"$work/small.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model": "m", "prompt": "Say hello to the benchmark.", "max_tokens": 4}'
LUA
cat >"$work/large.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"messages": [{"role": "user", "content": "' .. string.rep("a", 1024 * 1024) .. '"}], "max_tokens": 4, "model": "m"}'
LUA

# CPU seconds (user+system) of a set of processes.
cpu_of() { local t=0; for p in "$@"; do set -- $(cut -d' ' -f14,15 "/proc/$p/stat"); t=$((t + $1 + $2)); done; echo "$t"; }
nginx_pids() { pgrep -f "nginx: " | tr '\n' ' '; }
hwm_kb() { local m=0; for p in "$@"; do v=$(awk '/VmHWM/{print $2}' "/proc/$p/status"); m=$((m + v)); done; echo "$m"; }

# Requests that went through infergate's admission queue so far.
queued() { python3 -c 'import sys,urllib.request
page = urllib.request.urlopen(sys.argv[1]).read().decode()
print(sum(int(float(l.split()[-1])) for l in page.splitlines() if l.startswith("infergate_queue_wait_seconds_count")))' "http://127.0.0.1:$admin_port/metrics"; }

run() { # name url lua proxy-pids...
  local name=$1 url=$2 lua=$3; shift 3
  local before after out rps p50 p99 reqs
  # A short warm-up first, for every path alike: connections, upstream pools, page cache.
  wrk -t$threads -c$conns -d2s -s "$lua" "$url/v1/completions" >/dev/null 2>&1
  before=$( [ $# -gt 0 ] && cpu_of "$@" || echo 0)
  out=$(wrk -t$threads -c$conns -d${secs}s --latency -s "$lua" "$url/v1/completions" 2>&1)
  after=$( [ $# -gt 0 ] && cpu_of "$@" || echo 0)
  rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
  reqs=$(echo "$out" | awk '/requests in/{print $1}')
  p50=$(echo "$out" | awk '$1=="50%"{print $2}')
  p99=$(echo "$out" | awk '$1=="99%"{print $2}')
  errs=$(echo "$out" | awk '/Non-2xx|Socket errors/{print}' | tr '\n' ' ')
  local hz; hz=$(getconf CLK_TCK)
  local cpu_us="-" mem="-"
  if [ $# -gt 0 ]; then
    cpu_us=$(awk -v d=$((after - before)) -v hz="$hz" -v n="$reqs" 'BEGIN{printf "%.1f", d / hz * 1e6 / n}')
    mem=$(( $(hwm_kb "$@") / 1024 ))
  fi
  echo "| $name | $rps | $p50 | $p99 | $cpu_us | $mem | ${errs:-none} |"
}

echo "wrk -t$threads -c$conns -d${secs}s, $(nproc) cores, proxy workers: ${workers:-default}, $(date -u '+%Y-%m-%d %H:%M') UTC"
for case in $cases; do
  echo
  echo "**$case request** ($( [ $case = small ] && echo '~70-byte body' || echo '1 MiB prompt'))"
  echo
  echo "| path | req/s | p50 latency | p99 latency | proxy CPU µs/req | proxy peak RSS MiB | errors |"
  echo "|---|---|---|---|---|---|---|"
  run "direct to replica" "http://$sim" "$work/$case.lua"
  queued_before=$(queued)
  run "infergate" "http://127.0.0.1:$gw_port" "$work/$case.lua" "$gw_pid"
  queued_note="$case: $(( $(queued) - queued_before )) requests waited in infergate's admission queue"
  # shellcheck disable=SC2046
  run "nginx" "http://127.0.0.1:$ng_port" "$work/$case.lua" $(nginx_pids)
  echo
  echo "$queued_note"
done
