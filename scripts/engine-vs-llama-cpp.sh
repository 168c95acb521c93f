#!/usr/bin/env bash
# Batch-1 target-only decode, lapsd against llama.cpp, side by side: for each
# repeat, `lapsd generate --draft none` on the three prompts of scripts/engine-benchmark.sh, then
# scripts/llama_cpp_bench.py on the same GGUF and prompts (one run). Writes
# results/engine-benchmark/<model>/side-lapsd.jsonl and side-llama-cpp.jsonl and prints medians.
# Not a test: run it on a quiet machine.
# Usage: LLAMA_PY=/path/to/python scripts/engine-vs-llama-cpp.sh MODEL.gguf [MAX_TOKENS] [RUNS]
#   llama-cpp-python: python3 -m venv V && V/bin/pip install cmake ninja && CMAKE_ARGS="..."
#   V/bin/pip install "llama-cpp-python[server]==0.3.36" (docs/engine-benchmark.md gives the
#   CMAKE_ARGS: llama.cpp's native build crashed on an AMX machine, and a build that assumes
#   AVX-VNNI crashes on AMD EPYC, which has AVX-512 VNNI only).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
LAPSD="${LAPSD:-target/release/lapsd}"
LLAMA_PY="${LLAMA_PY:?set LLAMA_PY to a python with llama-cpp-python installed}"
MODEL="${1:?usage: scripts/engine-vs-llama-cpp.sh MODEL.gguf [MAX_TOKENS] [RUNS]}"
MAX_TOKENS="${2:-96}"
RUNS="${3:-3}"
THREADS="${THREADS:-$(nproc)}"
OUT="${OUT:-results/engine-benchmark/$(basename "$MODEL" .gguf)}"
mkdir -p "$OUT"
: >"$OUT/side-lapsd.jsonl"
: >"$OUT/side-llama-cpp.jsonl"
for _ in $(seq 1 "$RUNS"); do
    for name in code code-edit chat; do
        rate="$("$LAPSD" generate --model "$MODEL" --draft none -k 0 --max-tokens "$MAX_TOKENS" --chat \
            --prompt "$(jq -r --arg p "$name" '.[$p]' scripts/engine-prompts.json)" 2>/dev/null | grep -o 'then [0-9.]* tokens/s' | grep -o '[0-9.]*')"
        echo "{\"prompt\":\"$name\",\"decode_tokens_per_s\":$rate}" | tee -a "$OUT/side-lapsd.jsonl"
    done
    "$LLAMA_PY" scripts/llama_cpp_bench.py "$MODEL" "$THREADS" "$MAX_TOKENS" 1 | tee -a "$OUT/side-llama-cpp.jsonl"
done
echo "== batch-1 decode tokens/s, medians of $RUNS: prompt, lapsd, llama.cpp, ratio"
jq -rn --slurpfile a "$OUT/side-lapsd.jsonl" --slurpfile b "$OUT/side-llama-cpp.jsonl" '
    def med(xs): xs | sort | .[length/2|floor];
    ["code","code-edit","chat"][] as $p
    | med([$a[] | select(.prompt==$p) | .decode_tokens_per_s]) as $x
    | med([$b[] | select(.prompt==$p) | .decode_tokens_per_s]) as $y
    | "\($p)\t\($x)\t\($y*10|round/10)\t\(($x/$y)*100|round/100)x"'
