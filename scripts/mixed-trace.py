#!/usr/bin/env python3
"""Writes a `lapsd sim --trace` file of a mixed code + chat workload: Poisson arrivals at RATE
req/s, each request a code edit or chatbot-like with probability 1/2, as `lapsd bench --workload
mixed` sends them. Chat uses the simulator's built-in chatbot profile (crates/sim/src/workload.rs:
prompt and reply lengths log-normal around their medians, clamped; per-request acceptance from a
Beta). A code edit carries the function it edits in its prompt (median 150 tokens) and mostly
repeats it (reply median 120 tokens, as `lapsd bench`'s code-edit profile), so its drafts are
mostly accepted: Beta(17, 2.5), mean 0.87 (measured: prompt-lookup drafts 0.88 on a code edit,
the Qwen2.5-Coder 0.5B draft 1.0; docs/engine-benchmark.md).

Usage: scripts/mixed-trace.py RATE REQUESTS SEED OUT.jsonl
"""
import json
import math
import random
import sys

# (prompt median, sigma, min, max), (reply median, sigma, min, max), acceptance Beta(a, b)
PROFILES = {
    "code-edit": ((150, 0.3, 40, 512), (120, 0.4, 8, 512), (17.0, 2.5)),
    "chatbot": ((24, 0.9, 4, 512), (120, 0.9, 4, 1024), (6.5, 3.5)),
}


def main() -> None:
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    rate, count, seed, out = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    if rate <= 0 or count <= 0:
        sys.exit(f"error: RATE and REQUESTS must be positive, got {rate} and {count}")
    rng = random.Random(seed)

    def length(median: float, sigma: float, lo: int, hi: int) -> int:
        return int(min(max(round(rng.lognormvariate(math.log(median), sigma)), lo), hi))

    arrival_s = 0.0
    with open(out, "w", encoding="utf-8") as f:
        for _ in range(count):
            prompt, reply, (a, b) = PROFILES["code-edit" if rng.random() < 0.5 else "chatbot"]
            line = {
                "arrival_s": arrival_s,
                "prompt_tokens": length(*prompt),
                "output_tokens": length(*reply),
                "acceptance_rate": rng.betavariate(a, b),
            }
            f.write(json.dumps(line) + "\n")
            arrival_s += rng.expovariate(rate)


if __name__ == "__main__":
    main()
