"""turnd tells systemd (Type=notify) when it is ready, reloading and stopping."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

from testkit.daemon import start_turnd, wait_for_event

#: Bound on waiting for one notification (the daemon sends it within milliseconds).
WAIT = 15.0


def _next(sock: socket.socket) -> dict[str, str]:
    sock.settimeout(WAIT)
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.splitlines() if "=" in line)


def test_ready_reloading_and_stopping_reach_the_notify_socket(tmp_path: Path) -> None:
    """READY=1 after start (with a status line), RELOADING=1 then READY=1 on SIGHUP,
    STOPPING=1 on SIGTERM."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        daemon = start_turnd(tmp_path, env={"NOTIFY_SOCKET": str(path)})
        try:
            ready = _next(sock)
            assert ready["READY"] == "1"
            assert "serving udp" in ready["STATUS"]
            daemon.process.send_signal(signal.SIGHUP)
            reloading = _next(sock)
            assert reloading["RELOADING"] == "1" and int(reloading["MONOTONIC_USEC"]) > 0
            assert _next(sock)["READY"] == "1"
            wait_for_event(daemon, "reload.done")
        finally:
            assert daemon.stop() == 0
        assert _next(sock)["STOPPING"] == "1"
