#!/usr/bin/env bash
# The peer in the end-to-end comparison: llama.cpp's OpenAI-compatible server
# (llama-cpp-python, built from source, `python -m llama_cpp.server`) on the same GGUF file, same
# machine, same seeded `lapsd bench` workloads and rates as scripts/compare-policies.sh, with
# llama.cpp's prompt-lookup drafting (its counterpart of lapsd's default `ngram` draft, k = 4).
# Results go to <OUT_DIR>/<workload>/llama.cpp_rate<R>.json beside lapsd's, so the same summary
# and plots include it.
# Usage: LLAMA_PY=/path/to/venv/bin/python scripts/compare-llama-cpp.sh [OUT_DIR]
#   Install once: python3 -m venv V && V/bin/pip install cmake ninja && V/bin/pip install "llama-cpp-python[server]"
#   (on a CPU with AMX, llama.cpp's native build crashed here; docs/results/2026-11-29-engine.md
#   gives the CMAKE_ARGS of the build that works)
#   (env: RATES, WORKLOADS, REQUESTS, SEED, MAX_OUTPUT_TOKENS, PORT, THREADS, as compare-policies.sh;
#   BENCH_ARGS: extra `lapsd bench` flags. llama-cpp-python has no `ignore_eos`; to make it generate
#   exactly max_tokens as lapsd does with --ignore-eos, ban its end tokens instead, e.g. for SmolLM2
#   BENCH_ARGS='--extra-body {"logit_bias":{"0":-100,"2":-100}}')
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out_dir="${1:-results/e2e}"
LLAMA_PY="${LLAMA_PY:?set LLAMA_PY to a python with llama-cpp-python[server] installed}"
RATES="${RATES:-0.3 1.0}"
WORKLOADS="${WORKLOADS:-sharegpt mbpp}"
REQUESTS="${REQUESTS:-100}"
SEED="${SEED:-0}"
MAX_OUTPUT_TOKENS="${MAX_OUTPUT_TOKENS:-128}"
PORT="${PORT:-18081}"
THREADS="${THREADS:-$(nproc)}"
MODEL="${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}"
LAPSD="${LAPSD:-target/release/lapsd}"
BENCH_ARGS="${BENCH_ARGS:-}"
url="http://127.0.0.1:$PORT"
# shellcheck source=scripts/e2e-common.sh
source scripts/e2e-common.sh

trap stop_server EXIT INT TERM

for workload in $WORKLOADS; do
    flags="$(workload_flags "$workload")"
    mkdir -p "$out_dir/$workload/logs"
    log="$out_dir/$workload/logs/serve_llama.cpp.log"
    "$LLAMA_PY" -m llama_cpp.server --model "$MODEL" --host 127.0.0.1 --port "$PORT" \
        --n_threads "$THREADS" --n_threads_batch "$THREADS" --n_ctx 2048 --interrupt_requests False \
        --draft_model prompt-lookup-decoding --draft_model_num_pred_tokens 4 >"$log" 2>&1 &
    # --interrupt_requests False: by default llama_cpp.server aborts the running request when a new
    # one arrives, which under open-loop load cuts most streams short (they still end "ok").
    server_pid=$!
    for _ in $(seq 1 300); do
        curl -sf "$url/v1/models" >/dev/null 2>&1 && break
        kill -0 "$server_pid" 2>/dev/null || { echo "llama_cpp.server died; see $log" >&2; exit 1; }
        sleep 1
    done
    for rate in $RATES; do
        result="$out_dir/$workload/llama.cpp_rate${rate}.json"
        echo "== $workload / llama.cpp: rate $rate req/s -> $result"
        # shellcheck disable=SC2086
        "$LAPSD" bench --url "$url" $flags --rate "$rate" --requests "$REQUESTS" --seed "$SEED" \
            --max-output-tokens "$MAX_OUTPUT_TOKENS" --label llama.cpp --out "$result" --no-progress $BENCH_ARGS \
            | tee "$out_dir/$workload/logs/bench_llama.cpp_rate${rate}.txt"
    done
    stop_server
done
