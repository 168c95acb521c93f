#!/usr/bin/env python3
"""Offline validation of deploy/: run by scripts/validate-deploy.sh inside its venv.

1. Schemas. Every document under deploy/kubernetes/ is validated:
   - built-in kinds (Deployment, Service, HorizontalPodAutoscaler, PodDisruptionBudget) against
     the Kubernetes JSON schemas bundled in the pinned `kubernetes-validate` package, strict
     (unknown fields rejected), for each Kubernetes version in K8S_VERSIONS;
   - custom resources (InferencePool, InferenceObjective, HTTPRoute) against the openAPIV3Schema
     of the CRDs vendored in deploy/schemas/ (checked against deploy/schemas/SHA256SUMS first),
     made strict the same way (objects that list properties reject others, unless the CRD says
     x-kubernetes-preserve-unknown-fields), with metadata checked as ObjectMeta. A kind with no
     schema is an error, never a skip.
   Not evaluated: the CRDs' CEL rules (x-kubernetes-validations), defaults, and anything only an
   API server or a controller decides.
2. Consistency between the manifests and the code: selectors reach the pods, ports and probe
   paths are lapsd's, the drain fits terminationGracePeriodSeconds with the constants in
   crates/server, the model file is what scripts/fetch-models.sh writes on the shared volume,
   the HPA's metric is the one the prometheus-adapter rule serves, computed from gauges lapsd
   exports, the Containerfile's COPY sources exist and are not ignored, and (with a lapsd binary)
   every flag passed to `lapsd serve` exists.
3. Self-test: broken variants of the real manifests (an unknown field, a wrong type, a missing
   required field, a value out of range, a dangling reference, a drain that does not fit) must
   each be rejected, so a validator that accepts everything cannot pass.

Exit status 0 when everything holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import copy
import fnmatch
import hashlib
import importlib.resources
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

import jsonschema
import yaml
from referencing import Registry, Resource

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
MANIFESTS = DEPLOY / "kubernetes"
SCHEMAS = DEPLOY / "schemas"
ADAPTER_VALUES = DEPLOY / "prometheus-adapter" / "values.yaml"
CONTAINERFILE = DEPLOY / "Containerfile"
CONTAINERFILE_IGNORE = DEPLOY / "Containerfile.dockerignore"

# The three most recent Kubernetes minors the pinned kubernetes-validate bundles (the Gateway API
# Inference Extension supports the three most recent).
K8S_VERSIONS = ["1.35", "1.36", "1.37"]
DEFS_ID = "https://kubernetes.io/api/_definitions.json"
OBJECT_META = DEFS_ID + "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

Doc = dict[str, Any]


class Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}")

    def __len__(self) -> int:
        return len(self.items)


def rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def load_docs(path: Path) -> list[Doc]:
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def ident(doc: Doc) -> str:
    name = (doc.get("metadata") or {}).get("name", "?") if isinstance(doc, dict) else "?"
    kind = doc.get("kind", "?") if isinstance(doc, dict) else "?"
    return f"{kind}/{name}"


def fmt_error(err: jsonschema.ValidationError) -> str:
    path = ".".join(str(p) for p in err.absolute_path) or "(root)"
    message = err.message if len(err.message) < 300 else err.message[:300] + "..."
    return f"{path}: {message}"


# ---------------------------------------------------------------------------------------------
# Schemas


def check_vendored_checksums(problems: Problems) -> None:
    sums = SCHEMAS / "SHA256SUMS"
    listed = set()
    for line in sums.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        digest, name = line.split(maxsplit=1)
        name = name.lstrip("*")
        listed.add(name)
        path = SCHEMAS / name
        if not path.is_file():
            problems.add(rel(sums), f"{name} is listed but missing")
            continue
        got = hashlib.sha256(path.read_bytes()).hexdigest()
        if got != digest:
            problems.add(rel(path), "differs from the upstream file recorded in SHA256SUMS")
    for path in sorted(SCHEMAS.rglob("*.yaml")):
        if str(path.relative_to(SCHEMAS)) not in listed:
            problems.add(rel(path), "vendored schema not listed in deploy/schemas/SHA256SUMS")


def strictify(schema: Any) -> Any:
    """An API server with strict field validation rejects fields a structural schema does not
    list: mirror that by closing every object that lists properties (unless the CRD marks it
    x-kubernetes-preserve-unknown-fields)."""
    if isinstance(schema, list):
        return [strictify(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strictify(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


class CrdIndex:
    """(group, version, kind) -> [(source, strict schema)], from the vendored CRDs."""

    def __init__(self) -> None:
        self.by_gvk: dict[tuple[str, str, str], list[tuple[str, Doc]]] = {}
        for path in sorted(SCHEMAS.rglob("*.yaml")):
            source = str(path.parent.relative_to(SCHEMAS))
            for doc in load_docs(path):
                if doc.get("kind") != "CustomResourceDefinition":
                    continue
                spec = doc["spec"]
                for version in spec["versions"]:
                    if not version.get("served", False):
                        continue
                    key = (spec["group"], version["name"], spec["names"]["kind"])
                    schema = strictify(version["schema"]["openAPIV3Schema"])
                    self.by_gvk.setdefault(key, []).append((source, schema))

    def lookup(self, api_version: str, kind: str) -> list[tuple[str, Doc]]:
        if "/" not in api_version:
            return []
        group, version = api_version.split("/", 1)
        return self.by_gvk.get((group, version, kind), [])


class BuiltinSchemas:
    """The strict Kubernetes JSON schemas bundled in kubernetes-validate, per version."""

    def __init__(self) -> None:
        self.base = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
        self.dirs = {}
        for entry in self.base.iterdir():
            m = re.match(r"^v(\d+\.\d+)\.\d+-local-strict$", entry.name)
            if m:
                self.dirs[m.group(1)] = entry
        self.registries: dict[str, Registry] = {}

    def registry(self, version: str) -> Registry:
        if version not in self.registries:
            defs = json.loads((self.dirs[version] / "_definitions.json").read_text())
            self.registries[version] = Resource.from_contents(defs) @ Registry()
        return self.registries[version]

    def schema(self, version: str, api_version: str, kind: str) -> Doc | None:
        if version not in self.dirs:
            raise SystemExit(f"kubernetes-validate has no schemas for Kubernetes {version}")
        # The package's own file naming: apps/v1 -> apps-v1, rbac.authorization.k8s.io/v1 -> rbac-v1.
        api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
        entry = self.dirs[version] / f"{kind.lower()}-{api}.json"
        if not entry.is_file():
            return None
        return json.loads(entry.read_text())

    def object_meta_errors(self, meta: Any) -> list[str]:
        validator = jsonschema.Draft202012Validator(
            {"$ref": OBJECT_META}, registry=self.registry(K8S_VERSIONS[-1])
        )
        return [fmt_error(e) for e in validator.iter_errors(meta)]


def schema_errors(doc: Doc, crds: CrdIndex, builtins: BuiltinSchemas) -> tuple[list[str], str]:
    """Errors of one document against its schemas, and a note on what it was checked against."""
    if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
        return ["not a Kubernetes object (apiVersion and kind required)"], ""
    errors: list[str] = []
    name = (doc.get("metadata") or {}).get("name")
    if not isinstance(name, str) or not DNS1123_SUBDOMAIN.match(name) or len(name) > 253:
        errors.append(f"metadata.name: {name!r} is not a DNS-1123 subdomain name")
    crd_schemas = crds.lookup(doc["apiVersion"], doc["kind"])
    if crd_schemas:
        for source, schema in crd_schemas:
            validator = jsonschema.Draft4Validator(schema)
            for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
                errors.append(f"[CRD {source}] {fmt_error(err)}")
        for message in builtins.object_meta_errors(doc.get("metadata")):
            errors.append(f"[ObjectMeta] metadata.{message}")
        return errors, "CRD " + ", ".join(s for s, _ in crd_schemas)
    found_any = False
    for version in K8S_VERSIONS:
        schema = builtins.schema(version, doc["apiVersion"], doc["kind"])
        if schema is None:
            errors.append(f"[Kubernetes {version}] no schema for {doc['apiVersion']} {doc['kind']}")
            continue
        found_any = True
        validator = jsonschema.Draft202012Validator(schema, registry=builtins.registry(version))
        for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
            errors.append(f"[Kubernetes {version}] {fmt_error(err)}")
    if not found_any:
        errors.append("no built-in schema and no vendored CRD for this kind")
    return errors, "Kubernetes " + ", ".join(K8S_VERSIONS) + " strict"


# ---------------------------------------------------------------------------------------------
# Consistency with the code


def source(path: str) -> str:
    return (ROOT / path).read_text()


def rust_const(path: str, name: str) -> int:
    m = re.search(rf"const {name}: u64 = (\d+);", source(path))
    if not m:
        raise SystemExit(f"{path}: const {name} not found (the drain check reads it)")
    return int(m.group(1))


def parse_args(args: list[str]) -> tuple[list[str], dict[str, str | None]]:
    """Positional words and --flags (`--f v`, `--f=v` or a bare `--f`) of a container's args."""
    words: list[str] = []
    flags: dict[str, str | None] = {}
    i = 0
    while i < len(args):
        a = str(args[i])
        if a.startswith("--"):
            if "=" in a:
                k, v = a.split("=", 1)
                flags[k] = v
            elif i + 1 < len(args) and not str(args[i + 1]).startswith("--"):
                flags[a] = str(args[i + 1])
                i += 1
            else:
                flags[a] = None
        else:
            words.append(a)
        i += 1
    return words, flags


