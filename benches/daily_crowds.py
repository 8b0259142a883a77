#!/usr/bin/env python3
"""Several days with a daily shape and a flash crowd a day, as an Azure-format trace
(TIMESTAMP,ContextTokens,GeneratedTokens) for `infergate simulate --trace`: Poisson arrivals
whose rate follows each day's shape (a trough at 04:00, a peak at 16:00, a cosine between), and
one crowd a day (4x the rate for 10 minutes, `--crowd-factor`) at 09:00 every day (`--crowds same`) or at a
random hour of each day (`--crowds random`); prompt and output lengths lognormal around 1000
and 250 tokens, as in flash_crowd.py. The trace starts at midnight, so the simulation's days
are its days. Seeded, so each seed is one reproducible trace.

    benches/daily_crowds.py SEED OUT.csv [--days 4] [--crowds same|random] [--trough 0.5]
        [--peak 3] [--crowd-factor 4]
"""
import argparse
import math
import random

import azure_trace

DAY = 86400.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("seed", type=int)
    parser.add_argument("out")
    parser.add_argument("--days", type=int, default=4)
    parser.add_argument("--crowds", choices=["same", "random"], default="same")
    parser.add_argument("--trough", type=float, default=0.5, help="requests/s at 04:00")
    parser.add_argument("--peak", type=float, default=3.0, help="requests/s at 16:00")
    parser.add_argument("--crowd-factor", type=float, default=4.0, help="the crowd's rate, x")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    hours = [9.0 if args.crowds == "same" else rng.uniform(0.0, 23.8) for _ in range(args.days)]
    crowds = [(day * DAY + hour * 3600.0, 600.0, args.crowd_factor) for day, hour in enumerate(hours)]

    def rate(t):
        phase = 2.0 * math.pi * ((t % DAY) / DAY - 16.0 / 24.0)
        base = args.trough + (args.peak - args.trough) * (1.0 + math.cos(phase)) / 2.0
        for start, length, factor in crowds:
            if start <= t < start + length:
                return base * factor
        return base

    end = args.days * DAY
    top = args.peak * max(args.crowd_factor, 1.0)
    n = azure_trace.write(args.out, rng, rate, end, top)
    when = ", ".join(f"day {d} {h:05.2f} h" for d, h in enumerate(hours))
    print(f"{args.out}: {n} requests over {args.days} days, "
          f"crowds ({args.crowd_factor:g}x, 10 min) at {when}")


if __name__ == "__main__":
    main()
