"""What the figures are read from: /proc for CPU, memory, threads, descriptors and UDP drops.

CPU is utime + stime of a whole process (every thread) from /proc/PID/stat, in clock ticks of
1/CLK_TCK s, so a sample of a few ticks is coarse; memory is VmRSS of /proc/PID/status.
"""

from __future__ import annotations

import collections
import os
import time
from pathlib import Path

#: Clock ticks per second: the unit of the CPU times in /proc/PID/stat.
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and all its threads (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` in bytes (VmRSS of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def thread_names(pid: int) -> dict[str, int]:
    """How many threads of process ``pid`` carry each name (/proc/PID/task/*/comm)."""
    names = collections.Counter(
        Path(f"/proc/{pid}/task/{task}/comm").read_text().strip()
        for task in os.listdir(f"/proc/{pid}/task")
    )
    return dict(names)


def parse_udp_drops(text: str) -> dict[int, int]:
    """Receive-buffer drops per local port from the text of /proc/net/udp (last column)."""
    drops: dict[int, int] = collections.Counter()
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 13:
            continue
        port = int(fields[1].rsplit(":", 1)[1], 16)
        drops[port] += int(fields[-1])
    return dict(drops)


def udp_drops() -> dict[int, int]:
    """Receive-buffer drops of every IPv4 UDP socket on the host, by local port."""
    return parse_udp_drops(Path("/proc/net/udp").read_text())


def open_files(pid: int) -> int:
    """File descriptors process ``pid`` holds."""
    return len(os.listdir(f"/proc/{pid}/fd"))


class Meter:
    """CPU seconds of the server and of this process (the load generator) over a load."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.server = cpu_seconds(pid)
        self.client = cpu_seconds(os.getpid())
        self.started = time.perf_counter()

    def read(self) -> dict[str, float]:
        wall = time.perf_counter() - self.started
        client = cpu_seconds(os.getpid()) - self.client
        return {
            "server_cpu_s": cpu_seconds(self.pid) - self.server,
            "client_cpu_s": client,
            "client_cpu_percent": 100 * client / wall if wall else 0.0,
        }
