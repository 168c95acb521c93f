#!/usr/bin/env bash
# Regenerates docs/sim-results.md and docs/figures/*.{png,svg}: every scheduling policy on the three
# built-in workloads (chatbot, mbpp, thinky) at loads 0.5-0.9, LAPS-SD against the best non-oracle
# baseline and the oracle, the LAPS-SD ablations and variants, a few conditions at load 0.9, and
# the simulator's speed (100k requests under laps-sd).
#
# Usage: scripts/sim-results.sh [extra flags for the generator, e.g. --requests 5000]
# Takes ~10-15 minutes on 2 cores (release build included). Deterministic for a given --seed
# (default 1): only the speed line depends on the machine.
#
# It runs the simulator through the lapsd-sim examples, which execute exactly the code of
# `lapsd sim` (lapsd_sim::cli) without building the model engine and server; every table in the
# document prints the equivalent `lapsd sim` command.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p lapsd-sim --example sim --example sim_results

speed_cmd=(--workload chatbot --requests 100000 --load 0.8 --policy laps-sd --jobs 1)
echo "== speed run: lapsd sim ${speed_cmd[*]}" >&2
start=$(date +%s.%N)
target/release/examples/sim "${speed_cmd[@]}" >/dev/null
end=$(date +%s.%N)
wall=$(awk "BEGIN { print $end - $start }")

echo "== experiments" >&2
target/release/examples/sim_results \
  --out docs/sim-results.md \
  --figures docs/figures \
  --speed-wall-s "$wall" \
  --speed-command "lapsd sim ${speed_cmd[*]}" \
  "$@"
