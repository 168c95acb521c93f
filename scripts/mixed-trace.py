#!/usr/bin/env python3
"""Writes a `lapsd sim --trace` file of a mixed code + chat workload: Poisson arrivals at RATE
req/s, each request MBPP-like or chatbot-like with probability 1/2, with the simulator's built-in
profiles of both (crates/sim/src/workload.rs: prompt and reply lengths log-normal around their
medians, clamped; per-request acceptance from a Beta).

Usage: scripts/mixed-trace.py RATE REQUESTS SEED OUT.jsonl
"""
import json
import math
import random
import sys

# (prompt median, sigma, min, max), (reply median, sigma, min, max), acceptance Beta(a, b)
PROFILES = {
    "mbpp": ((90, 0.35, 30, 512), (110, 0.6, 8, 512), (8.0, 2.5)),
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
            prompt, reply, (a, b) = PROFILES["mbpp" if rng.random() < 0.5 else "chatbot"]
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
