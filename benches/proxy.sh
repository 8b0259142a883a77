#!/usr/bin/env bash
# Proxy overhead, side by side in one run: wrk against an `infergate sim --instant` replica
# directly, through infergate, and through nginx as a plain keep-alive reverse proxy.
# Small requests and a 1 MB-prompt case. Each path gets a 2-second warm-up, then ROUNDS
# measured runs, interleaved (round r starts with a different path), because on a small shared
# machine one run's p99 moves by 1.5x between consecutive runs: a bad stretch then falls on
# every path alike. Prints a Markdown table per case: throughput, p50 and p99 over all rounds'
# requests pooled, CPU per request of the proxy process, its peak memory; then each round's
# infergate/nginx ratios. Loopback only; every run is bounded by -d.
#
#   benches/proxy.sh [seconds-per-run]      (needs: wrk, nginx, python3; builds --release)
#
# Every measured run starts after a pause of PAUSE seconds (default 2): a proxy measured right
# after the replica was driven flat out directly showed p99 up to 1.8x of its own after a pause
# (the scheduler still favouring the replica and wrk), so every path starts from a quiet machine.
#
# Environment: ROUNDS=N measured runs per path and case (default 3); PAUSE=S; WORKERS=N gives both
# proxies N worker threads/processes (default: the gateway's default, one per core, and
# nginx's `auto`); CASES="small" runs only some cases (`small`, `large`, and `close`: the small
# request with `Connection: close`, so that every request opens a connection).
#
# TLS=1 adds two paths: a second gateway with a TLS listener (`infergate-tls`) and nginx with
# `ssl` on a second port (`nginx-tls`, TLS 1.3 allowed as infergate speaks it), both with an
# ECDSA P-256 certificate made by openssl; the replica stays plain HTTP. Each TLS path's CPU per
# request less its plain path's is the cost of TLS (the `close` case: of a handshake per
# request); the report prints both differences.
#
# KEYS=1 adds a gateway that requires an API key (`infergate-keys`: `auth.keys` with one key
# that has a tokens-per-minute budget far above what the run spends, so every request is
# authenticated, rate-checked and metered); every path's requests carry the key (the others
# ignore it). Its CPU per request less the plain gateway's is the cost of keys.
#
# TRACE=1 adds two gateways with OpenTelemetry tracing on (`tracing.otlp_endpoint` to a sink that
# takes OTLP posts, an nginx `return 200`): `infergate-trace0` with `sample_ratio: 0` (every
# request gets a span context and passes a `traceparent` on, none is recorded: sampling off) and
# `infergate-trace1` with `sample_ratio: 1` (every request's span is recorded and exported). Their
# CPU per request less the plain gateway's is the cost of tracing.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
rounds=${ROUNDS:-3}
pause=${PAUSE:-2}
workers=${WORKERS:-}
cases=${CASES:-small large}
conns=64
threads=2
tls=${TLS:-}
keys=${KEYS:-}
trace=${TRACE:-}
command -v wrk >/dev/null && command -v nginx >/dev/null || { echo "needs wrk and nginx (apt-get install wrk nginx)"; exit 1; }
[ -z "$tls" ] || command -v openssl >/dev/null || { echo "TLS=1 needs openssl"; exit 1; }
cargo build --release --locked -q
bin=${CARGO_TARGET_DIR:-target}/release/infergate
# shellcheck source=benches/common.sh
. benches/common.sh
with_workdir

# The replica: answers at once, context large enough for the 1 MB prompt.
"$bin" sim --port 0 --model m --instant --max-model-len 1000000 >"$work/sim.out" 2>/dev/null &
pids+=($!)
sleep 0.5
sim=$(awk '{print $3}' "$work/sim.out")

