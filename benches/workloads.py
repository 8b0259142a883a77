#!/usr/bin/env python3
"""Workloads of our own for the fleet benchmarks, as Mooncake-format traces (one JSON object a
line: `timestamp` ms, `input_length`, `output_length`, `hash_ids` naming the prompt's 512-token
blocks, so shared blocks are shared exactly) for `infergate simulate --trace` and `loadgen`.
Seeded: each (kind, seed) is one reproducible trace. Rates are in sessions (or requests) per
second at scale 1; the benchmarks time-scale them to a share of a fleet's capacity.

  agentic      tool-using agents: 64 agents whose system prompts (2-8k tokens) are Zipf-popular,
               the popularity reshuffled in part every 5 minutes (drift); runs arrive in bursts
               (gamma inter-arrivals, cv 3); each run makes 2-8 calls whose context grows by the
               call's output and a tool result; short outputs (20-150 tokens)
  multi-turn   chat sessions of 3-12 turns, each turn's prompt the whole conversation so far
               plus a new message, 5-60 s apart; one of 4 system prompts; Poisson sessions
  long-context a mix: 90 % short chat, 10 % long documents (16-96k tokens, a third of them a
               re-asked document from a set of 20, i.e. a shared prefix); Poisson

    benches/workloads.py KIND SEED OUT.jsonl [--duration 900] [--rate R]
"""
import argparse
import json
import math
import random

BLOCK = 512


class Blocks:
    """Hands out block ids: a named prefix keeps its ids, anything else gets fresh ones."""

    def __init__(self):
        self.next = 0
        self.named = {}

    def fresh(self, tokens):
        n = max(1, math.ceil(tokens / BLOCK))
        ids = list(range(self.next, self.next + n))
        self.next += n
        return ids

    def prefix(self, name, tokens):
        if name not in self.named:
            self.named[name] = self.fresh(tokens)
        return self.named[name]


def arrivals(rng, rate, duration, cv=1.0):
    """Arrival times until `duration`: gamma inter-arrivals with mean 1/rate and coefficient
    of variation cv (1: Poisson)."""
    shape, t = 1.0 / (cv * cv), 0.0
    while True:
        t += rng.gammavariate(shape, 1.0 / (rate * shape))
        if t >= duration:
            return
        yield t


def lognormal(rng, median, sigma, lo, hi):
    return int(min(hi, max(lo, rng.lognormvariate(math.log(median), sigma))))


def agentic(rng, duration, rate):
    blocks, out = Blocks(), []
    agents = 64
    system = [lognormal(rng, 4000, 0.4, 2000, 8000) for _ in range(agents)]
    weights = [1.0 / (k + 1) ** 1.1 for k in range(agents)]
    order = list(range(agents))
    next_drift = 300.0
    for t in arrivals(rng, rate, duration, cv=3.0):
        while t >= next_drift:
            # A third of the ranks change hands: a popular agent may cool down, a rare one
            # become popular.
            ranks = rng.sample(range(agents), agents // 3)
            moved = [order[r] for r in ranks]
            rng.shuffle(moved)
            for r, a in zip(ranks, moved):
                order[r] = a
            next_drift += 300.0
        agent = order[rng.choices(range(agents), weights)[0]]
        context = blocks.prefix(f"agent-{agent}", system[agent])
        tokens = system[agent]
        task = rng.randint(200, 800)
        context, tokens = context + blocks.fresh(task), tokens + task
        at = t
        for _ in range(rng.randint(2, 8)):
            output = rng.randint(20, 150)
            out.append((at, tokens, output, list(context)))
            # The call's answer and the tool's result join the context of the next call.
            tool = lognormal(rng, 400, 0.8, 50, 3000)
            context, tokens = context + blocks.fresh(output + tool), tokens + output + tool
            at += 0.3 + output * 0.015 + rng.uniform(0.2, 2.0)
    return out


def multi_turn(rng, duration, rate):
    blocks, out = Blocks(), []
    systems = [rng.randint(300, 1500) for _ in range(4)]
    for t in arrivals(rng, rate, duration):
        s = rng.randrange(len(systems))
        context, tokens = list(blocks.prefix(f"system-{s}", systems[s])), systems[s]
        at = t
        for _ in range(rng.randint(3, 12)):
            message = lognormal(rng, 150, 0.8, 10, 2000)
            context, tokens = context + blocks.fresh(message), tokens + message
            output = lognormal(rng, 250, 0.6, 20, 1200)
            out.append((at, tokens, output, list(context)))
            context, tokens = context + blocks.fresh(output), tokens + output
            at += output * 0.015 + rng.uniform(5.0, 60.0)
    return out


def long_context(rng, duration, rate):
    blocks, out = Blocks(), []
    documents = [rng.randint(16_000, 96_000) for _ in range(20)]
    for t in arrivals(rng, rate, duration):
        if rng.random() < 0.1:
            if rng.random() < 1 / 3:
                d = rng.randrange(len(documents))
                context, tokens = list(blocks.prefix(f"doc-{d}", documents[d])), documents[d]
            else:
                tokens = rng.randint(16_000, 96_000)
                context = blocks.fresh(tokens)
            question = rng.randint(30, 300)
            out.append((t, tokens + question, rng.randint(200, 800), context + blocks.fresh(question)))
        else:
            prompt = lognormal(rng, 700, 0.7, 50, 2000)
            out.append((t, prompt, lognormal(rng, 250, 0.5, 50, 400), blocks.fresh(prompt)))
    return out


KINDS = {
    "agentic": (agentic, 1.0),
    "multi-turn": (multi_turn, 0.3),
    "long-context": (long_context, 4.0),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=sorted(KINDS))
    parser.add_argument("seed", type=int)
    parser.add_argument("out")
    parser.add_argument("--duration", type=float, default=900.0, help="seconds of arrivals")
    parser.add_argument("--rate", type=float, help="sessions (or requests) per second")
    args = parser.parse_args()
    make, default_rate = KINDS[args.kind]
    rng = random.Random(f"{args.kind}-{args.seed}")
    requests = make(rng, args.duration, args.rate or default_rate)
    requests = sorted(r for r in requests if r[0] < args.duration)
    with open(args.out, "w") as f:
        for at, tokens, output, ids in requests:
            f.write(json.dumps({"timestamp": round(at * 1000), "input_length": tokens,
                                "output_length": output, "hash_ids": ids}) + "\n")
    span = requests[-1][0] if requests else 0.0
    print(f"{args.kind} seed {args.seed}: {len(requests)} requests over {span:.0f} s "
          f"({len(requests) / max(span, 1e-9):.2f}/s), mean prompt "
          f"{sum(r[1] for r in requests) / max(len(requests), 1):.0f} tokens")


if __name__ == "__main__":
    main()
