#!/usr/bin/env bash
# Checks that every relative Markdown link in the README and docs/ points at a file or folder
# that exists and, for links to a heading (`file.md#heading`, `#heading`), that the heading
# exists (GitHub's anchor rule). Web links are not checked. Exits non-zero, listing each broken
# link as FILE: TARGET, if one does not. Takes well under a second.
# Usage: scripts/check-doc-links.sh [FILE.md ...]   (default: README.md, profiles/README.md,
#   docs/**/*.md)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$#" -gt 0 ]; then
    files=("$@")
else
    mapfile -t files < <(ls README.md profiles/README.md 2>/dev/null; find docs -name '*.md' | sort)
fi

# The lines of a Markdown file outside fenced code blocks.
prose() { awk '/^[[:space:]]*```/ { code = !code; next } !code' "$1"; }

# GitHub's anchors of a Markdown file's headings: lower case, punctuation other than '-' and '_'
# dropped, spaces to '-' (duplicate headings get -1, -2, ...; not needed here).
anchors() {
    prose "$1" | grep -E '^#{1,6} ' | sed -E 's/^#+ +//; s/ +#*$//' |
        tr '[:upper:]' '[:lower:]' | sed -E 's/[^a-z0-9 _-]//g; s/ /-/g'
}

broken=0
for f in "${files[@]}"; do
    dir="$(dirname "$f")"
    # Inline links and images: ](target) or ](target "title").
    while IFS= read -r target; do
        target="${target%% *}"
        case "$target" in
            "" | http://* | https://* | mailto:*) continue ;;
        esac
        path="${target%%#*}"
        anchor=""
        [[ "$target" == *"#"* ]] && anchor="${target#*#}"
        if [ -z "$path" ]; then
            file="$f"
        else
            file="$dir/$path"
            if [ ! -e "$file" ]; then
                echo "$f: $target"
                broken=1
                continue
            fi
        fi
        if [ -n "$anchor" ] && [ -f "$file" ] && [[ "$file" == *.md ]] &&
            ! anchors "$file" | grep -qxF -- "$anchor"; then
            echo "$f: $target (no such heading)"
            broken=1
        fi
    done < <(prose "$f" | grep -o '](\([^)]*\))' | sed 's/^](//; s/)$//' || true)
done
if [ "$broken" -ne 0 ]; then
    echo "broken relative links above" >&2
    exit 1
fi
echo "doc links ok (${#files[@]} files)"
