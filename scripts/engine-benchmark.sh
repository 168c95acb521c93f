#!/usr/bin/env bash
# Engine benchmark, side by side in one run on this machine; writes
# results/engine-benchmark/{lapsd-generate.jsonl,calibrate-*.json,llama-cpp.jsonl} and prints a
# summary. Not a test: timings depend on the machine and its load; run it on a quiet machine.
#   1. target-only greedy decode tokens/s at batch 1 (`lapsd generate --draft none -k 0`), three
#      prompts (code written from scratch, a code edit that repeats its input, chat), RUNS runs
#      each (the median is reported);
#   2. the same prompts with each draft method in DRAFTS at k = 4: acceptance and speed-up;
#   3. aggregate decode tokens/s at batch 1..8 from `lapsd calibrate` (target verify step, k = 0);
#   4. llama.cpp (llama-cpp-python, built from source) on the same GGUF, same prompts, batch 1,
#      when LLAMA_PY (a python with llama_cpp) is set.
# Usage: scripts/engine-benchmark.sh   (env: MODEL, DRAFTS, RUNS, MAX_TOKENS, LLAMA_PY, OUT;
#   CALIBRATE=0 skips step 3, which takes many minutes on a 1.5B model on 2 cores)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
LAPSD="${LAPSD:-target/release/lapsd}"
MODEL="${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}"
DRAFTS="${DRAFTS:-ngram:3 self:8 self:16}"
RUNS="${RUNS:-3}"
MAX_TOKENS="${MAX_TOKENS:-96}"
OUT="${OUT:-results/engine-benchmark/$(basename "$MODEL" .gguf)}"
THREADS="${THREADS:-$(nproc)}"
mkdir -p "$OUT"
# The prompts (scripts/engine-prompts.json, shared with the llama.cpp scripts): code written from
# scratch; a code edit whose answer repeats most of the prompt (what prompt lookup is made for);
# chat.
CODE="$(jq -r '.code' scripts/engine-prompts.json)"
EDIT="$(jq -r '."code-edit"' scripts/engine-prompts.json)"
CHAT="$(jq -r '.chat' scripts/engine-prompts.json)"

gen_jsonl="$OUT/lapsd-generate.jsonl"
: >"$gen_jsonl"
run_generate() { # DRAFT K PROMPT_NAME PROMPT
    local out rate acc
    out="$("$LAPSD" generate --model "$MODEL" --draft "$1" -k "$2" --max-tokens "$MAX_TOKENS" --chat --prompt "$4")"
    rate="$(grep -o 'then [0-9.]* tokens/s' <<<"$out" | grep -o '[0-9.]*')"
    acc="$(grep -o 'acceptance rate [0-9.]*' <<<"$out" | grep -o '[0-9.]*$' || echo null)"
    mal="$(grep -o 'mean accepted length [0-9.]*' <<<"$out" | grep -o '[0-9.]*$' || echo null)"
    echo "{\"draft\":\"$1\",\"k\":$2,\"prompt\":\"$3\",\"decode_tokens_per_s\":$rate,\"acceptance_rate\":${acc:-null},\"mean_accepted_length\":${mal:-null}}" | tee -a "$gen_jsonl"
}
for run in $(seq 1 "$RUNS"); do
    # Interleave methods inside each run so that load drift hits them alike.
    run_generate none 0 code "$CODE"
    run_generate none 0 code-edit "$EDIT"
    run_generate none 0 chat "$CHAT"
    for d in $DRAFTS; do
        run_generate "$d" 4 code "$CODE"
        run_generate "$d" 4 code-edit "$EDIT"
        run_generate "$d" 4 chat "$CHAT"
    done
done

if [ "${CALIBRATE:-1}" != 0 ]; then
    "$LAPSD" calibrate --model "$MODEL" --draft none --max-batch 8 --max-k 0 --repeats 5 \
        --out "$OUT/calibrate-target.json"
fi

if [ -n "${LLAMA_PY:-}" ]; then
    "$LLAMA_PY" scripts/llama_cpp_bench.py "$MODEL" "$THREADS" "$MAX_TOKENS" "$RUNS" | tee "$OUT/llama-cpp.jsonl"
fi

echo "== medians ($RUNS runs, $MAX_TOKENS new tokens, greedy, chat template)"
jq -rs 'group_by([.draft,.prompt]) | map({draft: .[0].draft, prompt: .[0].prompt,
      tps: (map(.decode_tokens_per_s) | sort | .[length/2|floor]),
      acc: .[0].acceptance_rate, mal: .[0].mean_accepted_length}) as $rows
    | ($rows | map(select(.draft=="none")) | map({key: .prompt, value: .tps}) | from_entries) as $base
    | $rows[] | "\(.draft)\t\(.prompt)\tdecode \(.tps*10|round/10) tok/s\tspeed-up \((.tps/$base[.prompt])*100|round/100)x\tacceptance \(.acc)\tmean accepted \(.mal)"' "$gen_jsonl"
if [ -f "$OUT/calibrate-target.json" ]; then
    echo "== aggregate target-only decode (calibrate, k = 0): batch, tokens/s"
    jq -r '.samples[] | select(.k==0) | "\(.batch)\t\((.batch/.verify_s)*10|round/10)"' "$OUT/calibrate-target.json"
fi
if [ -f "$OUT/llama-cpp.jsonl" ]; then
    echo "== llama.cpp batch-1 decode tokens/s (median)"
    jq -rs 'group_by(.prompt)[] | "\(.[0].prompt)\t\((map(.decode_tokens_per_s)|sort|.[length/2|floor])*10|round/10)"' "$OUT/llama-cpp.jsonl"
fi
