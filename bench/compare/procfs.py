"""What the figures are read from: /proc for CPU, memory, threads, descriptors and UDP drops,
and the time the kernel spent in BPF programs.

CPU is utime + stime of a whole process (every thread) from /proc/PID/stat, in clock ticks of
1/CLK_TCK s, so a sample of a few ticks is coarse; memory is VmRSS of /proc/PID/status. The host's
CPU is the first line of /proc/stat (every CPU); a BPF program's time is run_time_ns of its
descriptor's /proc/PID/fdinfo, counted only while ``kernel.bpf_stats_enabled`` is 1.
"""

from __future__ import annotations

import collections
import contextlib
import gzip
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

#: Clock ticks per second: the unit of the CPU times in /proc/PID/stat.
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and all its threads (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def family(pid: int) -> list[int]:
    """``pid`` and every process descended from it (a supervisor and its workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = parse_stat(Path(f"/proc/{entry}/stat").read_text())[0]
        except (OSError, ValueError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        one = todo.pop()
        found.append(one)
        todo += children.get(one, [])
    return found


def family_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its descendants (a worker that exited meanwhile
    is not counted: none does during a load)."""
    total = 0.0
    for one in family(pid):
        with contextlib.suppress(OSError):
            total += cpu_seconds(one)
    return total


def family_rss_bytes(pid: int) -> int:
    """RSS of ``pid`` and its descendants, summed (pages shared between them count in each)."""
    return sum(rss_bytes(one) for one in family(pid))


def family_open_files(pid: int) -> int:
    """Descriptors ``pid`` and its descendants hold, summed."""
    return sum(open_files(one) for one in family(pid))


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


#: /proc/stat's busy columns (user, nice, system, irq, softirq): steal, idle and iowait are not
#: this host's work, and guest time is already in user.
BUSY_COLUMNS = ("user", "nice", "system", "irq", "softirq")
_STAT_COLUMNS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
#: The fast path's program (turnd/fastpath/relay.bpf.c), as the kernel names it.
FASTPATH_PROGRAM = "turnd_relay"
STATS_SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")


def parse_proc_stat(text: str) -> dict[str, float]:
    """Seconds per column of the all-CPU line of /proc/stat's text, and "busy": their sum over
    ``BUSY_COLUMNS``."""
    line = next(line for line in text.splitlines() if line.startswith("cpu "))
    seconds = {
        name: int(value) / CLK_TCK
        for name, value in zip(_STAT_COLUMNS, line.split()[1:], strict=False)
    }
    seconds["busy"] = sum(seconds.get(name, 0.0) for name in BUSY_COLUMNS)
    return seconds


def host_cpu() -> dict[str, float]:
    """The host's CPU seconds by /proc/stat column, and "busy", since boot."""
    return parse_proc_stat(Path("/proc/stat").read_text())


def own_cpu_seconds() -> float:
    """CPU seconds of this process and of its children it has waited for (turnutils_uclient)."""
    times = os.times()
    return cpu_seconds(os.getpid()) + times.children_user + times.children_system


def parse_fdinfo(text: str) -> dict[str, str]:
    """The fields of a /proc/PID/fdinfo/FD text."""
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def bpf_programs(pid: int) -> dict[int, tuple[int, int]]:
    """(run_time_ns, run_cnt) of each BPF program process ``pid`` holds a descriptor of, by id."""
    programs = {}
    fds = Path(f"/proc/{pid}/fd")
    for fd in os.listdir(fds):
        with contextlib.suppress(OSError):
            if os.readlink(fds / fd) != "anon_inode:bpf-prog":
                continue
            info = parse_fdinfo(Path(f"/proc/{pid}/fdinfo/{fd}").read_text())
            programs[int(info["prog_id"])] = (
                int(info.get("run_time_ns", 0)),
                int(info.get("run_cnt", 0)),
            )
    return programs


def family_programs(pid: int) -> dict[int, tuple[int, int]]:
    """:func:`bpf_programs` of ``pid`` and its descendants (each worker loads its own)."""
    found: dict[int, tuple[int, int]] = {}
    for one in family(pid):
        with contextlib.suppress(OSError):
            found.update(bpf_programs(one))
    return found


def named_programs(name: str = FASTPATH_PROGRAM) -> dict[int, tuple[int, int]] | None:
    """(run_time_ns, run_cnt) of every loaded BPF program called ``name``, by id, from
    ``bpftool -j prog show``; None without bpftool or the privilege."""
    tool = shutil.which("bpftool")
    if tool is None:
        return None
    done = subprocess.run(
        [tool, "-j", "prog", "show"], capture_output=True, text=True, timeout=30, check=False
    )
    if done.returncode != 0:
        return None
    return {
        int(p["id"]): (int(p.get("run_time_ns", 0)), int(p.get("run_cnt", 0)))
        for p in json.loads(done.stdout or "[]")
        if p.get("name") == name
    }


@contextlib.contextmanager
def bpf_stats() -> Iterator[str]:
    """``kernel.bpf_stats_enabled`` = 1 for the block, restored after; yields "" when stats
    are on, else why they are not (the BPF time then reads 0)."""
    try:
        before = STATS_SYSCTL.read_text().strip()
        if before != "1":
            STATS_SYSCTL.write_text("1\n")
    except OSError as exc:
        yield f"kernel.bpf_stats_enabled could not be set ({exc}): BPF run time is not counted"
        return
    try:
        yield ""
    finally:
        if before != "1":
            STATS_SYSCTL.write_text(before + "\n")


def irq_time_accounting() -> bool | None:
    """Whether the kernel keeps softirq time apart from the task it interrupted
    (CONFIG_IRQ_TIME_ACCOUNTING, from /proc/config.gz); None when it cannot tell."""
    try:
        config = gzip.decompress(Path("/proc/config.gz").read_bytes()).decode()
    except OSError:
        return None
    return "CONFIG_IRQ_TIME_ACCOUNTING=y" in config.splitlines()


#: PF_KTHREAD in /proc/PID/stat's flags: a kernel thread (ksoftirqd, kworker).
PF_KTHREAD = 0x00200000


def parse_stat(text: str) -> tuple[int, int, float]:
    """(ppid, flags, utime + stime seconds) from the text of a /proc/PID/stat."""
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[1]), int(fields[6]), (int(fields[11]) + int(fields[12])) / CLK_TCK


