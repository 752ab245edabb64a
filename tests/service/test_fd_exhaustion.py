"""A relay socket that cannot be created (the process is out of file descriptors) fails the
Allocate with 508, gives back every quota slot and the relay port, and leaves no traceback.

turnd runs with one relay port and quotas of one allocation per node, user and IP, so that any
slot or port the failure kept would make the later Allocate fail. Its descriptor limit is
lowered from outside (prlimit) to exactly the descriptors it holds, then restored.
"""

from __future__ import annotations

import os
import resource
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from stun import attributes as at
from stun.message import Method
from testkit.daemon import Daemon, start_turnd
from testkit.sync import TurnClient, error_code
from tests.service.conftest import ClientFactory
from tests.service.test_tcp_relay_backpressure import TCP_PROTOCOL, StreamTurn


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    port = _free_udp_port()
    running = start_turnd(
        tmp_path,
        f"""
[relay]
port_min = {port}
port_max = {port}

[limits]
max_allocations = 1
max_allocations_per_user = 1
max_allocations_per_ip = 1
""",
        listen='["udp:0", "tcp:0"]',
    )
    yield running
    assert running.stop() == 0


def _open_fds(pid: int) -> list[int]:
    return sorted(int(name) for name in os.listdir(f"/proc/{pid}/fd"))


def _limit_to_open_fds(pid: int) -> tuple[int, int]:
    """Lower ``pid``'s soft RLIMIT_NOFILE so that no descriptor number is free; the old limits."""
    old = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    fds = set(_open_fds(pid))
    limit = 0
    while limit in fds:  # the lowest free number is the next one the kernel would hand out
        limit += 1
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, old[1]))
    return old


def _metrics(daemon: Daemon) -> str:
    url = f"http://127.0.0.1:{daemon.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def test_allocate_without_descriptors_is_508_and_releases_every_slot(
    daemon: Daemon, make_client: ClientFactory
) -> None:
    """EMFILE on the relay socket: 508, counted by reason and logged; once descriptors are free
    again the same client (same 5-tuple) gets its allocation on the one relay port, so neither a
    quota slot nor the port was kept; the log holds no traceback."""
    client: TurnClient = make_client(daemon)
    client.binding()  # nothing below needs a descriptor turnd does not hold yet
    pid = daemon.process.pid
    old = _limit_to_open_fds(pid)
    try:
        refused = client.allocate()
        again = client.allocate()
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, old)
    assert error_code(refused) == 508
    assert error_code(again) == 508  # the retry on that 5-tuple is answered too
    served = client.allocate()
    assert error_code(served) is None, served
    assert client.relay is not None
    metrics = _metrics(daemon)
    assert 'turnd_events_total{event="relay.socket_failures.EMFILE"}' in metrics
    assert 'turnd_allocations{relay="udp",transport="udp"} 1.0' in metrics
    failed = [e for e in daemon.log_events() if e.get("event") == "relay.socket_failed"]
    assert failed and failed[0]["reason"] == "EMFILE"
    log = daemon.log_path.read_text()
    assert "Traceback" not in log and "Unhandled exception" not in log


def test_tcp_allocate_without_descriptors_is_508_and_releases_every_slot(daemon: Daemon) -> None:
    """RFC 6062 TCP allocation, same fault: the listening relay socket cannot be created, the
    Allocate gets 508 on its control connection, and after the limit is restored the same
    connection gets its TCP allocation."""
    port = daemon.ports["tcp"][0]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as control:
        turn = StreamTurn(control)
        transport = at.RequestedTransport(TCP_PROTOCOL)
        turn.request(Method.BINDING)  # the connection is accepted before descriptors run out
        pid = daemon.process.pid
        old = _limit_to_open_fds(pid)
        try:
            refused = turn.request(Method.ALLOCATE, transport)
        finally:
            resource.prlimit(pid, resource.RLIMIT_NOFILE, old)
        assert error_code(refused) == 508
        served = turn.request(Method.ALLOCATE, transport)
        assert error_code(served) is None, served
    assert 'turnd_events_total{event="relay.socket_failures.EMFILE"}' in _metrics(daemon)
    log = daemon.log_path.read_text()
    assert "Traceback" not in log and "Unhandled exception" not in log
