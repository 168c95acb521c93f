#!/usr/bin/env bash
# Starts `lapsd serve` on a free loopback port with the embedded model, runs the official openai
# Python client against it (check_openai_client.py), then stops the server with SIGTERM and
# checks that it exits 0. Needs: the built `lapsd` binary (LAPSD_BIN, default target/debug/lapsd),
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
"$BIN" serve --port "$PORT" --max-batch 4 >"$LOG" 2>&1 &
PID=$!
trap 'kill "$PID" 2>/dev/null || true; rm -f "$LOG"' EXIT
for _ in $(seq 1 600); do
  if curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$PID" 2>/dev/null; then cat "$LOG"; echo "lapsd serve died"; exit 1; fi
  sleep 0.2
done
"$PY" "$HERE/check_openai_client.py" "http://127.0.0.1:$PORT/v1"
kill -TERM "$PID"
if wait "$PID"; then echo "graceful shutdown: exit 0"; else echo "lapsd serve exited $?"; cat "$LOG"; exit 1; fi
trap - EXIT
rm -f "$LOG"