def tenant_cpu(own: int) -> dict[int, float]:
    """CPU seconds of every user process on the host but process ``own`` and its children (the
    bench, its servers, peer and tools), by pid: what other tenants of a shared machine spend.
    Kernel threads are left in: softirq work deferred to ksoftirqd may be the relay's."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid, flags, seconds = parse_stat(Path(f"/proc/{entry}/stat").read_text())
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if int(entry) != own and ppid != own and not flags & PF_KTHREAD:
            found[int(entry)] = seconds
    return found


def _delta(after: dict[int, tuple[int, int]], before: dict[int, tuple[int, int]]) -> list[int]:
    """[run_time_ns, run_cnt] the programs of ``after`` gained since ``before``."""
    gained = [0, 0]
    for prog, (ns, runs) in after.items():
        was = before.get(prog, (0, 0))
        gained[0] += ns - was[0]
        gained[1] += runs - was[1]
    return gained


class Meter:
    """CPU over a load: the server process's, its BPF programs', the load generator's (this
    process and its waited-for children), the echo peer's, and the host's (/proc/stat).

    ``host_cpu_s`` is the host's busy CPU less the generator's and the peer's: what everything
    else, the server and the kernel's work outside those two processes, spent. With
    ``thorough`` (once per load, not per rate step) also: ``tenants_cpu_s``, what other user
    processes of a shared host spent, and ``host_own_cpu_s``, the host's busy CPU less that; and
    the BPF programs of the same name held by other processes (another turnd), as a warning."""

    def __init__(self, pid: int, peer_pid: int | None = None, *, thorough: bool = False) -> None:
        self.pid = pid
        self.peer_pid = peer_pid
        # bpftool is a waited-for child: run it before the generator's CPU is read.
        self.named = named_programs() if thorough else None
        self.tenants = tenant_cpu(os.getpid()) if thorough else None
        self.programs = family_programs(pid)
        self.server = family_cpu_seconds(pid)
        self.peer = cpu_seconds(peer_pid) if peer_pid else 0.0
        self.client = own_cpu_seconds()
        self.host = host_cpu()
        self.started = time.perf_counter()

    def read(self) -> dict[str, float]:
        wall = time.perf_counter() - self.started
        host = host_cpu()
        client = own_cpu_seconds() - self.client
        peer = cpu_seconds(self.peer_pid) - self.peer if self.peer_pid else 0.0
        server = family_cpu_seconds(self.pid) - self.server
        programs = family_programs(self.pid)
        bpf_ns, bpf_runs = _delta(programs, self.programs)
        figures = {
            "server_cpu_s": server,
            "bpf_cpu_s": bpf_ns / 1e9,
            "bpf_runs": bpf_runs,
            "server_bpf_cpu_s": server + bpf_ns / 1e9,
            "client_cpu_s": client,
            "client_cpu_percent": 100 * client / wall if wall else 0.0,
            "peer_cpu_s": peer,
            "host_busy_cpu_s": host["busy"] - self.host["busy"],
            "host_softirq_cpu_s": host["softirq"] - self.host["softirq"],
            "host_cpu_s": host["busy"] - self.host["busy"] - client - peer,
        }
        if self.tenants is not None:
            now = tenant_cpu(os.getpid())
            server = set(family(self.pid))  # a supervisor's workers are the server too
            tenants = sum(now[p] - self.tenants.get(p, 0.0) for p in now if p not in server)
            figures["tenants_cpu_s"] = tenants
            figures["host_own_cpu_s"] = figures["host_busy_cpu_s"] - tenants
        if self.named is not None and (named := named_programs()) is not None:
            others = {p: v for p, v in named.items() if p not in programs}
            earlier = {p: v for p, v in self.named.items() if p not in programs}
            figures["other_bpf_cpu_s"] = _delta(others, earlier)[0] / 1e9
            figures["other_bpf_runs"] = _delta(others, earlier)[1]
        return figures
