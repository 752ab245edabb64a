"""Listeners: a port that cannot be bound is reported by name and reason, the others serve."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from stun import attributes as at
from testkit.daemon import run_turnd, start_turnd, write_config
from testkit.sync import LOOPBACK, TIMEOUT, error_code
from tests.service.conftest import ClientFactory
from turnd.listeners import bind_failure_reason

IN_USE = "address already in use by another program"


@pytest.fixture
def busy_ports() -> Iterator[list[int]]:
    """Two UDP ports on 127.0.0.1 held by sockets of the test (another program, to turnd)."""
    with ExitStack() as stack:
        ports = []
        for _ in range(2):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            sock.bind((LOOPBACK, 0))
            ports.append(sock.getsockname()[1])
        yield ports


def test_port_in_use_is_reported_and_the_other_listener_serves(
    tmp_path: Path, busy_ports: list[int], make_client: ClientFactory
) -> None:
    """A listener whose port another program holds is logged as ``listener.failed`` with the
    reason, and the daemon serves on the listener that did bind."""
    busy = busy_ports[0]
    daemon = start_turnd(tmp_path, listen=f'["udp:0", "udp:{busy}"]')
    try:
        failed = [e for e in daemon.log_events() if e.get("event") == "listener.failed"]
        assert [(e["transport"], e["address"], e["port"], e["reason"]) for e in failed] == [
            ("udp", LOOPBACK, busy, IN_USE)
        ]
        assert len(daemon.udp_ports) == 1 and daemon.port != busy
        reply = make_client(daemon).binding()
        assert error_code(reply) is None and reply.get(at.XorMappedAddress) is not None
    finally:
        assert daemon.stop() == 0


def test_no_listener_bound_exits_nonzero_naming_each(tmp_path: Path, busy_ports: list[int]) -> None:
    """When no listener binds, turnd exits with status 1 and says which listeners failed and
    why, each by transport, address and port."""
    listen = "[" + ", ".join(f'"udp:{port}"' for port in busy_ports) + "]"
    config = write_config(tmp_path, listen=listen)
    done = run_turnd(config)
    assert done.returncode == 1
    [summary] = [line for line in done.stderr.splitlines() if line.startswith("turnd:")]
    assert "no listener could be started" in summary
    for port in busy_ports:
        assert f"udp {LOOPBACK}:{port}: {IN_USE}" in summary


def test_tcp_and_tls_listeners_are_reported_and_udp_serves_beside_them(
    tmp_path: Path, make_client: ClientFactory
) -> None:
    """Every TCP and TLS listener is reported, either started (and accepting connections on
    the port it names) or failed with its reason, and the UDP listener beside them serves."""
    daemon = start_turnd(tmp_path, listen='["udp:0", "tcp:0", "tls:0"]')
    try:
        reports = {
            e["transport"]: e
            for e in daemon.log_events()
            if e.get("event") in ("listener.started", "listener.failed")
            and e.get("transport") != "udp"
        }
        assert set(reports) == {"tcp", "tls"}
        for report in reports.values():
            if report["event"] == "listener.started":
                socket.create_connection((LOOPBACK, report["port"]), timeout=TIMEOUT).close()
            else:
                assert report["reason"]
        assert error_code(make_client(daemon).binding()) is None
    finally:
        assert daemon.stop() == 0


@pytest.mark.parametrize(
    ("code", "port", "expected"),
    [
        (errno.EACCES, 53, "CAP_NET_BIND_SERVICE"),
        (errno.EACCES, 443, "port 443 is privileged"),
        (errno.EADDRINUSE, 3478, IN_USE),
        (errno.EADDRNOTAVAIL, 3478, "address not available on this host"),
    ],
)
def test_bind_failure_reason_says_what_to_do(code: int, port: int, expected: str) -> None:
    """Each common bind failure is explained in words an operator can act on."""
    assert expected in bind_failure_reason(OSError(code, "strerror"), port)


def test_bind_failure_reason_on_high_port_permission_is_the_system_message() -> None:
    """EACCES on an unprivileged port is not blamed on privileges: the system's message stays."""
    reason = bind_failure_reason(OSError(errno.EACCES, "Permission denied"), 3478)
    assert reason == "Permission denied"
