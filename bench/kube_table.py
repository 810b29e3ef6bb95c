#!/usr/bin/env python3
"""Summarise bench/kube.sh's output directory as markdown tables (stdout).

usage: kube_table.py OUT
Reads OUT/results.tsv (one row per round and sidecar), OUT/footprint.tsv (CPU and RSS
windows), OUT/summary.tsv (single values of the pairs part) and, when the peers part ran,
OUT/peers/results.tsv (bench/failover.sh's rows, same run).
"""
import csv
import os
import statistics
import sys
from collections import defaultdict

out = sys.argv[1]


def read_tsv(path):
    if not os.path.exists(path):
        return []
    return list(csv.DictReader(open(path), delimiter="\t"))


def nums(rows, col):
    return [float(r[col]) for r in rows if r.get(col) not in (None, "", "NA")]


def med(v, spec=".0f"):
    return f"{statistics.median(v):{spec}}" if v else "n/a"


def mm(v, spec=".0f"):
    return f"{statistics.median(v):{spec}} / {max(v):{spec}}" if v else "n/a"


def total_max(v):
    return f"{int(sum(v))} / {int(max(v))}" if v else "n/a"


def notes_of(rows):
    notes = sorted({n for r in rows for n in r["note"].split(";") if n and n != "-"})
    missing = sum(1 for r in rows if r["recovery_ms"] == "NA")
    if missing:
        notes.insert(0, f"{missing} without recovery")
    return "; ".join(notes)[:300] or "-"


results = read_tsv(f"{out}/results.tsv")
footprint = read_tsv(f"{out}/footprint.tsv")
summary = {r["key"]: r["value"] for r in read_tsv(f"{out}/summary.tsv")}
peers = read_tsv(f"{out}/peers/results.tsv")
peer_switchover = [r for r in read_tsv(f"{out}/peers-switchover/results.tsv") if r["fault"] == "switchover"]
groups = defaultdict(list)
for r in results:
    groups[(r["system"], r["fault"])].append(r)

