#!/usr/bin/env bash
# Starts `lapsd serve` on a free loopback port with the embedded model, runs the official openai
# Python client against it (check_openai_client.py, with an API key), then stops the server with
# SIGTERM and checks that it exits 0; then starts it again, sends SIGTERM during a long request
# and a second SIGTERM, and checks that it exits at once with status 130 instead of draining. Needs: the built `lapsd` binary (LAPSD_BIN, default target/debug/lapsd),
# python3 with `openai` (installed into a venv here if missing), the model (scripts/fetch-models.sh).
set -euo pipefail
cd "$(dirname "$0")/../../../.."
BIN="${LAPSD_BIN:-${CARGO_TARGET_DIR:-target}/debug/lapsd}"
HERE=crates/server/tests/openai_client
PY=python3
if ! python3 -c "import openai" 2>/dev/null; then
  VENV="${TMPDIR:-/tmp}/lapsd-openai-venv"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet openai
  PY="$VENV/bin/python"
fi
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
LOG="$(mktemp)"
KEY="lapsd-test-key"
start_server() {
  LAPSD_API_KEY="$KEY" "$BIN" serve --port "$PORT" --max-batch 4 >"$LOG" 2>&1 &
  PID=$!
  for _ in $(seq 1 600); do
    if curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then return; fi
    if ! kill -0 "$PID" 2>/dev/null; then cat "$LOG"; echo "lapsd serve died"; exit 1; fi
    sleep 0.2
  done
}
PID=
trap 'kill "$PID" 2>/dev/null || true; rm -f "$LOG"' EXIT
start_server
"$PY" "$HERE/check_openai_client.py" "http://127.0.0.1:$PORT/v1" "$KEY"
kill -TERM "$PID"
if wait "$PID"; then echo "graceful shutdown: exit 0"; else echo "lapsd serve exited $?"; cat "$LOG"; exit 1; fi

# A second signal ends the drain: a request that would run for a minute is left unfinished.
start_server
curl -s -o /dev/null "http://127.0.0.1:$PORT/v1/completions" -H "Authorization: Bearer $KEY" \
  -H 'content-type: application/json' \
  -d '{"prompt": "Count to a thousand:", "max_tokens": 4000, "ignore_eos": true}' &
CURL=$!
for i in $(seq 1 600); do
  if curl -fsS "http://127.0.0.1:$PORT/metrics" | grep '^lapsd_requests{state="running"} 1' >/dev/null; then break; fi
  if ! kill -0 "$CURL" 2>/dev/null || [ "$i" = 600 ]; then echo "the long request never ran"; exit 1; fi
  sleep 0.2
done
kill -TERM "$PID"
sleep 1
kill -TERM "$PID"
status=0
wait "$PID" || status=$?
kill "$CURL" 2>/dev/null || true
if [ "$status" = 130 ]; then echo "second signal: exit 130"; else echo "lapsd serve exited $status after two signals (expected 130)"; cat "$LOG"; exit 1; fi
trap - EXIT
rm -f "$LOG"
