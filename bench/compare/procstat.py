"""Memory and CPU time of a process and its children, from /proc (stdlib only).

  procstat.py PID     prints JSON: pids, rss_kib, anon_kib and file_kib (RSS's anonymous and
                      file-backed parts), pss_kib, hwm_kib (peak RSS), cpu_s (user + system),
                      sys_s (system alone), each summed over PID and its direct children (an
                      nginx master and its workers; taskgate is one process)
  procstat.py busy PID
                      prints JSON: the load average, and the processes outside PID's tree that
                      used 5 % of a core or more over one second ("name pct%")
"""
import json
import os
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    out.append(int(d))
            except OSError:
                pass
    return out


def status(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def pss(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_s(pid, user=True):
    """CPU time of pid: user + system, or only system (user=False)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return ((int(fields[11]) if user else 0) + int(fields[12])) / TICK


def busy(ours):
    def snapshot():
        snap = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as f:
                        head, tail = f.read().rsplit(")", 1)
                    fields = tail.split()
                    snap[int(d)] = (head.split("(", 1)[1], int(fields[1]),
                                    int(fields[11]) + int(fields[12]))
                except (OSError, IndexError):
                    pass
        return snap

    a = snapshot()
    time.sleep(1)
    b = snapshot()

    def in_tree(pid):
        seen = set()
        while pid > 1 and pid not in seen:
            if pid == ours:
                return True
            seen.add(pid)
            pid = b.get(pid, a.get(pid, ("", 0, 0)))[1]
        return False

    rows = []
    for pid, (name, _, ticks) in b.items():
        pct = (ticks - a.get(pid, (name, 0, ticks))[2]) * 100 / TICK
        if pct >= 5 and not in_tree(pid):
            rows.append((pct, f"{name} {pct:.0f}%"))
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    print(json.dumps({"loadavg": load, "busy": [r for _, r in sorted(rows, reverse=True)]}))


if sys.argv[1] == "busy":
    busy(int(sys.argv[2]))
    sys.exit()
root = int(sys.argv[1])
pids = [root] + children(root)
print(json.dumps({
    "pids": pids,
    "rss_kib": sum(status(p, "VmRSS") for p in pids),
    "anon_kib": sum(status(p, "RssAnon") for p in pids),
    "file_kib": sum(status(p, "RssFile") for p in pids),
    "pss_kib": sum(pss(p) for p in pids),
    "hwm_kib": sum(status(p, "VmHWM") for p in pids),
    "cpu_s": round(sum(cpu_s(p) for p in pids), 3),
    "sys_s": round(sum(cpu_s(p, user=False) for p in pids), 3),
}))
