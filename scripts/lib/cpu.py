"""Prints CPU ticks (user+system, all threads) of a process tree: cpu.py PID [PID...].
Children are included, so a postmaster's pid covers its backends, and so are children that
have exited (cutime+cstime), so a backend that closed during the run still counts."""

import os
import sys


def stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # ppid; utime + stime + cutime + cstime
    return int(fields[1]), sum(int(f) for f in fields[11:15])


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
