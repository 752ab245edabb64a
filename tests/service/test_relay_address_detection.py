"""With no relay address configured, turnd finds one itself and starts (no traffic is sent)."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

from testkit.daemon import start_turnd
from turnd.assembly import detect_relay_address


def test_detection_works_inside_a_running_event_loop() -> None:
    """The daemon asks from inside its loop: the netlink query must not need the loop."""

    async def ask() -> str:
        return detect_relay_address()

    address = ipaddress.ip_address(asyncio.run(ask()))
    assert address.version == 4


def test_daemon_on_the_wildcard_address_detects_its_relay_address(tmp_path: Path) -> None:
    """addresses = ["0.0.0.0"] and no relay.address: turnd starts and names a relay address."""
    daemon = start_turnd(tmp_path, addresses='["0.0.0.0"]')
    try:
        [started] = [e for e in daemon.log_events() if e.get("event") == "service.started"]
        assert ipaddress.ip_address(started["relay_address"]).version == 4
    finally:
        assert daemon.stop() == 0
