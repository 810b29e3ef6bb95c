#!/usr/bin/env python3
"""Summarise bench/failover.sh results.tsv: median and max per system and fault."""
import csv
import statistics
import sys
from collections import defaultdict

out = sys.argv[1]
rows = list(csv.DictReader(open(f"{out}/results.tsv"), delimiter="\t"))
g = defaultdict(list)
order = []
for r in rows:
    k = (r["system"], r["fault"])
    if k not in order:
        order.append(k)
    g[k].append(r)


def nums(rs, col):
    return [float(r[col]) for r in rs if r[col] not in ("NA", "")]


def mm(v, spec=".0f"):
    if not v:
        return "n/a"
    return f"{statistics.median(v):{spec}} / {max(v):{spec}}"


fault_name = {"kill": "kill -9 master", "stop": "SIGSTOP master", "switchover": "planned switchover"}
print("| system | fault | rounds | writes flow again after, ms (median / max) | longest ack gap, ms (median / max) "
      "| lost acked before fault (total / max) | lost acked, whole round (total / max) | switchover call ms (median) | settled after ms (median / max) | notes |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
for sys_, fault in sorted(order, key=lambda k: (["kill", "stop", "switchover"].index(k[1]) if k[1] in fault_name else 9, k[0])):
    rs = g[(sys_, fault)]
    rec = nums(rs, "recovery_ms")
    missing = sum(1 for r in rs if r["recovery_ms"] == "NA")
    lp, la = nums(rs, "lost_pre"), nums(rs, "lost_all")
    op = nums(rs, "op_ms")
    notes = sorted({n for r in rs for n in r["note"].split(";") if n and n != "-" and not n.startswith(("POST 200", "FAILOVER OK"))})
    if missing:
        notes.insert(0, f"{missing} round(s) without recovery")
    print(f"| {sys_} | {fault_name.get(fault, fault)} | {len(rs)} | {mm(rec)} | {mm(nums(rs, 'max_gap_ms'))} | "
          f"{int(sum(lp))} / {int(max(lp)) if lp else 0} | {int(sum(la))} / {int(max(la)) if la else 0} | "
          f"{f'{statistics.median(op):.0f}' if op else '-'} | {mm(nums(rs, 'settle_ms')) if fault != 'kill' else '-'} | {'; '.join(notes)[:300]} |")
