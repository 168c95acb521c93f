#!/usr/bin/env bash
# Soak test of `lapsd serve`: starts the server on the embedded default model, sends N requests at
# concurrency C (short completions, long prompts, streams abandoned after the first chunk,
# malformed bodies; scripts/soak.py), samples the server's RSS every second, then stops it with
# SIGTERM and checks that it drains and exits 0. Results: docs/results/2026-12-04-soak.md.
#
# Usage: scripts/soak.sh [OUT_DIR]      (default: results/soak)
# Environment: REQUESTS [300], CONCURRENCY [8], SEED [0], PORT [18090], SERVE_ARGS [""],
#              LAPSD [target/release/lapsd]. Build first: cargo build --release -p lapsd;
#              models: scripts/fetch-models.sh.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out_dir="${1:-results/soak}"
REQUESTS="${REQUESTS:-300}"
CONCURRENCY="${CONCURRENCY:-8}"
SEED="${SEED:-0}"
PORT="${PORT:-18090}"
SERVE_ARGS="${SERVE_ARGS:-}"
LAPSD="${LAPSD:-target/release/lapsd}"
url="http://127.0.0.1:$PORT"
[ -x "$LAPSD" ] || { echo "error: $LAPSD not found; cargo build --release -p lapsd" >&2; exit 1; }
if curl -sf "$url/health" >/dev/null 2>&1; then
    echo "error: something already answers on $url; set PORT" >&2
    exit 1
fi
mkdir -p "$out_dir"
# shellcheck disable=SC2086
"$LAPSD" serve --port "$PORT" $SERVE_ARGS >"$out_dir/server.log" 2>&1 &
server_pid=$!
trap 'kill -TERM "$server_pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
    curl -sf "$url/health" >/dev/null 2>&1 && break
    kill -0 "$server_pid" 2>/dev/null || { echo "error: server exited; see $out_dir/server.log" >&2; exit 1; }
    sleep 1
done
status=0
python3 scripts/soak.py --url "$url" --pid "$server_pid" --requests "$REQUESTS" \
    --concurrency "$CONCURRENCY" --seed "$SEED" --out "$out_dir/soak.json" || status=$?
curl -s "$url/metrics" >"$out_dir/metrics.txt" || true
kill -TERM "$server_pid"
exit_code=0
wait "$server_pid" || exit_code=$?
trap - EXIT
echo "server exit status after SIGTERM: $exit_code"
[ "$exit_code" -eq 0 ] || status=1
exit "$status"
