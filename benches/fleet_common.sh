# Shared by the fleet benchmarks (sourced): offering a workload at a chosen rate, and the
# capacity search that sets those rates. Uses $BIN, $FLEET and $OUT of the sourcing script.

offered_flags() { # source rate-at-scale-1 target-rate window -> flags offering target-rate
  if [ "$2" = GEN ]; then
    echo "$1 --rate $3 --duration $4"
  else
    echo "$1 --time-scale $(python3 -c "print($2 / $3)") --window $4"
  fi
}

capacity() { # name source rate extra -> prints requests/s
  local offered=2 flags result
  while :; do
    flags=$(offered_flags "$2" "$3" "$offered" 300s)
    # shellcheck disable=SC2086
    $BIN simulate $FLEET $4 $flags --routing least-request --quiet --tail 30m --out "$OUT/$1-capacity" >/dev/null
    result=$(python3 - "$OUT/$1-capacity/report.json" "$offered" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
r, span = report["runs"][0], report["workload"]["span_seconds"]
# Completions while requests still arrive: once arrivals stop, a backlog drains in big
# batches, faster than the fleet serves a steady stream (a trace that arrives in seconds would
# otherwise measure that drain, not capacity).
during = [s["completion_rate"] for s in r["timeline"] if s["t"] <= span]
served = sum(during) / len(during) if during else r["completed"] / r["duration"]
behind = r["completed"] < 0.97 * r["requests"] or r["ttft"]["p50"] > 5.0
print(f"{served:.3f} {'behind' if behind else 'keeps-up'}")
PY
)
    if [ "${result#* }" = behind ] || [ "$offered" -ge 1024 ]; then
      echo "${result% *}"
      return
    fi
    offered=$((offered * 2))
  done
}

