#!/usr/bin/env python3
"""Analyse one failover round from the writer's log (see examples/failover_writer.rs).

usage: failover_analyze.py WRITER_LOG T_FAULT_NS T_SENT_AFTER_NS PREFIX KEYS_FILE
  T_FAULT_NS: just before the signal/call; T_SENT_AFTER_NS: just after the signal was sent.
  KEYS_FILE: the keys present on the final master (one per line, `redis-cli --scan` output).
Prints one TSV line:
  recovery_ms  max_gap_ms  acked  failed  lost_pre  lost_all
recovery_ms: from T_FAULT to the ack of the first write *sent* after T_SENT_AFTER (so it cannot
  have been answered by the old master before it died or hung); NA if none.
max_gap_ms: the longest time between two consecutive acks from 1 s before the fault onwards
  (for a planned switchover this is the write pause the clients saw).
lost_pre: writes acknowledged before the fault that the final master lacks.
lost_all: writes acknowledged at any time in the round that the final master lacks.
"""
import sys

log, t_fault, t_after, prefix, keys_file = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
acks = []  # (seq, sent, ack)
failed = 0
for line in open(log):
    f = line.split()
    if not f:
        continue
    if f[0] == "ack":
        acks.append((int(f[1]), int(f[2]), int(f[3])))
    elif f[0] == "err":
        failed += 1
present = set()
for k in open(keys_file):
    k = k.strip()
    if k.startswith(prefix):
        try:
            present.add(int(k[len(prefix):]))
        except ValueError:
            pass

after = [a for a in acks if a[1] > t_after]
recovery = f"{(after[0][2] - t_fault) / 1e6:.0f}" if after else "NA"
times = sorted(a[2] for a in acks if a[2] >= t_fault - 1_000_000_000)
gaps = [b - a for a, b in zip(times, times[1:])]
# a fault after the last ack: the gap runs to the end of the log
max_gap = f"{max(gaps) / 1e6:.0f}" if gaps else "NA"
lost_pre = sum(1 for s, _, t in acks if t < t_fault and s not in present)
lost_all = sum(1 for s, _, _ in acks if s not in present)
print(f"{recovery}\t{max_gap}\t{len(acks)}\t{failed}\t{lost_pre}\t{lost_all}")
