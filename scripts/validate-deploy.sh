#!/usr/bin/env bash
# Offline validation of deploy/ (Kubernetes manifests, the prometheus-adapter rule, the
# Containerfile): no cluster and no image build, schemas and consistency checks only.
#   - installs the pinned validator (deploy/validate-requirements.txt: kubernetes-validate and
#     jsonschema, from PyPI) into .venv-deploy/ when it is missing or the pins changed;
#   - runs deploy/validate.py: every manifest against the Kubernetes 1.35-1.37 schemas (strict)
#     or the vendored CRDs in deploy/schemas/, the cross-checks against the code, and its
#     self-test (broken variants must be rejected);
#   - then validates a deliberately broken copy of deploy/kubernetes/ in a temporary directory
#     and fails unless that copy is rejected.
# Usage: scripts/validate-deploy.sh [--lapsd-bin PATH]   (PATH: a lapsd binary; its
#        `serve --help` must list every flag the Deployment passes. CI passes target/debug/lapsd.)
# Environment: LAPSD_DEPLOY_VENV (default .venv-deploy), PYTHON (default python3).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${LAPSD_DEPLOY_VENV:-$root/.venv-deploy}"
python="${PYTHON:-python3}"
requirements="$root/deploy/validate-requirements.txt"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"

if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    echo "installing the deploy validator into ${venv#"$root"/} (pinned: ${requirements#"$root"/})"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$requirements"
    echo "$want" >"$stamp"
fi

"$venv/bin/python" "$root/deploy/validate.py" "$@"

# A broken file on disk must fail the same command (here: a misspelt probe field, which only a
# strict schema catches).
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cp -r "$root/deploy/kubernetes" "$tmp/kubernetes"
sed -i 's/^\(\s*\)readinessProbe:/\1readinesProbe:/' "$tmp/kubernetes/deployment.yaml"
grep -q 'readinesProbe:' "$tmp/kubernetes/deployment.yaml" || { echo "negative check: sed did not break the copy" >&2; exit 1; }
if "$venv/bin/python" "$root/deploy/validate.py" --quiet --no-self-test --manifests "$tmp/kubernetes" >"$tmp/out" 2>&1; then
    cat "$tmp/out"
    echo "negative check FAILED: a deployment.yaml with a misspelt field (readinesProbe) was accepted" >&2
    exit 1
fi
grep -q 'readinesProbe' "$tmp/out" || { cat "$tmp/out"; echo "negative check: rejected, but not for the misspelt field" >&2; exit 1; }
echo "ok    negative check: a copy with a misspelt field is rejected ($(grep -c '^ERROR' "$tmp/out") error(s))"
