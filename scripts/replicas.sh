#!/usr/bin/env bash
# N `lapsd serve` replicas on loopback ports behind one router that already exists: vllm-router
# (the vLLM project's router, from PyPI, every package pinned in scripts/router-requirements.txt,
# installed into .venv-router/ the first time or when the pins change).
#
# Usage: scripts/replicas.sh N [-- LAPSD_SERVE_FLAGS...]
#        scripts/replicas.sh --install        (only install the router, then exit)
#   Starts N replicas (`lapsd serve --host 127.0.0.1 --port P LAPSD_SERVE_FLAGS...`, each on a
#   free port), waits until each answers /health, starts the router in front of them, waits for
#   its /health, then prints the router URL, each replica's URL, pid and log, and a `lapsd bench`
#   command line through the router. It runs until Ctrl-C or SIGTERM, which stops the router and
#   every replica. A replica that exits is reported and the others keep serving; if the router
#   exits, everything is stopped and the script exits 1.
# Environment (defaults in brackets):
#   LAPSD_BIN          the lapsd binary                                [target/release/lapsd]
#   ROUTER_POLICY      vllm-router --policy: power_of_two, round_robin, random, cache_aware, ...
#                      (power_of_two: the less loaded of two replicas drawn at random, by the
#                      router's count of requests in flight to each; vllm-router refuses it
#                      for one replica)                 [power_of_two; round_robin when N = 1]
#   BASE_PORT          fixed ports: the router on BASE_PORT, replica I on BASE_PORT+I, the
#                      router's Prometheus listener on BASE_PORT+N+1   [free ports]
#   ROUTER_PORT        router port                                     [BASE_PORT, else free]
#   REPLICA_THREADS    compute threads per replica (RAYON_NUM_THREADS): the replicas share the
#                      machine's cores, and a replica with more threads than free cores stalls
#                                                                      [1]
#   HEALTH_INTERVAL_S  how often the router probes each replica's /health   [5]
#   HEALTH_TIMEOUT_S   wait for a replica's or the router's /health    [300]
#   LOG_DIR            replica-I.log and router.log                    [a new folder under $TMPDIR]
#   LAPSD_ROUTER_VENV  the router's virtualenv                         [.venv-router]
#   PYTHON             python used to create it                        [python3]
# Needs: python3 with venv and pip (PyPI or a mirror in PIP_INDEX_URL), curl, the model
# (scripts/fetch-models.sh) and the binary (cargo build --release -p lapsd).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
usage() {
    sed -n '6,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

venv="${LAPSD_ROUTER_VENV:-$root/.venv-router}"
python="${PYTHON:-python3}"
requirements="$root/scripts/router-requirements.txt"
router_bin="$venv/bin/vllm-router"

install_router() {
    local stamp="$venv/.requirements.sha256" want
    want="$(sha256sum "$requirements" | cut -d' ' -f1)"
    if [ -x "$router_bin" ] && [ "$(cat "$stamp" 2>/dev/null || true)" = "$want" ]; then
        return
    fi
    echo "installing the router into ${venv#"$root"/} (pinned: ${requirements#"$root"/})" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$requirements"
    echo "$want" >"$stamp"
}

[ $# -ge 1 ] || usage
if [ "$1" = "--install" ]; then
    [ $# -eq 1 ] || usage
    install_router
    "$router_bin" --help >/dev/null
    echo "router installed: $router_bin"
    exit 0
fi
case "$1" in
    '' | *[!0-9]*) usage ;;
esac
n="$1"
shift
[ "$n" -ge 1 ] || usage
if [ $# -gt 0 ]; then
    [ "$1" = "--" ] || usage
    shift
fi
serve_args=("$@")

bin="${LAPSD_BIN:-$root/target/release/lapsd}"
default_policy=power_of_two
[ "$n" -ge 2 ] || default_policy=round_robin
policy="${ROUTER_POLICY:-$default_policy}"
threads="${REPLICA_THREADS:-1}"
health_interval_s="${HEALTH_INTERVAL_S:-5}"
health_timeout_s="${HEALTH_TIMEOUT_S:-300}"
if [ ! -x "$bin" ]; then
    echo "error: $bin not found; build it with: cargo build --release -p lapsd (or set LAPSD_BIN)" >&2
    exit 1
fi
command -v curl >/dev/null || { echo "error: curl is needed" >&2; exit 1; }
install_router

if [ -n "${LOG_DIR:-}" ]; then
    log_dir="$LOG_DIR"
    mkdir -p "$log_dir"
else
    log_dir="$(mktemp -d "${TMPDIR:-/tmp}/lapsd-replicas.XXXXXX")"
fi

# N + 2 loopback ports: replicas, router, the router's Prometheus listener (vllm-router panics
# when its Prometheus port is taken). Free ones are held together while chosen so that they differ.
if [ -n "${BASE_PORT:-}" ]; then
    ports=()
    for i in $(seq 1 "$n"); do ports+=("$((BASE_PORT + i))"); done
    ports+=("$BASE_PORT" "$((BASE_PORT + n + 1))")
else
    read -r -a ports <<<"$("$python" - "$((n + 2))" <<'PY'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
)"
fi
replica_ports=("${ports[@]:0:n}")
router_port="${ROUTER_PORT:-${ports[n]}}"
prometheus_port="${ports[n + 1]}"
for port in "${ports[@]:0:n}" "$router_port" "$prometheus_port"; do
    if curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$port/"; then
        echo "error: something already answers on port $port" >&2
        exit 1
    fi
done
router_url="http://127.0.0.1:$router_port"

pids=()
router_pid=""
cleanup() {
    trap - EXIT INT TERM
    local all=("${pids[@]}") pid
    [ -n "$router_pid" ] && all+=("$router_pid")
    for pid in "${all[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    # lapsd drains in-flight requests for up to --shutdown-timeout-s; do not wait that long.
    for _ in $(seq 1 100); do
        local alive=0
        for pid in "${all[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for pid in "${all[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    echo "stopped the router and the replicas (logs: $log_dir)" >&2
}
trap cleanup EXIT
trap 'exit 0' INT TERM

# Waits until URL answers 200, failing early when PID exits.
wait_healthy() {
    local url="$1" pid="$2" name="$3" log="$4" deadline=$((SECONDS + health_timeout_s))
    until curl -fsS -o /dev/null "$url/health" 2>/dev/null; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "error: $name exited before answering $url/health; the end of $log:" >&2
            tail -n 20 "$log" >&2
            exit 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "error: $name did not answer $url/health within ${health_timeout_s} s ($log)" >&2
            exit 1
        fi
        sleep 0.5
    done
}

for i in $(seq 1 "$n"); do
    RAYON_NUM_THREADS="$threads" "$bin" serve --host 127.0.0.1 --port "${replica_ports[i - 1]}" \
        ${serve_args[@]+"${serve_args[@]}"} >"$log_dir/replica-$i.log" 2>&1 &
    pids+=("$!")
done
for i in $(seq 1 "$n"); do
    wait_healthy "http://127.0.0.1:${replica_ports[i - 1]}" "${pids[i - 1]}" "replica $i" "$log_dir/replica-$i.log"
done

worker_urls=()
for port in "${replica_ports[@]}"; do worker_urls+=("http://127.0.0.1:$port"); done
"$router_bin" --host 127.0.0.1 --port "$router_port" --worker-urls "${worker_urls[@]}" \
    --policy "$policy" --health-check-endpoint /health \
    --health-check-interval-secs "$health_interval_s" \
    --prometheus-host 127.0.0.1 --prometheus-port "$prometheus_port" >"$log_dir/router.log" 2>&1 &
router_pid=$!
wait_healthy "$router_url" "$router_pid" "the router" "$log_dir/router.log"

bin_shown="${bin#"$root"/}"
echo "router: $router_url pid $router_pid policy $policy log $log_dir/router.log"
for i in $(seq 1 "$n"); do
    echo "replica $i: http://127.0.0.1:${replica_ports[i - 1]} pid ${pids[i - 1]} log $log_dir/replica-$i.log"
done
echo "bench through the router:"
echo "  $bin_shown bench --url $router_url --workload chatbot --rate 1 --requests 60 --max-output-tokens 64"
echo "requests finished per replica:"
echo "  for p in ${replica_ports[*]}; do curl -s http://127.0.0.1:\$p/metrics | grep '^lapsd_requests_finished_total'; done"
echo "ready: Ctrl-C (or kill $$) stops the router and the replicas"

declare -A reported=()
while true; do
    if ! kill -0 "$router_pid" 2>/dev/null; then
        echo "error: the router exited; the end of $log_dir/router.log:" >&2
        tail -n 20 "$log_dir/router.log" >&2
        exit 1
    fi
    for i in $(seq 1 "$n"); do
        if [ -z "${reported[$i]:-}" ] && ! kill -0 "${pids[i - 1]}" 2>/dev/null; then
            echo "replica $i (port ${replica_ports[i - 1]}, pid ${pids[i - 1]}) exited; the others keep serving"
            reported[$i]=1
        fi
    done
    sleep 1 &
    wait $! || true
done