gateway_yaml() { # gateway-port admin-port [more listener settings] [more top-level YAML]
  cat <<YAML
listeners: {gateway: 127.0.0.1:$1, admin: 127.0.0.1:$2${workers:+, worker_threads: $workers}${3:+, $3}}
${4:-}
pools:
  - name: bench
    models: [m]
    discovery: {static: {endpoints: ["http://$sim"]}}
YAML
}
# The gateways measured, by path name: their PIDs and gateway ports.
declare -A gw_pid gw_port
start_gateway() { # path [more listener settings] [more top-level YAML]
  local port admin
  port=$(free_port); admin=$(free_port)
  gateway_yaml "$port" "$admin" "${2:-}" "${3:-}" >"$work/$1.yaml"
  RUST_LOG=warn "$bin" serve --config "$work/$1.yaml" 2>"$work/$1.log" &
  gw_pid[$1]=$!
  gw_port[$1]=$port
  pids+=($!)
  [ "$1" != infergate ] || admin_port=$admin
}
start_gateway infergate
if [ -n "$keys" ]; then
  key_hash=$(printf %s sk-bench | sha256sum | cut -d' ' -f1)
  start_gateway infergate-keys "" \
    "auth: {keys: [{name: bench, sha256: $key_hash, tokens_per_minute: 1000000000000}]}"
fi
sink_port=$(free_port)
if [ -n "$trace" ]; then
  start_gateway infergate-trace0 "" "tracing: {otlp_endpoint: \"http://127.0.0.1:$sink_port\", sample_ratio: 0}"
  start_gateway infergate-trace1 "" "tracing: {otlp_endpoint: \"http://127.0.0.1:$sink_port\", sample_ratio: 1}"
fi

nginx_tls=""
if [ -n "$tls" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
    -addext subjectAltName=IP:127.0.0.1 -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
  start_gateway infergate-tls "tls: {cert: $work/cert.pem, key: $work/key.pem}"
  ng_tls_port=$(free_port)
  nginx_tls="server {
    listen 127.0.0.1:$ng_tls_port ssl;
    ssl_certificate $work/cert.pem;
    ssl_certificate_key $work/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;  # 1.22's default stops at TLS 1.2 (and resumes sessions)
    location / {
      proxy_pass http://sim;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_buffering off;
    }
  }"
fi

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
  $nginx_tls
  # The traced gateways' OTLP collector: takes every post.
  server {
    listen 127.0.0.1:$sink_port;
    location / { return 200; }
  }
}
NGINX
# In the foreground of this session like the gateway (a daemon gets a scheduler group of its
# own, which changes its share of the two cores against wrk and the replica).
nginx -c "$work/nginx.conf" -g 'daemon off;' &
nginx_master=$!
pids+=($nginx_master)
sleep 1

# Each measured run writes its request count and its latency quantiles (every 0.1 %, in µs;
# the last is the maximum: wrk's percentile(100) gives 0) to $WRK_OUT, so that rounds can be
# pooled.
quantiles='
done = function(summary, latency, requests)
  local f = assert(io.open(os.getenv("WRK_OUT"), "w"))
  f:write(summary.requests, " ", summary.duration, "\n")
  for i = 1, 999 do f:write(latency:percentile(i / 10), "\n") end
  f:write(latency.max, "\n")
  f:close()
end'
# (A variable: inside a here-document, ${keys:+...} would drop the quotes of the Lua.)
auth_header=""
[ -z "$keys" ] || auth_header='wrk.headers["Authorization"] = "Bearer sk-bench"'
cat >"$work/small.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
$auth_header
wrk.body = '{"model": "m", "prompt": "Say hello to the benchmark.", "max_tokens": 4}'
$quantiles
LUA
cat >"$work/close.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
$auth_header
wrk.headers["Connection"] = "close"
wrk.body = '{"model": "m", "prompt": "Say hello to the benchmark.", "max_tokens": 4}'
$quantiles
LUA
cat >"$work/large.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
$auth_header
wrk.body = '{"messages": [{"role": "user", "content": "' .. string.rep("a", 1024 * 1024) .. '"}], "max_tokens": 4, "model": "m"}'
$quantiles
LUA

