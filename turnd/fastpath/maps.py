"""The byte layout of the relay program's map keys and values (relay.bpf.c), packed and unpacked.

Addresses take 16 bytes, an IPv4 one in the first 4; ports are in network byte order, channel
numbers in host order, as the program compares them. The sizes are checked against the loaded
object's maps, so a layout that drifted from the C structs fails at load, not per packet.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import NamedTuple

from stun.addresses import Address

FAMILY_IPV4 = 4
FAMILY_IPV6 = 6
#: route.oif for a destination on this host (relay.bpf.c ROUTE_LOCAL).
ROUTE_LOCAL = 0xFFFFFFFF
#: ns per unit of the GCRA are kept in 1/65536 ns for the byte rate (relay.bpf.c struct quota).
BYTE_RATE_SHIFT = 16
NS_PER_SECOND = 1_000_000_000

C2P_KEY = struct.Struct("=16s16s2s2sHBx")
P2C_KEY = struct.Struct("=16s16s2s2sB3x")
ROUTE = struct.Struct("=16s16s2s2sHxxIIQQQQ")
QUOTA = struct.Struct("=4x4xQQQQ")
STAT_NAMES = ("to_peer", "to_client", "dropped_rate", "errors", "passed_mtu")


class Counters(NamedTuple):
    """An entry's counters: packets, payload bytes, drops over the rate, last use (monotonic ns)."""

    packets: int
    bytes: int
    dropped: int
    last_ns: int


#: A fresh entry's counters.
NO_COUNTS = Counters(0, 0, 0, 0)


def family(address: Address) -> int:
    """The program's family number of ``address``."""
    return FAMILY_IPV6 if ":" in address.host else FAMILY_IPV4


def ip_bytes(host: str) -> bytes:
    """``host`` as the 16 bytes the program compares."""
    return ipaddress.ip_address(host).packed.ljust(16, b"\0")


def port_bytes(port: int) -> bytes:
    """``port`` in network byte order."""
    return port.to_bytes(2, "big")


def c2p_key(client: Address, server: Address, channel: int) -> bytes:
    """Key of a client's ChannelData: its address, the listener's (zero: a wildcard listener)."""
    return C2P_KEY.pack(
        ip_bytes(client.host),
        ip_bytes(server.host),
        port_bytes(client.port),
        port_bytes(server.port),
        channel,
        family(client),
    )


def p2c_key(peer: Address, relay: Address) -> bytes:
    """Key of a peer's datagram to a relayed address."""
    return P2C_KEY.pack(
        ip_bytes(peer.host),
        ip_bytes(relay.host),
        port_bytes(peer.port),
        port_bytes(relay.port),
        family(peer),
    )


def route_value(source: Address, destination: Address, channel: int, oif: int, quota: int) -> bytes:
    """Where an entry's packets go, with zeroed counters."""
    return ROUTE.pack(
        ip_bytes(source.host),
        ip_bytes(destination.host),
        port_bytes(source.port),
        port_bytes(destination.port),
        channel,
        oif,
        quota,
        0,
        0,
        0,
        0,
    )


def counters(value: bytes) -> Counters:
    """The counters of a route value."""
    fields = ROUTE.unpack(value)
    return Counters(*fields[7:])


def quota_value(packet_rate: float, byte_rate: float) -> bytes:
    """A fresh GCRA for the rates (math.inf: no limit), holding one second of each."""
    per_packet = 0 if packet_rate == float("inf") else max(1, round(NS_PER_SECOND / packet_rate))
    per_byte = (
        0
        if byte_rate == float("inf")
        else max(1, round((NS_PER_SECOND << BYTE_RATE_SHIFT) / byte_rate))
    )
    return QUOTA.pack(per_packet, per_byte, 0, 0)
