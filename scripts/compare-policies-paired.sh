#!/usr/bin/env bash
# Paired end-to-end comparison of two scheduling policies on the real server, built for a noisy
# machine: both servers run AT THE SAME TIME, each pinned to its own CPU core, and receive the
# same seeded workload at the same moment; then they swap cores and which one starts first, and
# the pair runs again. A machine that speeds up or slows down (other tenants, thermal limits)
# does so for both sides of a pair, and the swap cancels a difference between the two cores or
# between starting first and second. One server per policy on all
# cores, run one after the other, cannot rank policies here: identical runs minutes apart
# differed by 20-40% in machine speed (docs/scheduling.md, "Served").
#
# Usage: scripts/compare-policies-paired.sh [OUT_DIR]     (default: results/paired)
# Environment (defaults in brackets):
#   POLICY_A, POLICY_B  the two `lapsd serve --policy` values      [fcfs, gittins]
#   FLAGS_A, FLAGS_B    extra `lapsd serve` flags of each side     ["--fcfs-slack 0
#                       --max-wait-factor 0" for A (no bounds: plain FCFS), "" for B (the
#                       server's defaults)]
#   RATES      request rates in req/s, per server (one core each)  ["0.3 0.36"]
#   SEEDS      workload seeds                                      ["2 3"]
#   REQUESTS   requests per run                                    [200]
#   WORKLOAD   sharegpt, mbpp, code-edit or mixed (half code-edit,  [sharegpt]
#              half chatbot)
#   MAX_OUTPUT_TOKENS                                              [128]
#   SERVE_ARGS extra flags for both servers                        [""]
#   BENCH_ARGS extra `lapsd bench` flags                           ["--ignore-eos --output-scale
#                                                                   0.125"]
#   CORES      the two CPU cores                                   ["0 1"]
#   PORT       first port (the second is PORT + 1)                 [18180]
#   LAPSD      the binary                                          [target/release/lapsd]
# Needs taskset (util-linux) and python3. Build first: cargo build --release -p lapsd; models:
# scripts/fetch-models.sh; data: scripts/fetch-datasets.sh (run here if data/ lacks ShareGPT).
# Time: each run lasts about REQUESTS/RATE seconds plus the drain, twice per (seed, rate):
# the defaults take about 2 seeds x 2 rates x 2 x 10 min ~ 80 minutes.
# Output: OUT_DIR/seed<S>/rate<R>/<A-core>-<B-core>/{a,b}.json (lapsd bench results), server
# logs and step logs beside them, and OUT_DIR/summary.md: per run each side's busy fraction
# (time in engine steps over the run's duration: where the run really was in load), the two
# means, p99s and the ratio B/A, and the geometric mean of B/A over all runs.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out_dir="${1:-results/paired}"
POLICY_A="${POLICY_A:-fcfs}"
POLICY_B="${POLICY_B:-gittins}"
FLAGS_A="${FLAGS_A---fcfs-slack 0 --max-wait-factor 0}"
FLAGS_B="${FLAGS_B:-}"
RATES="${RATES:-0.3 0.36}"
SEEDS="${SEEDS:-2 3}"
REQUESTS="${REQUESTS:-200}"
WORKLOAD="${WORKLOAD:-sharegpt}"
MAX_OUTPUT_TOKENS="${MAX_OUTPUT_TOKENS:-128}"
SERVE_ARGS="${SERVE_ARGS:-}"
BENCH_ARGS="${BENCH_ARGS:---ignore-eos --output-scale 0.125}"
CORES="${CORES:-0 1}"
PORT="${PORT:-18180}"
LAPSD="${LAPSD:-target/release/lapsd}"
# shellcheck source=scripts/e2e-common.sh
source scripts/e2e-common.sh

read -r core_1 core_2 <<<"$CORES"
if [ -z "${core_2:-}" ]; then
    echo "error: CORES must name two CPU cores, got '$CORES'" >&2
    exit 1
fi
for tool in taskset python3 curl; do
    command -v "$tool" >/dev/null || { echo "error: $tool not found" >&2; exit 1; }
done
if [ ! -x "$LAPSD" ]; then
    echo "error: $LAPSD not found; build it with: cargo build --release -p lapsd" >&2
    exit 1
fi
if [ "$WORKLOAD" = sharegpt ] && [ ! -f "$sharegpt" ]; then
    scripts/fetch-datasets.sh
fi
flags="$(workload_flags "$WORKLOAD")"

pids=()
stop_all() {
    for pid in "${pids[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid"
            wait "$pid" || true
        fi
    done
    pids=()
}
trap stop_all EXIT INT TERM

