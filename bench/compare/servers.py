"""The servers under test, started with equivalent configuration, and the UDP echo peer.

Every server gets realm ``turnd.test``, the long-term user alice, loopback peers allowed, UDP,
TCP and TLS listeners on 127.0.0.1 (TLS with a self-signed certificate), relays on 127.0.0.1 in
the same port range, and allocation limits that no load reaches; coturn is held to ``relay-threads``
(one by default: turnd is one process with one event loop). turnd runs twice: with
``[fastpath] mode = "off"`` (userspace relaying only; the default, "auto", would use the kernel
where it can) and, as "turnd+fastpath", with ``mode = "on"`` (established UDP channels relayed by
its eBPF program; it refuses to start without). Each start returns a ``Server`` whose
``settings`` say what was set, for the table's explanation.
"""

from __future__ import annotations

import contextlib
import functools
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from testkit.daemon import PASSWORD, REALM, USER, start_turnd

#: Where the servers listen and relay, and the echo peer answers.
LOOPBACK = "127.0.0.1"
#: turnd with its kernel fast path on.
FASTPATH = "turnd+fastpath"
#: The server kinds, in the order they run and appear as the table's columns.
SERVERS = ("turnd", FASTPATH, "coturn")
#: RFC 8656 §7.2 / coturn's default relay range: 16384 ports per relay address.
DEFAULT_PORT_RANGE = (49152, 65535)


@attrs.define
class Server:
    """A running TURN server under test."""

    name: str
    pid: int
    udp: tuple[str, int]
    tcp: tuple[str, int]
    tls: tuple[str, int]
    stop: Callable[[], object]
    settings: list[str]
    #: turnd's control socket (GET /v1/status), None for coturn.
    control: str | None = None
    #: Whether the kernel fast path relays this server's UDP channels.
    fastpath: bool = False

    def fastpath_counters(self) -> dict[str, Any] | None:
        """turnd's "fastpath" status (the program's counters and what the core credited), or
        None for a server without a control socket."""
        if self.control is None:
            return None
        from turnd.turnctl_daemon import Daemon

        status: dict[str, Any] = Daemon(socket_path=self.control).request("GET", "/v1/status")
        return dict(status["fastpath"])


def raise_file_limit(wanted: int) -> int:
    """Raise RLIMIT_NOFILE (soft, and hard when allowed) toward ``wanted``; the servers started
    afterwards inherit it. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(hard, wanted)))
        return wanted
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


#: turnd's per-source limit on unauthenticated answers, raised out of the way: every load comes
#: from 127.0.0.1, and coturn has no such limit to compare with.
UNLIMITED_RATE = 10_000_000
#: And its byte credit for answers larger than their requests (a Binding answer, a 401), which
#: a flood of Bindings from one address spends in a moment: out of the way for the same reason.
UNLIMITED_CREDIT = 1 << 40


def turnd_extra(port_range: tuple[int, int], allocations: int, fastpath: str) -> str:
    """The config sections bench adds to testkit's: relay range, limits, fast path mode."""
    return f"""
[fastpath]
# Said explicitly: the default, "auto", relays in the kernel where it can.
mode = "{fastpath}"

[relay]
port_min = {port_range[0]}
port_max = {port_range[1]}

[limits]
max_allocations = {allocations}
max_allocations_per_user = {allocations}
max_allocations_per_ip = {allocations}
unauthenticated_rate = {UNLIMITED_RATE}
unauthenticated_burst = {UNLIMITED_RATE}
unauthenticated_credit = {UNLIMITED_CREDIT}
"""


