#!/usr/bin/env python3
"""Summarises fleet-simulation reports (report.json in each subdirectory of OUT) as Markdown
tables for BENCHMARKS.md: routing runs get predicted-ttft's p90 TTFT against round robin and
against the best baseline; scaling runs get SLO attainment and cost against hpa and kpa. A
directory NAME-slo-T (a run with the pool's SLO stated at attainment target T) joins NAME's
table as the row "infergate, slo T".

Usage: benches/fleet_summary.py OUT_DIR
"""
import json
import pathlib
import sys


def ms(v):
    return f"{v * 1000:.0f}"


def routing_table(name, runs):
    print(f"\n**{name}**\n")
    print("| policy | TTFT p50 ms | p90 ms | p99 ms | ITL p90 ms | tok/s | SLO | cache hit | failed |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        failed = sum(r["failed"].values())
        print(
            f'| {r["name"]} | {ms(r["ttft"]["p50"])} | {ms(r["ttft"]["p90"])} | {ms(r["ttft"]["p99"])} '
            f'| {ms(r["itl"]["p90"])} | {r["throughput"]:.0f} | {100 * r["slo_attainment"]:.1f} % '
            f'| {100 * r["prefix_cache_hit_rate"]:.1f} % | {failed} |'
        )
    ours = next((r for r in runs if r["name"] == "predicted-ttft"), None)
    base = [r for r in runs if r["name"] != "predicted-ttft"]
    if ours and base:
        best = min(base, key=lambda r: r["ttft"]["p90"])
        rr = next((r for r in base if r["name"] == "round-robin"), None)
        line = f'predicted-ttft p90 TTFT: {ours["ttft"]["p90"] / best["ttft"]["p90"]:.2f}x the best baseline ({best["name"]})'
        if rr:
            line += f', {ours["ttft"]["p90"] / rr["ttft"]["p90"]:.2f}x round-robin'
        line += f'; throughput {ours["throughput"] / max(r["throughput"] for r in base):.3f}x the best baseline'
        print(f"\n{line}")


def scaling_table(name, runs):
    print(f"\n**{name}**\n")
    print("| scaler | SLO attainment | TTFT p99 s | replica-s | scale up/down | max replicas | failed |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        failed = sum(r["failed"].values())
        print(
            f'| {r["name"]} | {100 * r["slo_attainment"]:.2f} % | {r["ttft"]["p99"]:.2f} '
            f'| {r["replica_seconds"]:.0f} | {r["scale_ups"]}/{r["scale_downs"]} | {r["max_replicas"]} | {failed} |'
        )
    by = {r["name"].replace("scaler=", ""): r for r in runs}
    for ours in (n for n in by if n.startswith("infergate")):
        if "hpa" in by:
            print(
                f'\n{ours}: {by[ours]["replica_seconds"] / by["hpa"]["replica_seconds"]:.2f}x the replica-seconds of hpa'
                + (f', {by[ours]["replica_seconds"] / by["kpa"]["replica_seconds"]:.2f}x kpa\'s' if "kpa" in by else "")
            )


def main():
    out = pathlib.Path(sys.argv[1])
    for report in sorted(out.glob("*/report.json")):
        if report.parent.name.endswith("-capacity") or "-slo-" in report.parent.name:
            continue
        data = json.loads(report.read_text())
        runs = data["runs"]
        for slo in sorted(out.glob(f"{report.parent.name}-slo-*/report.json")):
            target = slo.parent.name.rsplit("-slo-", 1)[1]
            runs += [dict(json.loads(slo.read_text())["runs"][0], name=f"infergate, slo {target}")]
        w = data["workload"]
        title = f'{report.parent.name} ({w["requests"]} requests, {w["mean_rate"]:.2f}/s)'
        if any(r["name"].startswith("scaler=") for r in runs):
            scaling_table(title, runs)
        else:
            routing_table(title, runs)


if __name__ == "__main__":
    main()
