"""Prints CPU ticks (user+system, all threads) of a process tree: cpu.py PID [PID...].
Children are included, so a postmaster's pid covers its backends."""

import os
import sys


def stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[1]), int(fields[11]) + int(fields[12])  # ppid, utime + stime


roots = {int(p) for p in sys.argv[1:]}
procs = {}
for name in os.listdir("/proc"):
    if name.isdigit():
        try:
            procs[int(name)] = stat(name)
        except (OSError, IndexError, ValueError):
            pass
total = 0
for pid, (ppid, ticks) in procs.items():
    p, seen = pid, 0
    while p and seen < 64:
        if p in roots:
            total += ticks
            break
        p = procs.get(p, (0, 0))[0]
        seen += 1
print(total)
