#!/usr/bin/env bash
# Checks that every relative Markdown link in the README and docs/ points at a file or folder
# that exists (web links and in-page anchors are not checked). Exits non-zero, listing each
# broken link as FILE: TARGET, if one does not. Takes well under a second.
# Usage: scripts/check-doc-links.sh [FILE.md ...]   (default: README.md, docs/**/*.md,
#   profiles/README.md)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$#" -gt 0 ]; then
    files=("$@")
else
    mapfile -t files < <(ls README.md profiles/README.md 2>/dev/null; find docs -name '*.md' | sort)
fi
broken=0
for f in "${files[@]}"; do
    dir="$(dirname "$f")"
    # Inline links and images: ](target) or ](target "title"); fenced code blocks are skipped.
    while IFS= read -r target; do
        target="${target%% *}"
        target="${target%%#*}"
        case "$target" in
            "" | http://* | https://* | mailto:*) continue ;;
        esac
        if [ ! -e "$dir/$target" ]; then
            echo "$f: $target"
            broken=1
        fi
    done < <(awk '/^[[:space:]]*```/ { code = !code; next } !code' "$f" |
        grep -o '](\([^)]*\))' | sed 's/^](//; s/)$//' || true)
done
if [ "$broken" -ne 0 ]; then
    echo "broken relative links above" >&2
    exit 1
fi
echo "doc links ok (${#files[@]} files)"
