#!/usr/bin/env python3
"""A compressed day with flash crowds, as an Azure-format trace (TIMESTAMP,ContextTokens,
GeneratedTokens) for `infergate simulate --trace`: Poisson arrivals whose rate follows a day's
shape (trough -> peak -> trough, a half sine) over DURATION seconds, with two crowds on top
(4x the rate for 90 s at a quarter of the day, 6x for 45 s at 70 %); prompt and output lengths
lognormal around 1000 and 250 tokens. Seeded, so each seed is one reproducible trace.

    benches/flash_crowd.py SEED OUT.csv [--duration 3600] [--trough 2] [--peak 20]
"""
import argparse
import datetime
import math
import random


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
    start = datetime.datetime(2023, 11, 16, 0, 0, 0)
    t, n = 0.0, 0
    with open(args.out, "w") as f:
        f.write("TIMESTAMP,ContextTokens,GeneratedTokens\n")
        while True:
            # Thinning: candidate arrivals at the top rate, each kept with rate(t) / top.
            t += rng.expovariate(top)
            if t >= d:
                break
            if rng.random() * top > rate(t):
                continue
            prompt = max(16, min(16000, int(rng.lognormvariate(math.log(1000), 0.8))))
            output = max(4, min(2000, int(rng.lognormvariate(math.log(250), 0.7))))
            stamp = start + datetime.timedelta(seconds=t)
            f.write(f"{stamp.strftime('%Y-%m-%d %H:%M:%S.%f')}0,{prompt},{output}\n")
            n += 1
    print(f"{args.out}: {n} requests over {d:.0f} s, crowds {crowds}")


if __name__ == "__main__":
    main()
