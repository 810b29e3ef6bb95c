#!/usr/bin/env python3
"""Summarise bench/proxy.sh results: medians over rounds, ratio to direct, proxy RSS and CPU.

usage: proxy_table.py OUT_DIR   (reads OUT_DIR/results.tsv, OUT_DIR/rss_idle.tsv; prints markdown)
"""
import csv
import statistics
import sys
from collections import defaultdict

out = sys.argv[1]
rows = list(csv.DictReader(open(f"{out}/results.tsv"), delimiter="\t"))
targets, workloads = [], []
for r in rows:
    if r["target"] not in targets:
        targets.append(r["target"])
    if r["workload"] not in workloads:
        workloads.append(r["workload"])
order = ["direct", "haproxy", "haproxy-splice", "twemproxy", "redis-pair", "redis-pair-alt",
         "direct-unix", "haproxy-unix", "twemproxy-unix", "redis-pair-unix"]
targets.sort(key=lambda t: order.index(t) if t in order else 99)


def med(vals):
    vals = [float(v) for v in vals if v not in ("NA", "", None)]
    return statistics.median(vals) if vals else None


g = defaultdict(list)
for r in rows:
    g[(r["workload"], r["test"], r["target"])].append(r)


def fmt(v, spec):
    return "n/a" if v is None else format(v, spec)


def wl_name(w):
    c, p, d = w.split("-")
    size = "4KiB" if d == "d4096" else d[1:] + "B"
    return f"-c {c[1:]} -P {p[1:]} {size}"


def per_round(rs):
    """round -> ops/s, for the rounds where the run succeeded."""
    return {r["round"]: float(r["rps"]) for r in rs if r["rps"] not in ("NA", "")}


print("| workload | test | target | ops/s | p50 ms | p99 ms | × direct | × direct, per round (min–max) | proxy CPU s/M req | proxy peak RSS MiB (lowest round) |")
print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
ratios = defaultdict(list)
for w in workloads:
    for test in ("SET", "GET"):
        base = med(r["rps"] for r in g[(w, test, "direct")])
        for t in targets:
            rs = g[(w, test, t)]
            if not rs:
                continue
            rps = med(r["rps"] for r in rs)
            ratio = rps / base if (rps and base) else None
            if ratio is not None and t != "direct":
                ratios[(t, w.split("-")[1])].append(ratio)
            cpu = med(r["cpu_s_per_M"] for r in rs) if not t.startswith("direct") else None
            # RSS is not given back after a -c 500 run, so a later round's peak includes it: take
            # the lowest peak over the rounds (round 1 runs the workloads in order).
            rss = [float(r["rss_peak_kb"]) for r in rs if r["rss_peak_kb"] not in ("NA", "", "0")]
            rss = min(rss) / 1024 if (rss and not t.startswith("direct")) else None
            # Rounds interleave the targets, so a round's ratio compares runs made minutes
            # apart: its spread is the noise of this row on this machine.
            direct_by_round = per_round(g[(w, test, "direct")])
            by_round = [v / direct_by_round[k] for k, v in per_round(rs).items() if direct_by_round.get(k)]
            spread = f"{min(by_round):.2f}–{max(by_round):.2f}" if by_round else "n/a"
            print(f"| {wl_name(w)} | {test} | {t} | {fmt(rps, ',.0f')} | "
                  f"{fmt(med(r['p50_ms'] for r in rs), '.3f')} | {fmt(med(r['p99_ms'] for r in rs), '.3f')} | "
                  f"{fmt(ratio, '.2f')} | {spread} | {fmt(cpu, '.2f')} | {fmt(rss, '.1f')} |")

print()
print("Ratio to direct, min–max over rows (median ops/s per row):")
print()
print("| target | -P 1 | -P 16 |")
print("|---|---|---|")
for t in targets:
    if t == "direct":
        continue
    cells = []
    for p in ("P1", "P16"):
        v = ratios.get((t, p))
        cells.append(f"{min(v):.2f}–{max(v):.2f}" if v else "n/a")
    print(f"| {t} | {cells[0]} | {cells[1]} |")

