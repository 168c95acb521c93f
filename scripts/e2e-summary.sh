#!/usr/bin/env bash
# Summary table (markdown) of every `lapsd bench` result under an end-to-end results folder
# (scripts/compare-policies.sh, scripts/compare-llama-cpp.sh): per workload, label and rate, mean /
# p99 end-to-end latency and TTFT, throughput, and the change in mean latency against `fcfs` at the
# same rate. Writes <OUT_DIR>/summary.md and prints it.
# Usage: scripts/e2e-summary.sh [OUT_DIR]   (default: results/e2e)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out_dir="${1:-results/e2e}"
summary="$out_dir/summary.md"
{
    echo "| workload | server / policy | rate (req/s) | ok | failed | mean e2e (s) | vs fcfs | p99 e2e (s) | mean TTFT (s) | p99 TTFT (s) | output tok/s |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for dir in "$out_dir"/*/; do
        workload="$(basename "$dir")"
        compgen -G "$dir*_rate*.json" >/dev/null || continue
        jq -s -r --arg w "$workload" '
            def r2: if type == "number" then (. * 100 | round / 100) else "n/a" end;
            (map(select(.label == "fcfs")) | map({key: (.settings.rate_per_s | tostring), value: .e2e.mean_ms}) | from_entries) as $fcfs
            | sort_by(.settings.rate_per_s, .e2e.mean_ms)[]
            | ($fcfs[.settings.rate_per_s | tostring]) as $base
            | [ $w, .label, (.settings.rate_per_s | tostring), (.completed | tostring), (.failed | tostring),
                ((.e2e.mean_ms // null) | if . then ./1000 else . end | r2),
                (if $base and .e2e.mean_ms then (((.e2e.mean_ms / $base) - 1) * 1000 | round / 10 | tostring) + "%" else "" end),
                ((.e2e.p99_ms // null) | if . then ./1000 else . end | r2),
                ((.ttft.mean_ms // null) | if . then ./1000 else . end | r2),
                ((.ttft.p99_ms // null) | if . then ./1000 else . end | r2),
                (.output_throughput_tokens_per_s * 10 | round / 10 | tostring) ]
            | "| " + join(" | ") + " |"' "$dir"*_rate*.json
    done
} >"$summary"
cat "$summary"
