"""[server] socket_rcvbuf / socket_sndbuf: what every UDP listener and relay socket asks the
kernel for, read back from the kernel itself (ss), and the warning when the kernel caps it."""

from __future__ import annotations

import logging
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from testkit.client import error_code
from testkit.daemon import PASSWORD, USER, start_turnd
from testkit.sync import TurnClient
from turnd.config import parse_config
from turnd.packet_path import check_buffers, granted_buffers

#: Both under Linux's default net.core.rmem_max/wmem_max (212992), so never capped, and unlike
#: any default the kernel would give.
RCVBUF, SNDBUF = 200_000, 150_000


def kernel_buffers(port: int) -> tuple[int, int]:
    """The receive and send buffer of the UDP socket on 127.0.0.1:``port``, as the kernel holds
    them (ss prints the doubled value Linux keeps)."""
    shown = subprocess.run(
        ["ss", "-u", "-a", "-n", "-m", "src", f"127.0.0.1:{port}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    found = re.search(r"rb(\d+),t\d+,tb(\d+)", shown)
    assert found is not None, shown
    return int(found[1]) // 2, int(found[2]) // 2


@pytest.mark.skipif(shutil.which("ss") is None, reason="ss (Debian package iproute2) is missing")
def test_listeners_and_relays_get_the_configured_buffers(tmp_path: Path) -> None:
    sizes = {"TURND_SERVER_SOCKET_RCVBUF": str(RCVBUF), "TURND_SERVER_SOCKET_SNDBUF": str(SNDBUF)}
    daemon = start_turnd(tmp_path, env=sizes)
    try:
        assert kernel_buffers(daemon.port) == (RCVBUF, SNDBUF)
        with TurnClient((daemon.host, daemon.port), USER, PASSWORD) as client:
            assert error_code(client.allocate()) is None
            assert client.relay is not None
            assert kernel_buffers(client.relay.port) == (RCVBUF, SNDBUF)
    finally:
        assert daemon.stop() == 0


def test_zero_keeps_the_kernels_default() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as plain:
        default = (
            plain.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2,
            plain.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) // 2,
        )
    assert granted_buffers((0, 0)) == default
    assert granted_buffers((RCVBUF, SNDBUF)) == (RCVBUF, SNDBUF)


def test_a_capped_request_is_logged_with_the_fix(caplog: pytest.LogCaptureFixture) -> None:
    config = parse_config(f"[server]\nsocket_rcvbuf = {1 << 30}\nsocket_sndbuf = 0\n", {})
    with caplog.at_level(logging.WARNING):
        check_buffers(config)
    [record] = [r for r in caplog.records if "caps the socket buffers" in r.getMessage()]
    text = record.getMessage()
    assert "net.core.rmem_max" in text and "turnd-sysctl.conf" in text
    assert "socket_sndbuf" not in text  # the send buffer got what it asked for