# Head to head: in how many rounds redis-pair beat each other proxy on each row, clients on
# the same transport. A row where the medians say "behind" but the rounds split is noise.
for ours, suffix in (("redis-pair", ""), ("redis-pair-unix", "-unix")):
    rivals = [t for t in targets
              if not t.startswith(("direct", "redis-pair")) and t.endswith("-unix") == bool(suffix)]
    if ours not in targets or not rivals:
        continue
    print()
    print(f"Rounds in which {ours} had more ops/s than each other proxy (same round):")
    print()
    print("| workload | test | " + " | ".join(rivals) + " |")
    print("|---|---|" + "---:|" * len(rivals))
    for w in workloads:
        for test in ("SET", "GET"):
            mine = per_round(g[(w, test, ours)])
            cells = []
            for t in rivals:
                theirs = per_round(g[(w, test, t)])
                both = [k for k in mine if k in theirs]
                ahead = sum(mine[k] > theirs[k] for k in both)
                cells.append(f"{ahead}/{len(both)}" if both else "n/a")
            print(f"| {wl_name(w)} | {test} | " + " | ".join(cells) + " |")

print()
idle = defaultdict(dict)
try:
    for line in open(f"{out}/rss_idle.tsv"):
        t, when, kb = line.split()
        idle[t][when] = int(kb)
except FileNotFoundError:
    pass
peak = defaultdict(float)
for r in rows:
    if r["rss_peak_kb"] not in ("NA", ""):
        peak[r["target"]] = max(peak[r["target"]], float(r["rss_peak_kb"]))
print("| proxy | RSS idle at start MiB | RSS peak under load MiB | RSS idle after the runs MiB | CPU s/M req (median over all runs) |")
print("|---|---:|---:|---:|---:|")
for t in targets:
    if t.startswith("direct"):
        continue
    cpu = med(r["cpu_s_per_M"] for r in rows if r["target"] == t and r["test"] == "SET")
    s, a = idle[t].get("start"), idle[t].get("after")
    print(f"| {t} | {fmt(s and s / 1024, '.1f')} | {fmt(peak[t] / 1024, '.1f')} | "
          f"{fmt(a and a / 1024, '.1f')} | {fmt(cpu, '.2f')} |")


# Is each run CPU-bound, and does the CPU the whole machine spends per request explain the
# throughput? One redis-benchmark invocation runs SET then GET: its requests per second are
# 2N over the time of both, and the machine's busy time covers both.
if rows and "machine_cpu_s_per_M" in rows[0]:
    print()
    print("Whole machine, per redis-benchmark run (SET and GET together; median over rounds). "
          "*All CPU* is the busy time of both cores per request: client, both redis-servers, "
          "the proxy. *Predicted* is direct's all-CPU divided by the target's: the ratio to "
          "direct that the extra CPU alone would give on CPUs kept busy.")
    print()
    print("| workload | target | req/s | × direct | all CPU µs/req | idle % | predicted × direct | redis-servers CPU µs/req | proxy CPU µs/req |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")

    def run_rps(rs):
        by_round = defaultdict(dict)
        for r in rs:
            if r["rps"] not in ("NA", ""):
                by_round[r["round"]][r["test"]] = float(r["rps"])
        vals = [2 / (1 / v["SET"] + 1 / v["GET"]) for v in by_round.values() if len(v) == 2]
        return statistics.median(vals) if vals else None

    for w in workloads:
        runs = {t: [r for r in rows if r["workload"] == w and r["target"] == t] for t in targets}
        base_rps = run_rps(runs.get("direct", []))
        base_cpu = med(r["machine_cpu_s_per_M"] for r in runs.get("direct", []))
        for t in targets:
            rs = runs[t]
            if not rs:
                continue
            rps = run_rps(rs)
            cpu = med(r["machine_cpu_s_per_M"] for r in rs)
            predicted = base_cpu / cpu if (base_cpu and cpu) else None
            ratio = rps / base_rps if (rps and base_rps) else None
            proxy = med(r["cpu_s_per_M"] for r in rs) if not t.startswith("direct") else None
            print(f"| {wl_name(w)} | {t} | {fmt(rps, ',.0f')} | {fmt(ratio, '.2f')} | "
                  f"{fmt(cpu, '.1f')} | {fmt(med(r['idle_pct'] for r in rs), '.1f')} | "
                  f"{fmt(predicted, '.2f')} | {fmt(med(r['redis_cpu_s_per_M'] for r in rs), '.1f')} | "
                  f"{fmt(proxy, '.1f')} |")
