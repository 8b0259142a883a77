"""Writes Azure-format traces (TIMESTAMP,ContextTokens,GeneratedTokens) of Poisson arrivals at
a rate that changes over time, for the trace generators (flash_crowd.py, daily_crowds.py)."""
import datetime
import math

START = datetime.datetime(2023, 11, 16, 0, 0, 0)


def write(out, rng, rate, end, top):
    """Arrivals over `end` seconds at `rate(t)` (at most `top`) requests per second, from
    midnight; prompt and output lengths lognormal around 1000 and 250 tokens. Returns how many
    were written."""
    t, n = 0.0, 0
    with open(out, "w") as f:
        f.write("TIMESTAMP,ContextTokens,GeneratedTokens\n")
        while True:
            # Thinning: candidate arrivals at the top rate, each kept with rate(t) / top.
            t += rng.expovariate(top)
            if t >= end:
                break
            if rng.random() * top > rate(t):
                continue
            prompt = max(16, min(16000, int(rng.lognormvariate(math.log(1000), 0.8))))
            output = max(4, min(2000, int(rng.lognormvariate(math.log(250), 0.7))))
            stamp = START + datetime.timedelta(seconds=t)
            f.write(f"{stamp.strftime('%Y-%m-%d %H:%M:%S.%f')}0,{prompt},{output}\n")
            n += 1
    return n
