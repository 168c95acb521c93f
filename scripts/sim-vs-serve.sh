#!/usr/bin/env bash
# Closes the loop between the simulator and the real server: for every served run of
# scripts/compare-policies.sh, replay exactly the work the server did (arrival times, prompt
# tokens (the server's count when recorded), the output tokens each request really produced, its
# measured SD counters: drafted and
# accepted tokens and verify steps, or the acceptance rate of older results) through
# `lapsd sim` with the cost profile `lapsd calibrate` measured on this machine, the server's
# batch/k/KV settings and the online length predictor (plus, when the server ran with
# `--length-model`, each request's text prediction as the server made it), and compare the predicted mean end-to-end
# latency per policy with the served one: as the client measured it, and as the server did
# (`server_e2e_ms`: from admission, without HTTP, tokenization and the client). Writes
# <E2E_DIR>/sim-vs-serve.md.
# Usage: scripts/sim-vs-serve.sh E2E_DIR COST_PROFILE.json
#   (env: MAX_BATCH [8], K [4], KV_BUDGET [16384], MAX_STEP_TOKENS [2048], LAPSD,
#    STEP_TIME [measured] (`lapsd sim --step-time`),
#    POLICY_COST: the cost profile the servers were started with (`lapsd serve --cost-profile`):
#    the simulated policies then estimate with it, as the served ones did, while COST_PROFILE
#    times the steps (`lapsd sim --policy-cost-profile`); default: COST_PROFILE for both,
#    COUNTERS_FROM: another E2E_DIR of the same seeded workload whose runs recorded the SD
#    counters and the server's prompt token counts, for older runs that did not: greedy
#    decoding makes the tokens, hence the counters, the same under every policy and run;
#    arrival times are checked to match)
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
STEP_TIME="${STEP_TIME:-measured}"
POLICY_COST="${POLICY_COST:-}"
# The bounds `lapsd serve` adds to every policy by default (its tail bound and starvation
# bound); set to match the served runs' SERVE_ARGS if those changed them ("" for none).
SERVER_POLICY_FLAGS="${SERVER_POLICY_FLAGS:---fcfs-slack 3 --max-wait-factor 100}"
read -r -a server_policy_flags <<<"$SERVER_POLICY_FLAGS"
policy_cost_flag=()
if [ -n "$POLICY_COST" ]; then
    policy_cost_flag=(--policy-cost-profile "$POLICY_COST")
fi
COUNTERS_FROM="${COUNTERS_FROM:-}"
out="$e2e/sim-vs-serve.md"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
{
    echo "| workload | rate (req/s) | policy | served mean e2e (s) | server-side mean e2e (s) | simulated mean (s) | error vs served | error vs server-side |"
    echo "|---|---:|---|---:|---:|---:|---:|---:|"
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
        source_json="$served"
        if [ -n "$COUNTERS_FROM" ] && [ "$(jq '[.requests[] | .verify_steps, .server_prompt_tokens]
                | any(. == null)' "$served")" = true ]; then
            donor="$(ls "$COUNTERS_FROM/$workload/"*_rate"$rate".json 2>/dev/null | head -1 || true)"
            if [ -n "$donor" ]; then
                source_json="$tmp/merged.json"
                # Only the fields the run lacks are taken from the donor.
                jq --slurpfile d "$donor" '
                    if ([.requests[].arrival_s] != [$d[0].requests[].arrival_s]) then
                        error("arrival times differ from the counters donor") else . end
                    | .requests = [.requests | to_entries[] | .value as $v
                        | ($d[0].requests[.key] | {drafted_tokens, accepted_tokens, verify_steps,
                            server_prompt_tokens}) as $b
                        | $v + ($b | with_entries(select($v[.key] == null)))]' "$served" >"$source_json"
            fi
        fi
        # The server's SD counters (drafted, accepted, verify steps) when the run recorded them:
        # the sim then drafts what the drafter really proposed per step (prompt lookup drafts
        # fewer than k) and solves the per-token acceptance from them; else the served ratio.
        jq -c '.requests[] | select(.error == null) | {arrival_s,
            prompt_tokens: (.server_prompt_tokens // .prompt_tokens),
            output_tokens: ([.output_tokens, 1] | max)} + (if .acceptance_rate == null then {}
            else {acceptance_rate: .acceptance_rate} end) + (if .verify_steps == null
            or .drafted_tokens == null or .accepted_tokens == null then {} else
            {drafted_tokens, accepted_tokens, verify_steps} end)
            + (if .predicted_output_tokens == null then {} else {predicted_output_tokens} end)' \
            "$source_json" >"$trace"
        served_mean="$(jq '[.requests[] | select(.error == null) | .e2e_ms] | add / length / 1000' "$served")"
        server_mean="$(jq '[.requests[] | select(.error == null) | .server_e2e_ms // empty]
            | if length == 0 then null else add / length / 1000 end' "$served")"
        sim_mean="$("$LAPSD" sim --trace "$trace" --policy "$policy" --cost-profile "$profile" \
            --max-batch "$MAX_BATCH" --speculation-length "$K" --kv-budget-tokens "$KV_BUDGET" \
            --max-step-tokens "$MAX_STEP_TOKENS" --predictor online --transient-steps 0 \
            --step-time "$STEP_TIME" "${policy_cost_flag[@]}" "${server_policy_flags[@]}" \
            --format json 2>/dev/null | jq '.results[0].mean_latency_s')"
        jq -rn --arg w "$workload" --arg p "$policy" --argjson r "$rate" --argjson s "$served_mean" \
            --argjson v "$server_mean" --argjson m "$sim_mean" \
            'def pct(a; b): if b == null then "n/a" else "\(((a/b)-1)*1000|round/10)%" end;
             def sec(x): if x == null then "n/a" else "\(x*100|round/100)" end;
             "| \($w) | \($r) | \($p) | \(sec($s)) | \(sec($v)) | \(sec($m)) | \(pct($m; $s)) | \(pct($m; $v)) |"' >>"$out"
    done
done
cat "$out"
