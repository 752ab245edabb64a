"""The reuseport selector in the kernel: every datagram of a client reaches the socket of the
group that :func:`expected_slot` names, for IPv4 and IPv6, from many source ports."""

from __future__ import annotations

import select
import socket

import pytest

from turnd.listeners import bind_datagram
from turnd.workers.selector import attach, expected_slot, program

GROUP = 3
FLOWS = 120


def _loopback_v6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_every_flow_lands_on_the_socket_the_selector_names(host: str) -> None:
    if host == "::1" and not _loopback_v6():
        pytest.skip("no IPv6 loopback here")
    group = [bind_datagram(host, 0, (0, 0), reuseport=True)]
    port = group[0].getsockname()[1]
    group += [bind_datagram(host, port, (0, 0), reuseport=True) for _ in range(GROUP - 1)]
    attach(group[0], GROUP)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    landed: dict[int, int] = {}
    expected: dict[int, int] = {}
    try:
        for flow in range(FLOWS):
            with socket.socket(family, socket.SOCK_DGRAM) as client:
                client.bind((host, 0))
                source = client.getsockname()[1]
                expected[source] = expected_slot(host, source, GROUP)
                for _ in range(2):  # the same flow twice: the same socket twice
                    client.sendto(flow.to_bytes(2, "big"), (host, port))
                    ready, _, _ = select.select(group, [], [], 2.0)
                    assert len(ready) == 1, f"flow {flow} reached {len(ready)} sockets"
                    _, (_, got_port, *_) = ready[0].recvfrom(64)
                    assert got_port == source
                    slot = group.index(ready[0])
                    assert landed.setdefault(source, slot) == slot
    finally:
        for sock in group:
            sock.close()
    assert landed == expected
    assert set(landed.values()) == set(range(GROUP))  # and the flows spread over every socket


def test_a_group_of_none_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        program(socket.AF_INET, 0)