# One server per side, pinned with its client to one core; one kernel thread each (lapsd caps
# candle's pools at the affinity mask; RAYON_NUM_THREADS makes it explicit).
start_server() { # CORE PORT POLICY FLAGS LOG STEP_LOG
    rm -f "$6"
    # shellcheck disable=SC2086
    RAYON_NUM_THREADS=1 taskset -c "$1" "$LAPSD" serve --policy "$3" --port "$2" $4 \
        --step-log "$6" $SERVE_ARGS >"$5" 2>&1 &
    pids+=("$!")
    wait_for_health "http://127.0.0.1:$2" "$!" "$5" 300
}

run_bench() { # CORE PORT SEED RATE LABEL OUT
    # shellcheck disable=SC2086
    taskset -c "$1" "$LAPSD" bench --url "http://127.0.0.1:$2" $flags --rate "$4" \
        --requests "$REQUESTS" --seed "$3" --max-output-tokens "$MAX_OUTPUT_TOKENS" \
        --label "$5" --out "$6" --no-progress $BENCH_ARGS >"${6%.json}.txt"
}

for seed in $SEEDS; do
    for rate in $RATES; do
        for arrangement in "$core_1 $core_2" "$core_2 $core_1"; do
            read -r core_a core_b <<<"$arrangement"
            dir="$out_dir/seed$seed/rate$rate/$core_a-$core_b"
            mkdir -p "$dir"
            echo "== seed $seed, $rate req/s: $POLICY_A on core $core_a, $POLICY_B on core $core_b"
            # The server started second ran ~6% faster through a whole run (the Qwen2.5-Coder
            # pair, both sides the same settings: 0.943 and 0.933 in the two arrangements), so
            # the second arrangement also swaps the start order (then 0.920 and 1.101).
            order="a b"
            [ "$core_a" = "$core_1" ] || order="b a"
            for side in $order; do
                if [ "$side" = a ]; then
                    start_server "$core_a" "$PORT" "$POLICY_A" "$FLAGS_A" "$dir/serve-a.log" \
                        "$dir/steps-a.jsonl"
                else
                    start_server "$core_b" "$((PORT + 1))" "$POLICY_B" "$FLAGS_B" \
                        "$dir/serve-b.log" "$dir/steps-b.jsonl"
                fi
            done
            run_bench "$core_a" "$PORT" "$seed" "$rate" "$POLICY_A" "$dir/a.json" &
            bench_a=$!
            run_bench "$core_b" "$((PORT + 1))" "$seed" "$rate" "$POLICY_B" "$dir/b.json" &
            bench_b=$!
            wait "$bench_a"
            wait "$bench_b"
            stop_all
        done
    done
done

python3 - "$out_dir" "$POLICY_A $FLAGS_A" "$POLICY_B $FLAGS_B" <<'EOF' | tee "$out_dir/summary.md"
import json, math, pathlib, sys

out, label_a, label_b = pathlib.Path(sys.argv[1]), sys.argv[2].strip(), sys.argv[3].strip()
print(f"A = `{label_a}`, B = `{label_b}`; each row is one pair run at the same time on two cores.\n")
print("| seed | rate (req/s) | cores (A-B) | A ok/failed | B ok/failed | A busy | B busy | A mean e2e (s) | B mean e2e (s) | B / A | A p99 (s) | B p99 (s) |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")


def busy(result, steps):
    if not steps.exists():
        return float("nan")
    step_s = sum(json.loads(line)["duration_s"] for line in steps.read_text().splitlines() if line)
    return step_s / result["duration_s"]


ratios = []
for a_path in sorted(out.glob("seed*/rate*/*/a.json")):
    b_path = a_path.with_name("b.json")
    if not b_path.exists():
        continue
    a, b = json.loads(a_path.read_text()), json.loads(b_path.read_text())
    seed, rate, cores = a_path.parts[-4][4:], a_path.parts[-3][4:], a_path.parts[-2]
    mean_a, mean_b = a["e2e"]["mean_ms"] / 1e3, b["e2e"]["mean_ms"] / 1e3
    ratio = mean_b / mean_a
    ratios.append(ratio)
    busy_a, busy_b = busy(a, a_path.with_name("steps-a.jsonl")), busy(b, a_path.with_name("steps-b.jsonl"))
    print(f"| {seed} | {rate} | {cores} | {a['completed']}/{a['failed']} | {b['completed']}/{b['failed']} "
          f"| {busy_a:.2f} | {busy_b:.2f} "
          f"| {mean_a:.2f} | {mean_b:.2f} | {ratio:.3f} "
          f"| {a['e2e']['p99_ms'] / 1e3:.1f} | {b['e2e']['p99_ms'] / 1e3:.1f} |")
if ratios:
    geo = math.exp(sum(map(math.log, ratios)) / len(ratios))
    print(f"\nGeometric mean of B / A over {len(ratios)} pair runs: {geo:.3f}")
EOF