# --- failover through the sidecars ---------------------------------------------------------
fo = {f: groups[("kube", f)] for f in ("kill", "delete") if groups.get(("kube", f))}
if fo:
    fault_name = {"kill": "kill -9 of the master's redis-server", "delete": "graceful deletion of the master pod"}
    print("### Failover through three sidecars (each round, each sidecar)\n")
    print("| fault | rounds × sidecars | writes flow again after, ms (median / max) | published after, ms "
          "(median / max) | sidecar routes after, ms (median / max) | handed over after (as the kubelet's polling saw it), ms (median / max) "
          "| longest ack gap, ms (median / max) | failed writes (total) | lost acked before fault (total / max) "
          "| lost acked, whole round (total / max) | settled after, ms (median / max) | target | notes |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for fault, rs in fo.items():
        rounds = len({r["round"] for r in rs})
        rec = nums(rs, "recovery_ms")
        if fault == "kill":
            target = "< 500 ms median: "
            target += ("n/a" if not rec else "met" if statistics.median(rec) < 500
                       else f"missed by {statistics.median(rec) - 500:.0f} ms")
        else:
            lost = sum(nums(rs, "lost_all"))
            target = "0 lost: " + ("met" if lost == 0 and rs else f"missed, {int(lost)} lost")
        per_round = {}
        for r in rs:
            per_round.setdefault(r["round"], r)  # round-wide columns are the same on every sidecar
        rr = list(per_round.values())
        print(f"| {fault_name[fault]} | {rounds} × {len(rs) // max(rounds, 1)} | {mm(rec)} | "
              f"{mm(nums(rr, 'published_ms'))} | {mm(nums(rs, 'routed_ms'))} | "
              f"{mm(nums(rr, 'handover_ms')) if fault == 'delete' else '-'} | {mm(nums(rs, 'max_gap_ms'))} | "
              f"{int(sum(nums(rs, 'failed')))} | {total_max(nums(rs, 'lost_pre'))} | {total_max(nums(rs, 'lost_all'))} | "
              f"{mm(nums(rr, 'settle_ms'))} | {target} | {notes_of(rs)} |")
    print()

# --- side by side with the peers -----------------------------------------------------------
kill = nums(fo.get("kill", []), "recovery_ms")
peer_kill = defaultdict(list)
for r in peers:
    if r["fault"] == "kill":
        peer_kill[r["system"]].append(r)
if kill and peer_kill:
    print("### kill -9 of the master, side by side (same run)\n")
    print("| system | rounds | writes flow again after, ms (median / max) | × Sentinel (median) "
          "| × redis-pair local (median) | lost acked (total) |")
    print("|---|---:|---:|---:|---:|---:|")
    sent = nums(peer_kill.get("sentinel", []), "recovery_ms")
    local = nums(peer_kill.get("redis-pair", []), "recovery_ms")

    def ratio(v, base):
        return f"{statistics.median(v) / statistics.median(base):.3g}" if v and base and statistics.median(base) > 0 else "n/a"

    rows = [("redis-pair on Kubernetes (controller + 3 sidecars)", fo["kill"], kill)]
    if "redis-pair" in peer_kill:
        rows.append(("redis-pair local (`bench/failover.sh`)", peer_kill["redis-pair"], local))
    if "sentinel" in peer_kill:
        rows.append(("Redis Sentinel (`bench/failover.sh`, 3 sentinels)", peer_kill["sentinel"], sent))
    for name, rs, v in rows:
        label = f"{len({r['round'] for r in rs})} × {len(rs) // max(len({r['round'] for r in rs}), 1)}" if rs is fo["kill"] else str(len(rs))
        print(f"| {name} | {label} | {mm(v)} | {ratio(v, sent)} | {ratio(v, local)} | {int(sum(nums(rs, 'lost_all')))} |")
    if sent and kill:
        print(f"\nredis-pair on Kubernetes resumes writes in {statistics.median(kill) / statistics.median(sent):.3g}× "
              f"Sentinel's median time ({statistics.median(sent) / max(statistics.median(kill), 1):.0f}× faster)"
              + (f", {statistics.median(kill) / max(statistics.median(local), 1):.1f}× local mode's" if local else "")
              + ". No Redis operator runs here (it needs a cluster).")
    print()

# --- planned handover, side by side --------------------------------------------------------
if fo.get("delete") and peer_switchover:
    print("### Planned handover, side by side (same run)\n")
    print("| system | handover | rounds | longest ack gap, ms (median / max) | failed writes (total; per writer and round) "
          "| lost acked (total) |")
    print("|---|---|---:|---:|---:|---:|")
    for name, how, rs in (("redis-pair on Kubernetes (3 sidecars)", "pod deleted (graceful)", fo["delete"]),
                          ("redis-pair local (`bench/failover.sh`)", "`POST /switchover`", peer_switchover)):
        failed = sum(nums(rs, "failed"))
        rounds = len({r["round"] for r in rs})
        label = f"{rounds} × {len(rs) // max(rounds, 1)}" if rs is fo["delete"] else str(rounds)
        print(f"| {name} | {how} | {label} | {mm(nums(rs, 'max_gap_ms'))} | {int(failed)}; {failed / max(len(rs), 1):.2f} "
              f"| {int(sum(nums(rs, 'lost_all')))} |")
    print()

# --- CPU and RSS ---------------------------------------------------------------------------
def fp_rows(part):
    return [r for r in footprint if r["part"] == part and r["cpu_pct"]]


def mib(kb):
    return f"{int(kb) / 1024:.1f}" if kb not in ("", None, "0") else "n/a"


rs = fp_rows("failover")
if rs:
    print("### The sidecar's footprint (and the controllers of one pair), idle\n")
    print("| process | when | window s | CPU, % of one core | RSS MiB | of it anonymous MiB | peak RSS MiB (VmHWM) | machine |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for r in rs:
        print(f"| {r['process']} | {r['phase']} | {r['window_s']} | {r['cpu_pct']} | {mib(r['rss_kb'])} | "
              f"{mib(r['rss_anon_kb'])} | {mib(r['hwm_kb'])} | {r['note']} |")
    sc = [r for r in rs if r["process"].startswith("sidecar") and "before" in r["phase"]]
    if sc:
        worst = max(int(r["rss_kb"]) for r in sc)
        print(f"\nIdle sidecar RSS, target < 8 MiB: {'met' if worst < 8 * 1024 else 'missed'} "
              f"(largest {worst / 1024:.1f} MiB).")
    checks = {k: v for k, v in summary.items() if k.startswith("sidecar_role_checks_in_window")}
    for k, v in checks.items():
        phase = k[k.find("(") + 1:-1]
        win = next((r["window_s"] for r in rs if r["phase"] == phase), None)
        if win:
            print(f"ROLE checks by sidecar-1 ({phase}): {v} in {win} s.")
    print()

# --- many pairs ----------------------------------------------------------------------------
rs = fp_rows("pairs")
k10 = [r for (s, f), v in groups.items() if s.startswith("kube-") for r in v]
if rs or k10:
    pairs = next((s.split("-", 1)[1] for (s, _f) in groups if s.startswith("kube-")), "?")
    print(f"### A controller with {pairs} pairs ({int(pairs) * 2 if pairs.isdigit() else '?'} redis-servers)\n")
    print("| process | CPU idle, % of one core | RSS MiB | of it anonymous MiB | peak RSS MiB | RSS with no pairs MiB | machine |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in rs:
        none = {"controller-leader": summary.get("controller_leader_rss_kb_no_pairs"),
                "controller-follower": summary.get("controller_follower_rss_kb_no_pairs")}.get(r["process"])
        print(f"| {r['process']} | {r['cpu_pct']} | {mib(r['rss_kb'])} | {mib(r['rss_anon_kb'])} | {mib(r['hwm_kb'])} | "
              f"{mib(none) if none else '-'} | {r['note']} |")
    lead = next((r for r in rs if r["process"] == "controller-leader"), None)
    if lead and summary.get("controller_leader_rss_kb_no_pairs") and pairs.isdigit():
        per = (int(lead["rss_kb"]) - int(summary["controller_leader_rss_kb_no_pairs"])) / int(pairs)
        print(f"\nThe leader's RSS grows by {per:.0f} KiB per pair.")
    win = float(lead["window_s"]) if lead else 0
    if "all_healthy_ms" in summary:
        print(f"All {pairs} RedisPairs Healthy {summary['all_healthy_ms']} ms after they were created "
              f"(creating them took {summary.get('pairs_created_ms', '?')} ms).")
    if win and "idle_api_writes" in summary:
        print(f"While idle ({win:.0f} s): {summary['idle_api_writes']} API writes and "
              f"{summary.get('idle_reconciles', '?')} reconciles by the leader"
              + (f" (writes: {summary['idle_api_writes_by_kind']})" if summary.get("idle_api_writes_by_kind") else "") + ".")
    if k10:
        rec = nums(k10, "recovery_ms")
        fault = k10[0]["fault"]
        n = fault.replace("kill", "")
        print(f"\n{n} masters killed at once (kill -9), each pair written through a sidecar of its own "
              f"(one SET every 10 ms):\n")
        print("| pairs | writes flow again after, ms (median / max over pairs) | all pairs take writes after, ms "
              "| published after, ms (median / max) | sidecar routes after, ms (median / max) | failed writes (total) "
              "| lost acked (total / max) | leader CPU s meanwhile | notes |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        cpu_s = summary.get("leader_cpu_s_during_failovers", "n/a")
        print(f"| {len(k10)} | {mm(rec)} | {f'{max(rec):.0f}' if rec else 'n/a'} | "
              f"{mm(nums(k10, 'published_ms'))} | {mm(nums(k10, 'routed_ms'))} | {int(sum(nums(k10, 'failed')))} | "
              f"{total_max(nums(k10, 'lost_all'))} | {cpu_s} | {notes_of(k10)} |")
    print()
