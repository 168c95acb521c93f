#!/usr/bin/env bash
# Checks that a refactoring left the simulator's output unchanged: runs the same fixed-seed
# simulations with two lapsd binaries and compares their CSV output byte for byte.
#
# Usage: scripts/sim-identical.sh OLD_LAPSD NEW_LAPSD
# e.g. build the old commit in a worktree (git worktree add /tmp/old HEAD~1 && cargo build
# --release -p lapsd --manifest-path /tmp/old/Cargo.toml), then
# scripts/sim-identical.sh /tmp/old/target/release/lapsd target/release/lapsd
# Exit status: 0 when every case is identical, 1 otherwise (the differing cases are named).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -ne 2 ] || [ ! -x "$1" ] || [ ! -x "$2" ]; then
    echo "usage: $0 OLD_LAPSD NEW_LAPSD (two executable lapsd binaries)" >&2
    exit 2
fi
old="$1"
new="$2"
# Every policy on each case: the defaults, batch 1 with the online predictor, a GPU-shaped
# profile with marginal formation, bursty arrivals with automatic speculation length, replicas.
cases=(
    ""
    "--workload mbpp --max-batch 1 --load 0.9 --requests 2000 --predictor online"
    "--workload heavy-tail --load 0.8 --requests 2000 --cost-profile profiles/gpu-a100-7b-shaped.json --batch-formation marginal"
    "--workload thinky --load 0.7 --requests 1000 --burstiness 4 --speculation-mode auto --fcfs-slack 3 --max-wait-factor 100"
    "--workload chatbot --load 0.8 --requests 2000 --replicas 4 --dispatch jsq,power-of-two"
)
status=0
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
for args in "${cases[@]}"; do
    # shellcheck disable=SC2086 # the case's flags are meant to split
    "$old" sim $args --format csv >"$tmp/old.csv" 2>"$tmp/old.err" || { cat "$tmp/old.err" >&2; echo "FAILED (old): lapsd sim $args"; exit 1; }
    # shellcheck disable=SC2086
    "$new" sim $args --format csv >"$tmp/new.csv" 2>"$tmp/new.err" || { cat "$tmp/new.err" >&2; echo "FAILED (new): lapsd sim $args"; exit 1; }
    if [ ! -s "$tmp/new.csv" ]; then
        echo "EMPTY output: lapsd sim $args"
        status=1
    elif cmp -s "$tmp/old.csv" "$tmp/new.csv"; then
        echo "identical ($(wc -l <"$tmp/new.csv") lines): lapsd sim $args"
    else
        echo "DIFFERENT: lapsd sim $args"
        status=1
    fi
done
exit "$status"
