#!/usr/bin/env bash
# Closes the loop between the simulator and the real server (issue 5): for every served run of
# scripts/compare-policies.sh, replay exactly the work the server did (arrival times, prompt
# tokens, the output tokens each request really produced, its measured SD counters: drafted and
# accepted tokens and verify steps, or the acceptance rate of older results) through
# `lapsd sim` with the cost profile `lapsd calibrate` measured on this machine, the server's
# batch/k/KV settings and the online length predictor, and compare the predicted mean end-to-end
# latency per policy with the served one. Writes <E2E_DIR>/sim-vs-serve.md.
# Usage: scripts/sim-vs-serve.sh E2E_DIR COST_PROFILE.json
#   (env: MAX_BATCH [8], K [4], KV_BUDGET [16384], MAX_STEP_TOKENS [2048], LAPSD)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
e2e="${1:?usage: scripts/sim-vs-serve.sh E2E_DIR COST_PROFILE.json}"
profile="${2:?usage: scripts/sim-vs-serve.sh E2E_DIR COST_PROFILE.json}"
LAPSD="${LAPSD:-target/release/lapsd}"
MAX_BATCH="${MAX_BATCH:-8}"
K="${K:-4}"
KV_BUDGET="${KV_BUDGET:-16384}"
MAX_STEP_TOKENS="${MAX_STEP_TOKENS:-2048}"
out="$e2e/sim-vs-serve.md"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
{
    echo "| workload | rate (req/s) | policy | served mean e2e (s) | simulated mean (s) | error |"
    echo "|---|---:|---|---:|---:|---:|"
} >"$out"
for dir in "$e2e"/*/; do
    workload="$(basename "$dir")"
    for served in "$dir"*_rate*.json; do
        [ -f "$served" ] || continue
        policy="$(jq -r .label "$served")"
        rate="$(jq -r .settings.rate_per_s "$served")"
        # Only lapsd's own runs (the label is the policy); a peer server (llama.cpp) has no sim.
        if ! "$LAPSD" sim --policy "$policy" --requests 1 --format json >/dev/null 2>&1; then
            echo "skipping $served: label $policy is not a lapsd policy" >&2
            continue
        fi
        # The work this run really did: failed requests are left out of both sides.
        trace="$tmp/${workload}_${policy}_${rate}.jsonl"
        # The server's SD counters (drafted, accepted, verify steps) when the run recorded them:
        # the sim then drafts what the drafter really proposed per step (prompt lookup drafts
        # fewer than k) and solves the per-token acceptance from them; else the served ratio.
        jq -c '.requests[] | select(.error == null) | {arrival_s, prompt_tokens,
            output_tokens: ([.output_tokens, 1] | max)} + (if .acceptance_rate == null then {}
            else {acceptance_rate: .acceptance_rate} end) + (if .verify_steps == null
            or .drafted_tokens == null or .accepted_tokens == null then {} else
            {drafted_tokens, accepted_tokens, verify_steps} end)' "$served" >"$trace"
        served_mean="$(jq '[.requests[] | select(.error == null) | .e2e_ms] | add / length / 1000' "$served")"
        sim_mean="$("$LAPSD" sim --trace "$trace" --policy "$policy" --cost-profile "$profile" \
            --max-batch "$MAX_BATCH" --speculation-length "$K" --kv-budget-tokens "$KV_BUDGET" \
            --max-step-tokens "$MAX_STEP_TOKENS" --predictor online --transient-steps 0 \
            --format json 2>/dev/null | jq '.results[0].mean_latency_s')"
        jq -rn --arg w "$workload" --arg p "$policy" --argjson r "$rate" --argjson s "$served_mean" \
            --argjson m "$sim_mean" \
            '"| \($w) | \($r) | \($p) | \($s*100|round/100) | \($m*100|round/100) | \((($m/$s)-1)*1000|round/10)% |"' >>"$out"
    done
done
cat "$out"