# CPU ticks (user+system) of a set of processes.
cpu_of() { local t=0; for p in "$@"; do set -- $(cut -d' ' -f14,15 "/proc/$p/stat"); t=$((t + $1 + $2)); done; echo "$t"; }
# This run's nginx only (its master and workers), whatever else runs on the machine.
nginx_pids() { echo "$nginx_master $(pgrep -P "$nginx_master" | tr '\n' ' ')"; }
hwm_kb() { local m=0; for p in "$@"; do v=$(awk '/VmHWM/{print $2}' "/proc/$p/status"); m=$((m + v)); done; echo "$m"; }

# Requests that went through infergate's admission queue so far.
queued() { python3 -c 'import sys,urllib.request
page = urllib.request.urlopen(sys.argv[1]).read().decode()
print(sum(int(float(l.split()[-1])) for l in page.splitlines() if l.startswith("infergate_queue_wait_seconds_count")))' "http://127.0.0.1:$admin_port/metrics"; }

declare -A url=([direct]="http://$sim" [nginx]="http://127.0.0.1:$ng_port")
paths=(direct infergate nginx)
for path in "${!gw_port[@]}"; do
  scheme=http
  [ "$path" != infergate-tls ] || scheme=https
  url[$path]="$scheme://127.0.0.1:${gw_port[$path]}"
  [ "$path" = infergate ] || paths+=("$path")
done
if [ -n "$tls" ]; then
  url[nginx-tls]="https://127.0.0.1:$ng_tls_port"
  paths+=(nginx-tls)
fi
proxy_pids() { case $1 in nginx*) nginx_pids ;; direct) ;; *) echo "${gw_pid[$1]}" ;; esac; }

# One measured run: quantiles to $work/$case.$path.$round, CPU ticks of the proxy added to
# $work/$case.$path.cpu, wrk's error lines to $work/$case.$path.errors.
measure() { # case path round
  local case=$1 path=$2 round=$3 pids before after out
  pids=$(proxy_pids "$path")
  sleep "$pause"
  # shellcheck disable=SC2086
  before=$( [ -n "$pids" ] && cpu_of $pids || echo 0)
  out=$(WRK_OUT="$work/$case.$path.$round" wrk -t$threads -c$conns -d${secs}s -s "$work/$case.lua" "${url[$path]}/v1/completions" 2>&1)
  # shellcheck disable=SC2086
  after=$( [ -n "$pids" ] && cpu_of $pids || echo 0)
  echo $((after - before)) >>"$work/$case.$path.cpu"
  echo "$out" | awk '/Non-2xx|Socket errors/{print}' >>"$work/$case.$path.errors"
}

# Pools the rounds of one case and prints its table and per-round ratios.
report() { # case
  python3 - "$work" "$1" "$rounds" "$(getconf CLK_TCK)" "${paths[@]}" <<'PY'
import os, sys
work, case, rounds, hz = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
paths = sys.argv[5:]

def run(path, r):
    lines = open(f"{work}/{case}.{path}.{r}").read().split()
    q = [float(x) for x in lines[2:]]
    assert q == sorted(q), f"{path} round {r}: wrk's quantiles are not in order"
    return int(lines[0]), int(lines[1]), q

def pooled(path):
    samples, requests, micros = [], 0, 0
    for r in range(rounds):
        n, duration, q = run(path, r)
        requests, micros = requests + n, micros + duration
        samples += [(v, n / len(q)) for v in q]   # each quantile stands for n/1000 requests
    samples.sort()
    total, acc, out = sum(w for _, w in samples), 0.0, {}
    for v, w in samples:
        acc += w
        for p in (0.5, 0.99):
            if p not in out and acc >= p * total:
                out[p] = v
    return requests, requests / (micros / 1e6), out[0.5], out[0.99]

def ms(us):
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.0f} µs"

def read(name, default=""):
    path = f"{work}/{name}"
    return open(path).read().strip() if os.path.exists(path) else default