def subset(labels: dict, of: dict) -> bool:
    return all(of.get(k) == v for k, v in (labels or {}).items())


def lapsd_help_flags(lapsd_bin: Path) -> set[str]:
    out = subprocess.run(
        [str(lapsd_bin), "serve", "--help"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    return set(re.findall(r"^\s+(?:-\w, )?(--[a-z0-9][a-z0-9-]*)", out, re.M))


def fetch_models_files() -> dict[str, set[str]]:
    """What each `scripts/fetch-models.sh WHAT` writes."""
    text = source("scripts/fetch-models.sh")
    var = dict(re.findall(r'^(\w+_FILE)="([^"]+)"$', text, re.M))
    smol = {var["SMOLLM_FILE"]}
    qwen = {var["QWEN_DRAFT_FILE"], var["QWEN_TARGET_FILE"]}
    return {"default": smol, "smollm": smol, "qwen": qwen, "all": smol | qwen}


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule, simplified: the last pattern matching the path or one of its parent
    directories decides; `!` re-includes."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.strip("/")
        if any(fnmatch.fnmatchcase(p, pat) for p in prefixes):
            excluded = not negate
    return excluded


def containerfile_stages() -> list[dict[str, Any]]:
    text = CONTAINERFILE.read_text().replace("\\\n", " ")
    stages: list[dict[str, Any]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            m = re.search(r"\bAS\s+(\S+)", rest, re.I)
            stages.append({"name": m.group(1) if m else None, "lines": []})
        elif stages:
            stages[-1]["lines"].append((word, rest.strip()))
    return stages


def consistency(files: list[tuple[Path, Doc]], problems: Problems, lapsd_bin: Path | None) -> None:
    by_kind: dict[str, list[tuple[Path, Doc]]] = {}
    for path, doc in files:
        if isinstance(doc, dict):
            by_kind.setdefault(doc.get("kind", "?"), []).append((path, doc))

    def where(path: Path, doc: Doc) -> str:
        return f"{rel(path)} {ident(doc)}"

    deployments = by_kind.get("Deployment", [])
    if not deployments:
        problems.add("deploy/kubernetes", "no Deployment")
        return
    dpath, dep = deployments[0]
    dw = where(dpath, dep)
    try:
        pod = dep["spec"]["template"]
        pod_labels = pod["metadata"]["labels"]
        pod_spec = pod["spec"]
        containers = {c["name"]: c for c in pod_spec["containers"]}
        lapsd = containers["lapsd"]
        inits = pod_spec.get("initContainers", [])
    except (KeyError, TypeError) as e:
        problems.add(dw, f"cannot read the pod template (missing {e})")
        return
    if not subset(dep["spec"].get("selector", {}).get("matchLabels", {}), pod_labels):
        problems.add(dw, "spec.selector does not match the pod template's labels")
    ports_by_name = {p.get("name"): p.get("containerPort") for p in lapsd.get("ports", [])}
    port_numbers = set(ports_by_name.values())

    words, flags = parse_args(lapsd.get("args", []))
    if words[:1] != ["serve"]:
        problems.add(dw, "the lapsd container's args must start with `serve`")
    try:
        serve_port = int(flags.get("--port") or 8000)
    except ValueError:
        problems.add(dw, f"--port {flags.get('--port')!r} is not a number")
        serve_port = -1
    if serve_port not in port_numbers:
        problems.add(dw, f"--port {serve_port} is not a containerPort of the lapsd container")
    if flags.get("--host") in (None, "127.0.0.1", "localhost", "::1"):
        problems.add(dw, "--host must be a non-loopback address (0.0.0.0) in a pod")
    metrics_rs = source("crates/server/src/metrics.rs")
    if flags.get("--metrics-compat") == "vllm":
        for name in ("vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc"):
            if f'"{name}"' not in metrics_rs:
                problems.add("crates/server/src/metrics.rs", f"does not export {name}")
    else:
        problems.add(dw, "--metrics-compat vllm is needed for the endpoint picker's default metric names")

    # Probes: lapsd's routes, on the served port.
    routes = set(re.findall(r'\.route\(\s*"([^"]+)"', source("crates/server/src/routes.rs")))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        spec = lapsd.get(probe)
        if probe != "startupProbe" and not spec:
            problems.add(dw, f"{probe} missing")
            continue
        if not spec:
            continue
        get = spec.get("httpGet") or {}
        if get.get("path") not in routes:
            problems.add(dw, f"{probe} path {get.get('path')!r} is not a lapsd route ({sorted(routes)})")
        port = get.get("port")
        number = ports_by_name.get(port) if isinstance(port, str) else port
        if number != serve_port:
            problems.add(dw, f"{probe} port {port!r} is not the port lapsd serves on ({serve_port})")
    if (lapsd.get("readinessProbe") or {}).get("httpGet", {}).get("path") != "/health":
        problems.add(dw, "readinessProbe must be GET /health")

    # Drain: preStop + --shutdown-timeout-s + lapsd's backstop + connection close grace.
    grace = pod_spec.get("terminationGracePeriodSeconds", 30)
    pre_stop = ((lapsd.get("lifecycle") or {}).get("preStop") or {}).get("sleep", {}).get("seconds", 0)
    if "--shutdown-timeout-s" not in flags:
        problems.add(dw, "--shutdown-timeout-s must be given explicitly (the drain budget uses it)")
    else:
        try:
            shutdown = float(flags["--shutdown-timeout-s"] or "nan")
        except ValueError:
            shutdown = float("nan")
        backstop = rust_const("crates/server/src/server.rs", "DRAIN_BACKSTOP_S")
        close = rust_const("crates/server/src/listener.rs", "CLOSE_GRACE_S")
        need = pre_stop + shutdown + backstop + close
        if not need <= grace:
            problems.add(
                dw,
                f"terminationGracePeriodSeconds {grace} < preStop {pre_stop} + --shutdown-timeout-s "
                f"{flags['--shutdown-timeout-s']} + DRAIN_BACKSTOP_S {backstop} + CLOSE_GRACE_S {close}",
            )

    # Model: the file an init container writes with scripts/fetch-models.sh on a shared volume.
    model = flags.get("--model")
    if not model:
        problems.add(dw, "--model must name the file on the models volume")
    else:
        mounts = {m["mountPath"].rstrip("/"): m["name"] for m in lapsd.get("volumeMounts", [])}
        model_dir, _, model_file = model.rpartition("/")
        volume = mounts.get(model_dir)
        produced: set[str] = set()
        if volume is None:
            problems.add(dw, f"--model {model}: its directory is not a volume mount of the lapsd container")
        else:
            files_for = fetch_models_files()
            for init in inits:
                init_mounts = {m["name"]: m["mountPath"].rstrip("/") for m in init.get("volumeMounts", [])}
                args = [str(a) for a in init.get("args", [])]
                if volume in init_mounts and len(args) >= 2 and args[1].rstrip("/") == init_mounts[volume]:
                    produced |= files_for.get(args[0], set())
            if model_file not in produced:
                problems.add(
                    dw,
                    f"--model {model}: no init container writes {model_file} to volume {volume!r} "
                    f"(scripts/fetch-models.sh writes {sorted(produced) or 'nothing there'})",
                )

    # Flags: every one passed to `lapsd serve` exists.
    if lapsd_bin is not None:
        known = lapsd_help_flags(lapsd_bin)
        for flag in flags:
            if flag not in known:
                problems.add(dw, f"`lapsd serve` has no flag {flag} ({rel(lapsd_bin)} serve --help)")

    # Services, pools, routes, objectives, the HPA and the PDB reach what they name.
    for path, svc in by_kind.get("Service", []):
        if not subset(svc["spec"].get("selector", {}), pod_labels):
            problems.add(where(path, svc), "selector matches no lapsd pod")
        for p in svc["spec"].get("ports", []):
            target = p.get("targetPort", p.get("port"))
            number = ports_by_name.get(target) if isinstance(target, str) else target
            if number != serve_port:
                problems.add(where(path, svc), f"targetPort {target!r} is not lapsd's port {serve_port}")
    pools = {}
    for path, pool in by_kind.get("InferencePool", []):
        pools[pool["metadata"]["name"]] = pool
        spec = pool.get("spec", {})
        if not subset(spec.get("selector", {}).get("matchLabels", {}), pod_labels):
            problems.add(where(path, pool), "selector.matchLabels matches no lapsd pod")
        for p in spec.get("targetPorts", []):
            if p.get("number") != serve_port:
                problems.add(where(path, pool), f"targetPort {p.get('number')} is not lapsd's port {serve_port}")
    for path, obj in by_kind.get("InferenceObjective", []):
        ref = obj.get("spec", {}).get("poolRef", {})
        if ref.get("name") not in pools or ref.get("group", "inference.networking.k8s.io") != "inference.networking.k8s.io":
            problems.add(where(path, obj), f"poolRef {ref} names no InferencePool here")
    for path, route in by_kind.get("HTTPRoute", []):
        for rule in route.get("spec", {}).get("rules", []):
            for ref in rule.get("backendRefs", []):
                if ref.get("kind") == "InferencePool" and ref.get("name") not in pools:
                    problems.add(where(path, route), f"backendRef {ref.get('name')!r} names no InferencePool here")
    for path, pdb in by_kind.get("PodDisruptionBudget", []):
        if not subset(pdb["spec"].get("selector", {}).get("matchLabels", {}), pod_labels):
            problems.add(where(path, pdb), "selector matches no lapsd pod")

    adapter_names = adapter_checks(problems, metrics_rs)
    for path, hpa in by_kind.get("HorizontalPodAutoscaler", []):
        ref = hpa["spec"].get("scaleTargetRef", {})
        if ref.get("kind") != "Deployment" or ref.get("name") != dep["metadata"]["name"]:
            problems.add(where(path, hpa), f"scaleTargetRef {ref} is not the lapsd Deployment")
        for metric in hpa["spec"].get("metrics", []):
            if metric.get("type") == "Pods":
                name = metric.get("pods", {}).get("metric", {}).get("name")
                if name not in adapter_names:
                    problems.add(
                        where(path, hpa),
                        f"metric {name!r} is not served by the custom-metrics adapter rules in "
                        f"{rel(ADAPTER_VALUES)} ({sorted(adapter_names)})",
                    )

    containerfile_checks(problems, dep, lapsd, inits, pod_spec)


def adapter_checks(problems: Problems, metrics_rs: str) -> set[str]:
    """prometheus-adapter rules: each reads a gauge lapsd exports, with `state` values lapsd
    uses, and the waiting sum equals the one behind vllm:num_requests_waiting."""
    where = rel(ADAPTER_VALUES)
    values = yaml.safe_load(ADAPTER_VALUES.read_text())
    exported = set(re.findall(r'"(lapsd_[a-z0-9_]+)"', metrics_rs))
    m = re.search(r"REQUEST_STATES: \[&str; \d+\] = \[([^\]]*)\]", metrics_rs)
    states = set(re.findall(r'"([a-z_]+)"', m.group(1))) if m else set()
    m = re.search(r"let waiting = ([^;]+);", metrics_rs)
    vllm_waiting = set(re.findall(r'state\("([a-z_]+)"\)', m.group(1))) if m else set()
    names: set[str] = set()
    for rule in ((values or {}).get("rules") or {}).get("custom") or []:
        series = re.match(r"\s*([a-zA-Z_:][a-zA-Z0-9_:]*)", rule.get("seriesQuery", ""))
        metric = series.group(1) if series else None
        if metric not in exported:
            problems.add(where, f"seriesQuery reads {metric!r}, which lapsd does not export")
        used = re.findall(r'state=~?"([^"]+)"', rule.get("metricsQuery", ""))
        used_states = {s for u in used for s in u.split("|")}
        if not used_states <= states:
            problems.add(where, f"metricsQuery uses states {sorted(used_states - states)} lapsd does not have")
        as_name = (rule.get("name") or {}).get("as")
        if as_name and as_name.endswith("_waiting") and used_states != vllm_waiting:
            problems.add(
                where,
                f"{as_name} sums states {sorted(used_states)}, vllm:num_requests_waiting sums {sorted(vllm_waiting)}",
            )
        if as_name:
            names.add(as_name)
    if not names:
        problems.add(where, "no custom rule with a `name.as`")
    return names


def containerfile_checks(problems: Problems, dep: Doc, lapsd: Doc, inits: list, pod_spec: Doc) -> None:
    where = rel(CONTAINERFILE)
    stages = containerfile_stages()
    names = {s["name"] for s in stages}
    ignore = [
        line.strip()
        for line in CONTAINERFILE_IGNORE.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    for stage in stages:
        for word, rest in stage["lines"]:
            if word not in ("COPY", "ADD"):
                continue
            parts = [p for p in rest.split() if not p.startswith("--")]
            if "--from=" in rest:
                continue
            for src in parts[:-1]:
                src = src.rstrip("/")
                if src in (".", "./"):
                    continue
                if not (ROOT / src).exists():
                    problems.add(where, f"COPY source {src} does not exist in the repository")
                elif dockerignore_excludes(ignore, src):
                    problems.add(where, f"COPY source {src} is excluded by {rel(CONTAINERFILE_IGNORE)}")
    # The documented build commands tag the images the Deployment runs.
    tags = dict(re.findall(r"--target\s+(\S+)\s+-t\s+(\S+)", CONTAINERFILE.read_text()))
    for target in tags:
        if target not in names:
            problems.add(where, f"--target {target} is not a stage")
    if lapsd.get("image") != tags.get("runtime"):
        problems.add(where, f"runtime image {tags.get('runtime')!r} is not the lapsd container's {lapsd.get('image')!r}")
    for init in inits:
        if init.get("image") != tags.get("model-fetcher"):
            problems.add(where, f"model-fetcher image {tags.get('model-fetcher')!r} is not init container {init.get('name')}'s {init.get('image')!r}")
    # The runtime stage runs what it copied, as the user the pod runs as.
    by_name = {s["name"]: s for s in stages}
    run_as = (pod_spec.get("securityContext") or {}).get("runAsUser")
    for stage_name in ("runtime", "model-fetcher"):
        stage = by_name.get(stage_name)
        if stage is None:
            problems.add(where, f"no stage {stage_name}")
            continue
        users = [rest.split(":")[0] for word, rest in stage["lines"] if word == "USER"]
        if not users or users[-1] != str(run_as):
            problems.add(where, f"stage {stage_name} runs as {users[-1:] or 'root'}, the pod as {run_as}")
    runtime = by_name.get("runtime")
    if runtime:
        dests = [rest.split()[-1] for word, rest in runtime["lines"] if word == "COPY"]
        entry = [rest for word, rest in runtime["lines"] if word == "ENTRYPOINT"]
        exe = re.findall(r'"([^"]+)"', entry[-1])[0] if entry else None
        if exe not in dests:
            problems.add(where, f"runtime ENTRYPOINT {exe!r} is not a file the stage copies in")


# ---------------------------------------------------------------------------------------------
# Driver


def validate(
    files: list[tuple[Path, Doc]],
    crds: CrdIndex,
    builtins: BuiltinSchemas,
    lapsd_bin: Path | None,
    verbose: bool,
) -> Problems:
    problems = Problems()
    for path, doc in files:
        errors, against = schema_errors(doc, crds, builtins)
        for e in errors:
            problems.add(f"{rel(path)} {ident(doc)}", e)
        if verbose and not errors:
            print(f"ok    {rel(path):<55} {ident(doc):<36} ({against})")
    consistency(files, problems, lapsd_bin)
    return problems


def collect(manifest_dir: Path) -> list[tuple[Path, Doc]]:
    files = []
    for path in sorted(manifest_dir.rglob("*.yaml")):
        for doc in load_docs(path):
            files.append((path, doc))
    return files


def self_test(files: list[tuple[Path, Doc]], crds: CrdIndex, builtins: BuiltinSchemas) -> tuple[list[str], int]:
    """Broken variants of the real manifests; returns the ones NOT rejected."""

    def find(docs, kind):
        return next(d for _, d in docs if isinstance(d, dict) and d.get("kind") == kind)

    def lapsd(docs):
        return next(c for c in find(docs, "Deployment")["spec"]["template"]["spec"]["containers"] if c["name"] == "lapsd")

    def rename(d: dict, old: str, new: str) -> None:
        d[new] = d.pop(old)

    def set_arg(docs, flag, value):
        args = lapsd(docs)["args"]
        args[args.index(flag) + 1] = value

    variants: list[tuple[str, Callable[[list], None]]] = [
        ("unknown field in the Deployment (readinesProbe)", lambda d: rename(lapsd(d), "readinessProbe", "readinesProbe")),
        ("containerPort given as text", lambda d: lapsd(d)["ports"][0].__setitem__("containerPort", "8000x")),
        ("Service port given as text", lambda d: find(d, "Service")["spec"]["ports"][0].__setitem__("port", "eight")),
        ("HPA minReplicas given as text", lambda d: find(d, "HorizontalPodAutoscaler")["spec"].__setitem__("minReplicas", "two")),
        ("InferencePool without its required targetPorts", lambda d: find(d, "InferencePool")["spec"].pop("targetPorts")),
        ("InferencePool target port 70000 (max 65535)", lambda d: find(d, "InferencePool")["spec"]["targetPorts"][0].__setitem__("number", 70000)),
        ("InferencePool failureMode not in the enum", lambda d: find(d, "InferencePool")["spec"]["endpointPickerRef"].__setitem__("failureMode", "Open")),
        ("InferenceObjective poolRef without name", lambda d: find(d, "InferenceObjective")["spec"]["poolRef"].pop("name")),
        ("InferenceObjective priority given as text", lambda d: find(d, "InferenceObjective")["spec"].__setitem__("priority", "high")),
        ("HTTPRoute backendRef with a misspelt field", lambda d: find(d, "HTTPRoute")["spec"]["rules"][0]["backendRefs"][0].__setitem__("weigth", 1)),
        ("CR metadata with a misspelt field", lambda d: find(d, "InferencePool")["metadata"].__setitem__("lables", {})),
        ("object name not DNS-1123", lambda d: find(d, "InferenceObjective")["metadata"].__setitem__("name", "Lapsd_Objective")),
        ("InferencePool selecting no lapsd pod", lambda d: find(d, "InferencePool")["spec"]["selector"]["matchLabels"].__setitem__("app", "lapsd-typo")),
        ("Service selecting no lapsd pod", lambda d: find(d, "Service")["spec"]["selector"].__setitem__("app", "other")),
        ("HPA on a metric the adapter does not serve", lambda d: find(d, "HorizontalPodAutoscaler")["spec"]["metrics"][0]["pods"]["metric"].__setitem__("name", "vllm:num_requests_waiting")),
        ("drain longer than terminationGracePeriodSeconds", lambda d: find(d, "Deployment")["spec"]["template"]["spec"].__setitem__("terminationGracePeriodSeconds", 30)),
        ("--model not the file the init container fetches", lambda d: set_arg(d, "--model", "/models/other.gguf")),
        ("readiness probe on a path lapsd does not serve", lambda d: lapsd(d)["readinessProbe"]["httpGet"].__setitem__("path", "/healthz")),
        ("InferenceObjective naming a missing pool", lambda d: find(d, "InferenceObjective")["spec"]["poolRef"].__setitem__("name", "nopool")),
    ]
    missed = []
    for description, mutate in variants:
        broken = copy.deepcopy(files)
        mutate(broken)
        if not len(validate(broken, crds, builtins, None, verbose=False)):
            missed.append(description)
    return missed, len(variants)


def main(argv: Iterable[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--manifests", type=Path, default=MANIFESTS, help="directory of manifests (default deploy/kubernetes)")
    ap.add_argument("--lapsd-bin", type=Path, help="lapsd binary whose `serve --help` lists the valid flags")
    ap.add_argument("--no-self-test", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)

    problems = Problems()
    check_vendored_checksums(problems)
    crds = CrdIndex()
    builtins = BuiltinSchemas()
    files = collect(args.manifests)
    if not files:
        problems.add(rel(args.manifests), "no manifests")
    lapsd_bin = args.lapsd_bin
    if lapsd_bin is not None and not lapsd_bin.is_file():
        problems.add(str(lapsd_bin), "no such lapsd binary")
        lapsd_bin = None
    result = validate(files, crds, builtins, lapsd_bin, verbose=not args.quiet)
    problems.items += result.items
    if not args.quiet:
        if args.lapsd_bin is None:
            print("skip  flag check: no --lapsd-bin given")
        elif lapsd_bin is not None and not any("has no flag" in p for p in result.items):
            print(f"ok    every `lapsd serve` flag in the Deployment is in {rel(lapsd_bin)} serve --help")

    if not args.no_self_test and files:
        missed, total = self_test(files, crds, builtins)
        for description in missed:
            problems.add("self-test", f"a broken variant was accepted: {description}")
        if not args.quiet and not missed:
            print(f"ok    self-test: {total} broken variants of these manifests, each rejected")

    for p in problems.items:
        print(f"ERROR {p}")
    if problems.items:
        print(f"deploy validation FAILED: {len(problems)} problem(s)")
        return 1
    if not args.quiet:
        print(f"deploy validation passed: {len(files)} manifests, consistency checks, vendored schemas unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
