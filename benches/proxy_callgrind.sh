#!/usr/bin/env bash
# User-space instructions per proxied request, for comparing code changes on a noisy machine
# (wall-clock numbers are not; `perf stat -e instructions` is not available in this VM).
# Runs the gateway (one worker, embedded policy defaults) under callgrind in front of an
# `infergate sim --instant` replica, warms up with 2000 requests, counts N more small requests
# (4 keep-alive connections) and prints instructions per request and the top functions by self
# cost. Counts include the gateway's background work (the replica scrape), which under valgrind's
# slowdown is a larger share than in a real run.
#
#   benches/proxy_callgrind.sh [requests] [binary]      (needs: valgrind, python3)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-20000}
bin=${2:-target/release/infergate}
[ $# -ge 2 ] || cargo build --release --locked -q
# shellcheck source=benches/common.sh
. benches/common.sh
with_workdir

"$bin" sim --port 0 --model m --instant >"$work/sim.out" 2>/dev/null &
pids+=($!)
sleep 0.5
sim=$(awk '{print $3}' "$work/sim.out")
gw_port=$(free_port); admin_port=$(free_port)
cat >"$work/gw.yaml" <<YAML
listeners: {gateway: 127.0.0.1:$gw_port, admin: 127.0.0.1:$admin_port, worker_threads: 1}
pools:
  - name: bench
    models: [m]
    discovery: {static: {endpoints: ["http://$sim"]}}
YAML
RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$work/cg" "$bin" serve --config "$work/gw.yaml" 2>"$work/gw.log" &
gw_pid=$!
pids+=($gw_pid)
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$gw_port/health" && break; sleep 0.3; done

# Keep-alive client: N requests over 4 connections, answers read by Content-Length or chunks.
cat >"$work/client.py" <<'PY'
import socket, sys, threading
port, n, conns = int(sys.argv[1]), int(sys.argv[2]), 4
body = b'{"model": "m", "prompt": "Say hello to the benchmark.", "max_tokens": 4}'
req = b"POST /v1/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
bad = []
def worker(k):
    s = socket.create_connection(("127.0.0.1", port)); buf = b""
    for _ in range(k):
        s.sendall(req)
        while b"\r\n\r\n" not in buf: buf += s.recv(65536)
        head, _, rest = buf.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"): bad.append(head)
        lines = [l.split(b":", 1) for l in head.lower().split(b"\r\n")[1:]]
        headers = {k.strip(): v.strip() for k, v in lines}
        if headers.get(b"transfer-encoding") == b"chunked":
            while b"0\r\n\r\n" not in rest: rest += s.recv(65536)
            buf = rest[rest.index(b"0\r\n\r\n") + 5:]
        else:
            length = int(headers.get(b"content-length", b"0"))
            while len(rest) < length: rest += s.recv(65536)
            buf = rest[length:]
ts = [threading.Thread(target=worker, args=(n // conns,)) for _ in range(conns)]
[t.start() for t in ts]; [t.join() for t in ts]
if bad: sys.exit(f"{len(bad)} answers were not 200: {bad[0][:80]!r}")
PY
python3 "$work/client.py" "$gw_port" 2000
callgrind_control -z "$gw_pid" >/dev/null 2>&1
python3 "$work/client.py" "$gw_port" "$n"
callgrind_control -d "$gw_pid" >/dev/null 2>&1
sleep 0.5

# Self cost per function from the dump (callgrind_annotate 3.19 shows these dumps inclusive only).
python3 - "$work"/cg.1 "$n" <<'PY'
import collections, re, sys
names, cost, fn, call = {}, collections.Counter(), None, False
def name(s):
    m = re.match(r'\((\d+)\)(?: (.*))?', s)
    if m.group(2): names[m.group(1)] = m.group(2)
    return names.get(m.group(1), s)
for line in open(sys.argv[1]):
    if line.startswith('fn='): fn = name(line[3:].rstrip()); continue
    if line.startswith('cfn='): name(line[4:].rstrip()); continue
    if line.startswith('calls='): call = True; continue
    if line[:1].isdigit() or line[:1] in '+-*':
        if call: call = False; continue
        parts = line.split()
        if len(parts) >= 2 and fn: cost[fn] += int(parts[1])
n = int(sys.argv[2]); total = sum(cost.values())
print(f"{total / n:.0f} instructions per request ({n} requests)")
for f, c in cost.most_common(25):
    print(f"{c / n:8.0f} {100 * c / total:5.1f}%  {f[:120]}")
PY
