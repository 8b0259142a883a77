#!/usr/bin/env bash
# Canary rollouts replayed by the fleet simulation: each config of benches/fleet/rollout-*.yaml
# (a canary that fails a fifth of its requests, one at half speed, one a quarter faster; plan:
# 10 % for 60 s, then 50 % for 60 s, judged on error rate ≤ 5 % and TTFT p90 ≤ 1.5x the
# stable's after 20 answers) under Poisson traffic at RATE requests/s, for several seeds. Prints
# each run's steps and verdicts with their virtual time, and the requests clients saw fail.
#
#   benches/fleet_rollout.sh        (RATE=10, SEEDS="1 2 3"; seconds of wall time)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q
bin=${CARGO_TARGET_DIR:-target}/release/infergate
for config in benches/fleet/rollout-*.yaml; do
  for seed in ${SEEDS:-1 2 3}; do
    echo "== $(basename "$config" .yaml), seed $seed"
    "$bin" simulate -c "$config" --model chat --rate "${RATE:-10}" --duration 240s --seed "$seed" \
      --quiet | awk '/^rollout/{on=1; next} on && NF{print} /^as configured/{print "   failed: " $NF}'
  done
done
