"""turnd.systemd: sd_notify datagrams on real AF_UNIX sockets; every failure gives False."""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from turnd import systemd

#: A bound datagram socket and an environment whose NOTIFY_SOCKET names it.
Receiver = tuple[socket.socket, dict[str, str]]


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temporary directory with a short path: AF_UNIX paths are limited to 107 bytes."""
    with tempfile.TemporaryDirectory(prefix="sdn") as name:
        yield Path(name)


@pytest.fixture
def receiver(short_tmp: Path) -> Iterator[Receiver]:
    """A bound datagram socket in a temp dir, and an environment pointing NOTIFY_SOCKET at it."""
    path = short_tmp / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        yield sock, {"NOTIFY_SOCKET": str(path)}


@pytest.fixture
def abstract_receiver() -> Iterator[Receiver]:
    """A datagram socket in the abstract namespace, named as systemd writes it ("@name")."""
    name = f"turnd-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        yield sock, {"NOTIFY_SOCKET": "@" + name}


def fields(datagram: bytes) -> dict[str, str]:
    lines = datagram.decode("utf-8").split("\n")
    return dict(line.split("=", 1) for line in lines)


@pytest.mark.parametrize(
    ("where", "state"),
    [("receiver", "READY=1\nSTATUS=up"), ("abstract_receiver", "READY=1")],
    ids=["to_a_path", "to_the_abstract_namespace"],
)
def test_notify_sends_one_datagram(where: str, state: str, request: pytest.FixtureRequest) -> None:
    """One notify() is one datagram to NOTIFY_SOCKET: a path, or "@name" (abstract)."""
    sock, env = request.getfixturevalue(where)
    assert systemd.notify(state, env) is True
    assert sock.recv(4096) == state.encode()


def test_notify_reads_os_environ_by_default(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, env = receiver
    monkeypatch.setenv("NOTIFY_SOCKET", env["NOTIFY_SOCKET"])
    assert systemd.notify("STATUS=from os.environ") is True
    assert sock.recv(4096) == b"STATUS=from os.environ"


def test_ready_with_status(receiver: Receiver) -> None:
    sock, env = receiver
    assert systemd.ready("serving 6 listeners", environ=env) is True
    assert fields(sock.recv(4096)) == {"READY": "1", "STATUS": "serving 6 listeners"}
    assert systemd.ready(environ=env) is True
    assert sock.recv(4096) == b"READY=1"


def test_reloading_carries_the_monotonic_clock(receiver: Receiver) -> None:
    sock, env = receiver
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert systemd.reloading(environ=env) is True
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    got = fields(sock.recv(4096))
    assert set(got) == {"RELOADING", "MONOTONIC_USEC"}
    assert got["RELOADING"] == "1"
    assert got["MONOTONIC_USEC"].isdigit()
    assert before <= int(got["MONOTONIC_USEC"]) <= after


def test_reloading_and_stopping_with_status(receiver: Receiver) -> None:
    sock, env = receiver
    assert systemd.reloading("reloading /etc/turnd/turnd.toml", environ=env) is True
    got = fields(sock.recv(4096))
    assert got["RELOADING"] == "1"
    assert got["STATUS"] == "reloading /etc/turnd/turnd.toml"
    assert systemd.stopping(environ=env) is True
    assert sock.recv(4096) == b"STOPPING=1"
    assert systemd.stopping("draining", environ=env) is True
    assert fields(sock.recv(4096)) == {"STOPPING": "1", "STATUS": "draining"}


def test_status_text_cannot_inject_assignments(receiver: Receiver) -> None:
    sock, env = receiver
    assert systemd.status("line one\nREADY=1\r\nthree", environ=env) is True
    assert sock.recv(4096) == b"STATUS=line one READY=1 three"
    assert systemd.ready("a\nSTOPPING=1", environ=env) is True
    assert fields(sock.recv(4096)) == {"READY": "1", "STATUS": "a STOPPING=1"}


@pytest.mark.parametrize("env", [{}, {"NOTIFY_SOCKET": ""}])
def test_unset_socket_is_false(env: dict[str, str]) -> None:
    assert systemd.notify("READY=1", env) is False
    assert systemd.ready("x", environ=env) is False
    assert systemd.reloading(environ=env) is False
    assert systemd.stopping(environ=env) is False
    assert systemd.status("x", environ=env) is False


def test_unset_in_os_environ_is_false(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False
    assert systemd.ready() is False


def test_unreachable_path_is_false(short_tmp: Path) -> None:
    env = {"NOTIFY_SOCKET": str(short_tmp / "nobody-here")}
    assert systemd.notify("READY=1", env) is False
    assert systemd.ready("x", environ=env) is False


def test_socket_nobody_listens_on_is_false(short_tmp: Path) -> None:
    path = short_tmp / "closed"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
    # The file is still there, but no socket is bound to it any more: ECONNREFUSED.
    assert path.exists()
    assert systemd.notify("READY=1", {"NOTIFY_SOCKET": str(path)}) is False


def test_regular_file_is_false(short_tmp: Path) -> None:
    path = short_tmp / "file"
    path.write_text("not a socket")
    assert systemd.notify("READY=1", {"NOTIFY_SOCKET": str(path)}) is False


def test_unreachable_abstract_name_is_false() -> None:
    env = {"NOTIFY_SOCKET": f"@turnd-test-nobody-{os.getpid()}-{time.monotonic_ns()}"}
    assert systemd.notify("READY=1", env) is False


def test_stream_socket_is_false(short_tmp: Path) -> None:
    """systemd's socket is a datagram socket; a stream socket there is a wrong address."""
    path = short_tmp / "stream"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
        sock.listen()
        assert systemd.notify("READY=1", {"NOTIFY_SOCKET": str(path)}) is False


@pytest.mark.parametrize(
    "address",
    [
        "relative/path",  # neither a path nor an abstract name
        "vsock:2:1234",  # systemd 254's VSOCK form: not spoken here
        "/" + "x" * 200,  # longer than sun_path
        "/tmp/with\0nul",  # NUL inside a path
    ],
)
def test_unusable_addresses_are_false(address: str) -> None:
    assert systemd.notify("READY=1", {"NOTIFY_SOCKET": address}) is False


def test_unencodable_state_is_false(receiver: Receiver) -> None:
    _, env = receiver
    assert systemd.notify("STATUS=\udcff", env) is False


def test_full_socket_gives_up_instead_of_blocking(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A manager that stops reading cannot stall the caller for longer than SEND_TIMEOUT."""
    _, env = receiver
    monkeypatch.setattr(systemd, "SEND_TIMEOUT", 0.05)
    big = "STATUS=" + "x" * 60000
    results = []
    started = time.monotonic()
    for _ in range(2000):  # a datagram queue holds far fewer; stops at the first refusal
        result = systemd.notify(big, env)
        results.append(result)
        if not result:
            break
    assert results[0] is True
    assert results[-1] is False
    assert time.monotonic() - started < 30
