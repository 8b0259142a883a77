#!/usr/bin/env python3
"""A compressed day with flash crowds, as an Azure-format trace (TIMESTAMP,ContextTokens,
GeneratedTokens) for `infergate simulate --trace`: Poisson arrivals whose rate follows a day's
shape (trough -> peak -> trough, a half sine) over DURATION seconds, with two crowds on top
(4x the rate for 90 s at a quarter of the day, 6x for 45 s at 70 %); prompt and output lengths
lognormal around 1000 and 250 tokens. Seeded, so each seed is one reproducible trace.

    benches/flash_crowd.py SEED OUT.csv [--duration 3600] [--trough 2] [--peak 20]
"""
import argparse
import math
import random

import azure_trace


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("seed", type=int)
    parser.add_argument("out")
    parser.add_argument("--duration", type=float, default=3600.0, help="seconds of the day")
    parser.add_argument("--trough", type=float, default=2.0, help="requests/s at night")
    parser.add_argument("--peak", type=float, default=20.0, help="requests/s at noon")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    d = args.duration
    crowds = [(0.25 * d, 90.0, 4.0), (0.70 * d, 45.0, 6.0)]

    def rate(t):
        day = args.trough + (args.peak - args.trough) * math.sin(math.pi * t / d)
        for start, length, factor in crowds:
            if start <= t < start + length:
                return day * factor
        return day

    top = max(args.peak * 6.0, args.trough)
    n = azure_trace.write(args.out, rng, rate, d, top)
    print(f"{args.out}: {n} requests over {d:.0f} s, crowds {crowds}")


if __name__ == "__main__":
    main()
