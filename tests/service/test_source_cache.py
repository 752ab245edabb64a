"""The UDP protocols keep the FiveTuple / Address of recent sources instead of building them per
datagram: the kept object is the one that would have been built, and the caches stay bounded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from stun.addresses import Address
from testkit.daemon import write_config
from turnd import packet_path as service_module
from turnd.assembly import resolve_secrets
from turnd.config import load_config
from turnd.core.actions import FiveTuple, Transport
from turnd.packet_path import _ClientDatagrams, _RelayDatagrams
from turnd.service import TurnService

SERVER = Address("127.0.0.1", 3478)
RELAY = Address("127.0.0.1", 50000)


@pytest.fixture
def turnd(tmp_path: Path) -> TurnService:
    """An unstarted service with the test daemons' configuration."""
    config, _ = resolve_secrets(load_config(str(write_config(tmp_path)), {}))
    return TurnService(config, relay_ipv4="127.0.0.1")


def sources(count: int) -> list[tuple[Any, ...]]:
    """What uvloop hands the protocols: (host, port) for IPv4, a 4-tuple for IPv6."""
    return [
        (f"10.0.{n // 250}.{n % 250 + 1}", 1024 + n) if n % 3 else (f"2001:db8::{n:x}", n, 0, 0)
        for n in range(count)
    ]


def test_a_listener_hands_on_the_five_tuple_it_would_build(
    turnd: TurnService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every datagram reaches client_message() with FiveTuple(UDP, source, listener); a source seen
    before gets the very object kept from its first datagram."""
    monkeypatch.setattr(service_module, "SOURCE_CACHE_SIZE", 64)
    protocol = _ClientDatagrams(turnd.packets, SERVER)
    handled: list[FiveTuple] = []
    monkeypatch.setattr(
        turnd.packets, "client_message", lambda five_tuple, data: handled.append(five_tuple)
    )
    addrs = sources(40)
    for addr in addrs + addrs:
        protocol.datagram_received(b"x", addr)
    expected = [FiveTuple(Transport.UDP, Address(a[0], a[1]), SERVER) for a in addrs]
    assert handled == expected + expected
    assert all(again is first for first, again in zip(handled[:40], handled[40:], strict=True))
    assert all(type(five_tuple.client) is Address for five_tuple in handled)


def test_the_caches_never_outgrow_their_bound(
    turnd: TurnService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spoofed sources by the thousand: the listener's and the relays' caches stay at most
    SOURCE_CACHE_SIZE entries, and every datagram still gets its own source's objects."""
    monkeypatch.setattr(service_module, "SOURCE_CACHE_SIZE", 50)
    listener = _ClientDatagrams(turnd.packets, SERVER)
    relay = _RelayDatagrams(turnd.packets, RELAY)
    clients: list[FiveTuple] = []
    peers: list[Address] = []
    monkeypatch.setattr(
        turnd.packets, "client_message", lambda five_tuple, data: clients.append(five_tuple)
    )
    monkeypatch.setattr(
        turnd.core, "peer_message", lambda relay, peer, data, now: peers.append(peer)
    )
    largest = 0
    addrs = sources(1000)
    for addr in addrs:
        listener.datagram_received(b"x", addr)
        relay.datagram_received(b"x", addr)
        largest = max(largest, len(listener.five_tuples), len(turnd.packets.peers))
    assert largest == 50
    assert [five_tuple.client for five_tuple in clients] == [Address(a[0], a[1]) for a in addrs]
    assert peers == [Address(a[0], a[1]) for a in addrs]
