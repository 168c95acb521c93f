#!/usr/bin/env bash
# End-to-end policy comparison on the real server: for each scheduling policy, start
# `lapsd serve --policy P` on the embedded default model, wait for /health, run the same seeded
# `lapsd bench` workload at each rate, stop the server (SIGTERM, graceful drain), and collect the
# JSON results under results/e2e/<workload>/; then draw mean/p99 latency vs rate (one line per
# policy) and write a summary table (results/e2e/summary.md).
#
# Usage: scripts/compare-policies.sh [OUT_DIR]        (default: results/e2e)
# Environment (defaults in brackets):
#   POLICIES   policies to compare, as `lapsd serve --policy` takes them (settings in brackets:
#              "gittins laps-sd[las-phase=false,batch-formation=marginal]")
#                                             ["fcfs las mlfq srpt trail laps-sd gittins"]
#   RATES      request rates, req/s           ["0.3 1.0"]  (the second should build a queue)
#   WORKLOADS  sharegpt and/or mbpp           ["sharegpt mbpp"]
#   REQUESTS   requests per run               [100]
#   SEED       workload seed                  [0]
#   MAX_OUTPUT_TOKENS  cap on max_tokens      [128]
#   PORT       server port                    [18080]
#   AGING      starvation-bound flags for the server ["", the server's default: relative
#              bound --max-wait-factor 100]; e.g. "--max-wait-factor 0" for none. A policy's own
#              `[max-wait-factor=...]` / `[max-wait-s=...]` wins
#   SERVE_ARGS extra `lapsd serve` flags      [""]
#   BENCH_ARGS extra `lapsd bench` flags      [""]
#   LAPSD      the binary                     [target/release/lapsd]
#   HEALTH_TIMEOUT_S  wait for /health        [300]
# Build first: cargo build --release -p lapsd; models: scripts/fetch-models.sh; data:
# scripts/fetch-datasets.sh (run here if data/ lacks ShareGPT).
# Time: each run lasts about REQUESTS/RATE seconds plus the drain, so the defaults take roughly
# 2 workloads x 6 policies x (333 s + 100 s) ~ 1.5 hours on 2 cores.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out_dir="${1:-results/e2e}"
POLICIES="${POLICIES:-fcfs las mlfq srpt trail laps-sd gittins}"
RATES="${RATES:-0.3 1.0}"
WORKLOADS="${WORKLOADS:-sharegpt mbpp}"
REQUESTS="${REQUESTS:-100}"
SEED="${SEED:-0}"
MAX_OUTPUT_TOKENS="${MAX_OUTPUT_TOKENS:-128}"
PORT="${PORT:-18080}"
AGING="${AGING:-}"
SERVE_ARGS="${SERVE_ARGS:-}"
BENCH_ARGS="${BENCH_ARGS:-}"
LAPSD="${LAPSD:-target/release/lapsd}"
HEALTH_TIMEOUT_S="${HEALTH_TIMEOUT_S:-300}"
url="http://127.0.0.1:$PORT"
# shellcheck source=scripts/e2e-common.sh
source scripts/e2e-common.sh

if [ ! -x "$LAPSD" ]; then
    echo "error: $LAPSD not found; build it with: cargo build --release -p lapsd" >&2
    exit 1
fi
if [[ " $WORKLOADS " == *" sharegpt "* ]] && [ ! -f "$sharegpt" ]; then
    scripts/fetch-datasets.sh
fi
if curl -sf "$url/health" >/dev/null 2>&1; then
    echo "error: something already answers on $url; set PORT" >&2
    exit 1
fi

trap stop_server EXIT INT TERM

for workload in $WORKLOADS; do
    mkdir -p "$out_dir/$workload/logs"
    flags="$(workload_flags "$workload")"
    # The simulator's view of exactly this work, one trace per rate (same prompts, same arrivals).
    for rate in $RATES; do
        # shellcheck disable=SC2086
        "$LAPSD" bench $flags --rate "$rate" --requests "$REQUESTS" --seed "$SEED" \
            --max-output-tokens "$MAX_OUTPUT_TOKENS" --dry-run $BENCH_ARGS \
            --emit-sim-trace "$out_dir/$workload/sim-trace_rate${rate}.jsonl"
    done
    for spec in $POLICIES; do
        # File names: the spec with its brackets and settings spelled with '_' and '-'.
        policy="$(printf '%s' "$spec" | tr '[],=' '__-_' | sed 's/_*$//')"
        log="$out_dir/$workload/logs/serve_${policy}.log"
        echo "== $workload / $policy: starting lapsd serve (log: $log)"
        # shellcheck disable=SC2086
        # Every engine step goes to a step log (the in-situ costs `lapsd calibrate
        # --from-step-log` fits, for scripts/sim-vs-serve.sh).
        steps_log="$out_dir/$workload/logs/steps_${policy}.jsonl"
        rm -f "$steps_log"
        "$LAPSD" serve --policy "$spec" --port "$PORT" $AGING --step-log "$steps_log" \
            $SERVE_ARGS >"$log" 2>&1 &
        server_pid=$!
        wait_for_health "$url" "$server_pid" "$log" "$HEALTH_TIMEOUT_S"
        for rate in $RATES; do
            result="$out_dir/$workload/${policy}_rate${rate}.json"
            echo "   rate $rate req/s -> $result"
            # shellcheck disable=SC2086
            "$LAPSD" bench --url "$url" $flags --rate "$rate" --requests "$REQUESTS" --seed "$SEED" \
                --max-output-tokens "$MAX_OUTPUT_TOKENS" --label "$spec" --out "$result" \
                --no-progress $BENCH_ARGS | tee "$out_dir/$workload/logs/bench_${policy}_rate${rate}.txt"
        done
        stop_server
    done
    "$LAPSD" bench plot --inputs "$out_dir/$workload"/*_rate*.json --out "$out_dir/$workload/plots"
done

# Summary table (markdown) of every run under OUT_DIR: the same table scripts/e2e-summary.sh writes.
scripts/e2e-summary.sh "$out_dir"
echo "plots: $out_dir/<workload>/plots/; sim traces: $out_dir/<workload>/sim-trace_rate*.jsonl"
