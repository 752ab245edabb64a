"""The servers under test, started with equivalent configuration, and the UDP echo peer.

Both get realm ``turnd.test``, the long-term user alice, loopback peers allowed, UDP, TCP and TLS
listeners on 127.0.0.1 (TLS with a self-signed certificate), relays on 127.0.0.1 in the same
port range, and allocation limits that no load reaches; coturn is held to ``relay-threads``
(one by default: turnd is one process with one event loop). Each start returns a ``Server``
whose ``settings`` say what was set, for the table's explanation.
"""

from __future__ import annotations

import contextlib
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import attrs

from testkit.daemon import PASSWORD, REALM, USER, start_turnd

#: Where the servers listen and relay, and the echo peer answers.
LOOPBACK = "127.0.0.1"
#: The server kinds, in the order they run and appear as the table's columns.
SERVERS = ("turnd", "coturn")
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


def start_turnd_server(
    work: Path, port_range: tuple[int, int], allocations: int, threads: int
) -> Server:
    """turnd on UDP, TCP and TLS (self-signed) with the limits raised to ``allocations``."""
    del threads  # turnd is one process with one event loop
    extra = f"""
[relay]
port_min = {port_range[0]}
port_max = {port_range[1]}

[limits]
max_allocations = {allocations}
max_allocations_per_user = {allocations}
max_allocations_per_ip = {allocations}
unauthenticated_rate = {UNLIMITED_RATE}
unauthenticated_burst = {UNLIMITED_RATE}
"""
    daemon = start_turnd(work, extra, listen='["udp:0", "tcp:0", "tls:0"]')
    return Server(
        name="turnd",
        pid=daemon.process.pid,
        udp=(LOOPBACK, daemon.ports["udp"][0]),
        tcp=(LOOPBACK, daemon.ports["tcp"][0]),
        tls=(LOOPBACK, daemon.ports["tls"][0]),
        stop=daemon.stop,
        settings=[
            f"relay ports {port_range[0]}-{port_range[1]}",
            f"limits.max_allocations(_per_user, _per_ip) = {allocations}",
            f"limits.unauthenticated_rate/burst = {UNLIMITED_RATE} (coturn has no such limit)",
            "one event loop (uvloop when installed)",
        ],
    )


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