print("| path | req/s | p50 latency | p99 latency | proxy CPU µs/req | proxy peak RSS MiB | errors |")
print("|---|---|---|---|---|---|---|")
result, cpu_per_request = {}, {}
for path in paths:
    requests, rps, p50, p99 = pooled(path)
    result[path] = (rps, p99)
    cpu = mem = "-"
    if path != "direct":
        ticks = sum(int(x) for x in read(f"{case}.{path}.cpu", "0").split())
        cpu_per_request[path] = ticks / hz * 1e6 / requests
        cpu = f"{cpu_per_request[path]:.1f}"
        mem = read(f"{path}.rss_mib", "-")
    errors = " ".join(read(f"{case}.{path}.errors").split()) or "none"
    print(f"| {path} | {rps:.0f} | {ms(p50)} | {ms(p99)} | {cpu} | {mem} | {errors} |")
print()
ratios = []
for r in range(rounds):
    (gn, gd, gq), (nn, nd, nq) = run("infergate", r), run("nginx", r)
    g99, n99 = gq[989], nq[989]
    ratios.append(f"round {r + 1}: {gn / gd * 1e6:.0f} / {nn / nd * 1e6:.0f} req/s = "
                  f"{gn / gd / (nn / nd):.2f}x, p99 {ms(g99)} / {ms(n99)} = {g99 / n99:.2f}x")
(g_rps, g99), (n_rps, n99) = result["infergate"], result["nginx"]
print(f"infergate / nginx, rounds pooled: throughput {g_rps / n_rps:.2f}x, p99 {g99 / n99:.2f}x; "
      + "; ".join(ratios))
for proxy in ("infergate", "nginx"):
    if f"{proxy}-tls" in cpu_per_request:
        plain, over_tls = cpu_per_request[proxy], cpu_per_request[f"{proxy}-tls"]
        print(f"TLS costs {proxy} {over_tls - plain:.1f} µs CPU per request "
              f"({over_tls:.1f} vs {plain:.1f}, {over_tls / plain:.2f}x)")
for path, what in (("infergate-keys", "API keys"),
                   ("infergate-trace0", "Tracing with sampling off"),
                   ("infergate-trace1", "Tracing every request")):
    if path in cpu_per_request:
        plain, other = cpu_per_request["infergate"], cpu_per_request[path]
        print(f"{what} costs infergate {other - plain:.1f} µs CPU per request "
              f"({other:.1f} vs {plain:.1f}, {other / plain:.2f}x)")
PY
}

echo "wrk -t$threads -c$conns -d${secs}s, $rounds rounds after ${pause} s pauses, $(nproc) cores, proxy workers: ${workers:-default}, $(date -u '+%Y-%m-%d %H:%M') UTC"
for case in $cases; do
  # A short warm-up first, for every path alike: connections, upstream pools, page cache.
  for path in "${paths[@]}"; do
    wrk -t$threads -c$conns -d2s -s "$work/$case.lua" "${url[$path]}/v1/completions" >/dev/null 2>&1 </dev/null || true
  done
  rm -f "$work"/*.rss_mib
  queued_before=$(queued)
  for ((round = 0; round < rounds; round++)); do
    for ((i = 0; i < ${#paths[@]}; i++)); do
      path=${paths[$(( (round + i) % ${#paths[@]} ))]}
      measure "$case" "$path" "$round"
    done
  done
  queued_note="$case: $(( $(queued) - queued_before )) requests waited in infergate's admission queue"
  for path in "${!gw_pid[@]}"; do
    echo $(( $(hwm_kb "${gw_pid[$path]}") / 1024 )) >"$work/$path.rss_mib"
  done
  # shellcheck disable=SC2046
  echo $(( $(hwm_kb $(nginx_pids)) / 1024 )) >"$work/nginx.rss_mib"
  echo
  case $case in
    small) what='~70-byte body' ;;
    close) what='~70-byte body, a new connection each' ;;
    *) what='1 MiB prompt' ;;
  esac
  echo "**$case request** ($what)"
  echo
  report "$case"
  echo
  echo "$queued_note"
done
