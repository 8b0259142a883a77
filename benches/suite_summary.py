#!/usr/bin/env python3
"""Summarises benches/fleet_suite.sh's reports: for every workload, load and seed, the default
policy's (predicted-ttft) p90 TTFT over the best baseline's, which baseline that was, and the
default's SLO attainment and goodput against the best of the baselines on each. Every cell is
printed; the closing lines count the cells the default loses and the workloads it wins by 1.3x.

Usage: benches/suite_summary.py OUT_DIR
"""
import collections
import json
import pathlib
import re
import sys

OURS = "predicted-ttft"


def main():
    out = pathlib.Path(sys.argv[1])
    cells = []
    for report in out.glob("*-seed-*-load-*/report.json"):
        m = re.fullmatch(r"(.+)-seed-(\d+)-load-(\d+)", report.parent.name)
        runs = {r["name"]: r for r in json.loads(report.read_text())["runs"]}
        if OURS not in runs:
            continue
        cells.append((m.group(1), int(m.group(3)), int(m.group(2)), runs))
    cells.sort(key=lambda c: (c[0], c[1], c[2]))
    print("| workload | load | seed | p90 TTFT ours / best baseline | best baseline | "
          "ours p90 ms | SLO ours / best | goodput ours / best |")
    print("|---|---:|---:|---:|---|---:|---:|---:|")
    losses, wins = [], collections.defaultdict(list)
    for name, load, seed, runs in cells:
        ours = runs[OURS]
        base = [r for n, r in runs.items() if n not in (OURS, "round-robin")]
        best = min(base, key=lambda r: r["ttft"]["p90"])
        ratio = ours["ttft"]["p90"] / max(best["ttft"]["p90"], 1e-9)
        slo_best = max(r["slo_attainment"] for r in base)
        good_best = max(r["goodput"] for r in base)
        worse = ratio > 1.0 or ours["slo_attainment"] < slo_best or ours["goodput"] < good_best * 0.999
        if worse:
            losses.append(f"{name} {load}% seed {seed}")
        wins[name].append(ratio)
        print(f"| {name} | {load} % | {seed} | {ratio:.2f} | {best['name']} | "
              f"{ours['ttft']['p90'] * 1000:.0f} | {100 * ours['slo_attainment']:.1f} / "
              f"{100 * slo_best:.1f} % | {ours['goodput'] / max(good_best, 1e-9):.3f} |")
    print(f"\ncells where the default is worse than the best baseline on p90 TTFT, SLO or "
          f"goodput: {len(losses)} of {len(cells)}" + (f" ({'; '.join(losses)})" if losses else ""))
    won = [n for n, r in wins.items() if all(x <= 1 / 1.3 for x in r)]
    print(f"workloads where every cell is at most 1/1.3 of the best baseline's p90 TTFT: "
          f"{len(won)} ({', '.join(won) or 'none'})")


if __name__ == "__main__":
    main()
