# Shared by the benchmark scripts, sourced from the repository root: `. benches/common.sh`.

# A free loopback TCP port.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits (at most 10 s) until the gateway whose admin listener is on 127.0.0.1:PORT is ready.
wait_ready() { # PORT
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$1/readyz" >/dev/null 2>&1 && return
    sleep 0.1
  done
}

# A scratch directory in $work, removed on exit after every process whose pid was added to the
# array `pids` has been stopped.
with_workdir() {
  work=$(mktemp -d)
  pids=()
  trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
}

# Runs a command in the background, at most two at once (the machine's two cores): after the
# second, waits for both. `wait` after the last call waits for the rest.
running=()
two_at_a_time() {
  "$@" &
  running+=($!)
  if [ ${#running[@]} -ge 2 ]; then wait "${running[@]}"; running=(); fi
}
