#!/usr/bin/env python3
"""Soak test of an OpenAI-compatible server (stdlib only): N requests at concurrency C, a mix of
short completions, long prompts, streams the client abandons after the first chunk, and malformed
bodies; the server's RSS sampled every second from /proc. Prints a markdown table and writes the
figures as JSON.

Usage: soak.py --url URL --pid PID --requests N --concurrency C --out FILE.json [--seed S]
(scripts/soak.sh starts the server and calls this.)
"""
import argparse
import http.client
import json
import random
import statistics
import threading
import time
import urllib.parse

SHORT, LONG, CANCELLED, MALFORMED = "short", "long prompt", "cancelled stream", "malformed"
MIX = [(SHORT, 0.55), (LONG, 0.15), (CANCELLED, 0.15), (MALFORMED, 0.15)]
MALFORMED_BODIES = [
    b'{"prompt": "unterminated',
    b'{"prompt": 5, "max_tokens": 4}',
    b'{"prompt": "x", "max_tokens": -1}',
    b'{"prompt": "x", "max_tokens": 4, "temperature": "hot"}',
    b'{"prompt": "x", "presence_penalty": 9}',
    b'[1, 2, 3]',
    b'',
    b'{"messages": "not a list"}',
]


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def request(url, kind, rng, timeout_s):
    """Sends one request of `kind`; returns (outcome, latency_s). Outcomes: ok, client-error
    (expected for malformed bodies), unexpected-4xx, 5xx, 429, timeout, connection-error."""
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout_s)
    path = "/v1/completions"
    if kind == SHORT:
        body = json.dumps({"prompt": f"Count to {rng.randint(3, 9)}:", "max_tokens": 16,
                           "temperature": 0}).encode()
    elif kind == LONG:
        body = json.dumps({"prompt": "hello " * rng.randint(800, 1600), "max_tokens": 8}).encode()
    elif kind == CANCELLED:
        body = json.dumps({"prompt": "Tell me a long story.", "max_tokens": 200,
                           "stream": True}).encode()
    else:
        body = rng.choice(MALFORMED_BODIES)
    start = time.monotonic()
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        if kind == CANCELLED and resp.status == 200:
            resp.readline()  # the first SSE line, then hang up
            conn.close()
            return "ok", time.monotonic() - start
        resp.read()
        latency_s = time.monotonic() - start
        if resp.status == 200:
            return ("ok" if kind != MALFORMED else "unexpected-2xx"), latency_s
        if resp.status == 429:
            return "429", latency_s
        if 400 <= resp.status < 500:
            return ("client-error" if kind == MALFORMED else "unexpected-4xx"), latency_s
        return "5xx", latency_s
    except TimeoutError:
        return "timeout", time.monotonic() - start
    except OSError:
        return "connection-error", time.monotonic() - start
    finally:
        conn.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout-s", type=float, default=600.0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    rng = random.Random(args.seed)
    kinds = rng.choices([k for k, _ in MIX], weights=[w for _, w in MIX], k=args.requests)
    seeds = [rng.randrange(1 << 30) for _ in kinds]
    results = [None] * args.requests
    next_index = [0]
    lock = threading.Lock()
    rss = []
    done = threading.Event()

    def sampler():
        while not done.is_set():
            value = rss_kib(args.pid)
            if value is not None:
                rss.append(value)
            done.wait(1.0)

    def worker():
        while True:
            with lock:
                i = next_index[0]
                next_index[0] += 1
            if i >= args.requests:
                return
            results[i] = (kinds[i],) + request(args.url, kinds[i], random.Random(seeds[i]),
                                               args.timeout_s)
            if (i + 1) % 50 == 0:
                print(f"  {i + 1}/{args.requests} sent", flush=True)

    started = time.monotonic()
    threading.Thread(target=sampler, daemon=True).start()
    threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall_s = time.monotonic() - started
    done.set()

    by_kind = {}
    for kind, outcome, _ in results:
        by_kind.setdefault(kind, {}).setdefault(outcome, 0)
        by_kind[kind][outcome] += 1
    short_latencies = sorted(l for k, o, l in results if k == SHORT and o == "ok")
    long_latencies = sorted(l for k, o, l in results if k == LONG and o == "ok")

    def pct(xs, q):
        return xs[min(len(xs) - 1, int(len(xs) * q))] if xs else None

    failures = sum(n for kind in by_kind.values() for o, n in kind.items()
                   if o not in ("ok", "client-error"))
    summary = {
        "requests": args.requests, "concurrency": args.concurrency, "seed": args.seed,
        "wall_s": round(wall_s, 1), "by_kind": by_kind, "failures": failures,
        "short_p50_s": pct(short_latencies, 0.5), "short_p99_s": pct(short_latencies, 0.99),
        "long_p50_s": pct(long_latencies, 0.5),
        "rss_first_mib": round(rss[0] / 1024, 1) if rss else None,
        "rss_last_mib": round(rss[-1] / 1024, 1) if rss else None,
        "rss_max_mib": round(max(rss) / 1024, 1) if rss else None,
        "rss_samples": len(rss),
        # The series, every 10th sample (~10 s), to tell a plateau from growth.
        "rss_mib_every_10s": [round(v / 1024, 1) for v in rss[::10]],
    }
    with open(args.out, "w") as f:
        json.dump(summary, f, indent=2)
    print(f"\n| kind | sent | outcomes |\n|---|---:|---|")
    for kind, _ in MIX:
        outcomes = by_kind.get(kind, {})
        text = ", ".join(f"{o} {n}" for o, n in sorted(outcomes.items()))
        print(f"| {kind} | {sum(outcomes.values())} | {text} |")
    fmt = lambda x: "n/a" if x is None else f"{x:.2f}"
    print(f"\nrequests {args.requests} at concurrency {args.concurrency} in {wall_s:.0f} s; "
          f"failures (anything but ok or an expected 4xx) {failures}; short requests p50 "
          f"{fmt(summary['short_p50_s'])} s, p99 {fmt(summary['short_p99_s'])} s; RSS first "
          f"{summary['rss_first_mib']} MiB, last {summary['rss_last_mib']} MiB, max "
          f"{summary['rss_max_mib']} MiB")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