def start_turnd_server(
    work: Path, port_range: tuple[int, int], allocations: int, threads: int, fastpath: str = "off"
) -> Server:
    """turnd on UDP, TCP and TLS (self-signed) with the limits raised to ``allocations``,
    ``[fastpath] mode`` = ``fastpath`` and ``[server] workers`` = ``threads``."""
    extra = turnd_extra(port_range, allocations, fastpath)
    many = threads > 1
    daemon = start_turnd(
        work,
        extra,
        listen='["udp:0", "tcp:0", "tls:0"]',
        env={"TURND_SERVER_WORKERS": str(threads)},
        ready="workers.ready" if many else "service.started",
    )
    server = Server(
        name=FASTPATH if fastpath == "on" else "turnd",
        pid=daemon.process.pid,
        udp=(LOOPBACK, daemon.ports["udp"][0]),
        tcp=(LOOPBACK, daemon.ports["tcp"][0]),
        tls=(LOOPBACK, daemon.ports["tls"][0]),
        stop=daemon.stop,
        settings=[
            f"relay ports {port_range[0]}-{port_range[1]}",
            f"limits.max_allocations(_per_user, _per_ip) = {allocations}",
            f"limits.unauthenticated_rate/burst = {UNLIMITED_RATE}, _credit = {UNLIMITED_CREDIT}"
            " (coturn has no such limits)",
            f"{threads} worker processes (SO_REUSEPORT), each one event loop"
            if many
            else "one event loop (uvloop when installed)",
            f'fastpath.mode = "{fastpath}"',
        ],
        control=daemon.control_socket,
        fastpath=fastpath == "on",
    )
    if server.fastpath:
        status = server.fastpath_counters() or {}
        if not status.get("active"):
            server.stop()
            raise RuntimeError(f"the fast path is not active: {status}")
        server.settings.append(f"fast path on {', '.join(status.get('interfaces', []))}")
    return server


def start_coturn_server(
    work: Path, port_range: tuple[int, int], allocations: int, threads: int
) -> Server:
    """coturn's turnserver with the same realm, user, peers, listeners and relay range."""
    from testkit.coturn import start_turnserver

    del allocations  # coturn's user-quota and total-quota default to unlimited
    options = [f"relay-threads={threads}", f"min-port={port_range[0]}", f"max-port={port_range[1]}"]
    server = start_turnserver(
        work, users={USER: PASSWORD}, realm=REALM, tls=True, extra_config=options
    )
    assert server.tls_port is not None
    return Server(
        name="coturn",
        pid=server.pid,
        udp=(LOOPBACK, server.port),
        tcp=(LOOPBACK, server.port),
        tls=(LOOPBACK, server.tls_port),
        stop=server.stop,
        settings=[*options, "user-quota/total-quota unlimited (default)"],
    )


STARTERS: dict[str, Callable[[Path, tuple[int, int], int, int], Server]] = {
    "turnd": start_turnd_server,
    FASTPATH: functools.partial(start_turnd_server, fastpath="on"),
    "coturn": start_coturn_server,
}

_PY_ECHO = """
import socket, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
sock.bind(("127.0.0.1", 0))
print(sock.getsockname()[1], flush=True)
sock.settimeout(1.0)
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    try:
        data, addr = sock.recvfrom(65535)
    except TimeoutError:
        continue
    sock.sendto(data, addr)
"""


@attrs.define
class EchoPeer:
    """The UDP echo peer every relay load sends to."""

    address: tuple[str, int]
    pid: int
    kind: str
    stop: Callable[[], object]


def start_echo_peer(lifetime: float) -> EchoPeer:
    """coturn's turnutils_peer if installed, else a Python echo process that ends by itself
    after ``lifetime`` seconds."""
    from testkit.coturn import find_tool, start_peer

    if find_tool("turnutils_peer"):
        peer = start_peer()
        return EchoPeer((LOOPBACK, peer.port), peer.pid, "turnutils_peer", peer.stop)
    process = subprocess.Popen(
        [sys.executable, "-c", _PY_ECHO, str(lifetime)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    port = int(process.stdout.readline())

    def stop() -> None:
        process.terminate()
        process.wait(timeout=10)

    return EchoPeer((LOOPBACK, port), process.pid, "python echo", stop)
