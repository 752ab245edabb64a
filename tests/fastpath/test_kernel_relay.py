"""The relay program in the kernel, driven through KernelRoutes as the core drives it, between
three network namespaces: what it relays (and exactly how), what it leaves to userspace, its
counters, its rate limit, and removal."""

from __future__ import annotations

import math
import os
import socket
import struct
import subprocess

import pytest

from stun.addresses import Address
from tests.fastpath.topology import Topology, inside, run
from turnd.config_sections import FastpathConfig
from turnd.core.actions import UDP, FiveTuple
from turnd.core.routes import ChannelRoute
from turnd.fastpath import FastPath, maps

CHANNEL = 0x4001
SIZES = (0, 1, 3, 255, 256, 257, 1000, 1400)


class Ends:
    """The four sockets of one route: client, listener and relay (turnd's), peer."""

    def __init__(self, topo: Topology, *, wildcard: bool = False, local_peer: bool = False) -> None:
        """``wildcard``: the listener is bound to the wildcard address (the route names it so);
        ``local_peer``: the peer is a socket of turnd's own host."""
        addresses = topo.addresses
        self.client = topo.socket(topo.client, addresses["client"])
        any_address = "::" if topo.v6 else "0.0.0.0"
        self.listener = topo.socket(topo.turnd, any_address if wildcard else addresses["listener"])
        self.relay = topo.socket(topo.turnd, addresses["relay"])
        self.peer = topo.socket(
            topo.turnd if local_peer else topo.peer,
            addresses["relay"] if local_peer else addresses["peer"],
        )
        listener = self.address(self.listener)
        self.server = Address(addresses["listener"], listener.port)  # where the client sends
        self.route = ChannelRoute(
            FiveTuple(UDP, self.address(self.client), listener),
            CHANNEL,
            self.address(self.relay),
            self.address(self.peer),
        )

    @staticmethod
    def address(sock: socket.socket) -> Address:
        host, port = sock.getsockname()[:2]
        return Address(host, port)

    def close(self) -> None:
        for sock in (self.client, self.listener, self.relay, self.peer):
            sock.close()


def received(sock: socket.socket) -> tuple[bytes, int] | None:
    """One datagram and its source port, or None within the socket's timeout."""
    try:
        data, source = sock.recvfrom(65535)
    except TimeoutError:
        return None
    return data, source[1]


def channel_data(payload: bytes, number: int = CHANNEL, pad: bytes = b"") -> bytes:
    return struct.pack("!HH", number, len(payload)) + payload + pad


def checksum_errors(namespace: str) -> int:
    """UDP InCsumErrors of ``namespace`` (/proc/net/snmp), v4 and v6 together."""
    total = 0
    for path, name in (("/proc/net/snmp", "Udp:"), ("/proc/net/snmp6", "Udp6InCsumErrors")):
        text = subprocess.run(
            ["ip", "netns", "exec", namespace, "cat", path], capture_output=True, text=True
        ).stdout
        if name == "Udp:":
            rows = [line.split() for line in text.splitlines() if line.startswith("Udp:")]
            total += int(rows[1][rows[0].index("InCsumErrors")])
        else:
            total += sum(
                int(line.split()[1]) for line in text.splitlines() if line.startswith(name)
            )
    return total


@pytest.fixture(params=[False, True], ids=["ipv4", "ipv6"])
def ends(request: pytest.FixtureRequest, topologies: tuple[Topology, Topology]) -> Ends:
    made = Ends(topologies[int(request.param)])
    request.addfinalizer(made.close)
    return made


@pytest.mark.parametrize(
    "senders_offload, turnd_offload",
    [(True, True), (False, True), (True, False), (False, False)],
    ids=["offload", "senders-full-checksum", "turnd-software-checksum", "no-offload"],
)
def test_the_kernel_relays_an_installed_channel_both_ways_with_valid_checksums(
    fastpath: FastPath,
    ends: Ends,
    topologies: tuple[Topology, Topology],
    senders_offload: bool,
    turnd_offload: bool,
) -> None:
    """Every size through both directions, headers and checksums rewritten: the peer and the
    client get exact payloads from the relayed and the listener address, turnd's sockets get
    nothing, no receiver counts a bad checksum, and the counters say exactly what went."""
    topo = topologies[0]
    topo.offload(senders_offload, turnd_offload)
    errors_before = checksum_errors(topo.peer) + checksum_errors(topo.client)
    assert fastpath.routes.install(ends.route, math.inf, math.inf)
    route = ends.route
    for size in SIZES:
        payload = os.urandom(size)
        ends.client.sendto(
            channel_data(payload), (route.five_tuple.server.host, route.five_tuple.server.port)
        )
        assert received(ends.peer) == (payload, route.relay.port), size
        ends.peer.sendto(payload, (route.relay.host, route.relay.port))
        assert received(ends.client) == (channel_data(payload), route.five_tuple.server.port), size
    ends.listener.settimeout(0.2)
    ends.relay.settimeout(0.2)
    assert received(ends.listener) is None
    assert received(ends.relay) is None
    assert checksum_errors(topo.peer) + checksum_errors(topo.client) == errors_before
    [(moved_route, traffic)] = fastpath.routes.collect()
    assert moved_route == route
    assert (traffic.packets_to_peer, traffic.bytes_to_peer) == (len(SIZES), sum(SIZES))
    assert (traffic.packets_to_client, traffic.bytes_to_client) == (len(SIZES), sum(SIZES))
    assert traffic.last_seen is not None
    assert fastpath.routes.collect() == []  # deltas: nothing moved since
    final = fastpath.routes.remove(route)
    assert final.packets_to_peer == 0 and final.packets_to_client == 0
    status = fastpath.status()
    assert status["packets_to_peer"] >= len(SIZES) and status["errors"] == 0
    topo.offload(True, True)


@pytest.mark.parametrize(
    "wildcard, local_peer",
    [(True, False), (False, True)],
    ids=["wildcard-listener", "peer-on-the-turnd-host"],
)
@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_a_wildcard_listener_and_a_peer_on_the_host_itself(
    topologies: tuple[Topology, Topology], wildcard: bool, local_peer: bool, v6: bool
) -> None:
    """A listener bound to the wildcard address is matched whatever address the client sent
    to, and answered from that address. A peer on turnd's own host: its datagrams (through lo)
    go to the client in the kernel; the client's to it stay in userspace, since the stack
    refuses the relay's local source address on a packet from another interface."""
    topo = topologies[int(v6)]
    with inside(topo.turnd):
        loaded = FastPath(FastpathConfig(interfaces=("tc0", "tp0", "lo")), [])
    ends = Ends(topo, wildcard=wildcard, local_peer=local_peer)
    try:
        route = ends.route
        assert loaded.routes.install(route, math.inf, math.inf)
        ends.client.sendto(channel_data(b"to the peer"), (ends.server.host, ends.server.port))
        if local_peer:
            assert received(ends.listener) == (
                channel_data(b"to the peer"),
                route.five_tuple.client.port,
            )
        else:
            assert received(ends.peer) == (b"to the peer", route.relay.port)
        ends.peer.sendto(b"to the client", (route.relay.host, route.relay.port))
        got = ends.client.recvfrom(65535)
        assert (got[0], got[1][:2]) == (
            channel_data(b"to the client"),
            (ends.server.host, ends.server.port),
        )
        traffic = loaded.routes.remove(route)
        assert (traffic.packets_to_peer, traffic.packets_to_client) == (0 if local_peer else 1, 1)
        ends.listener.settimeout(0.2)
        assert received(ends.listener) is None
    finally:
        ends.close()
        loaded.close()


def test_after_removal_the_flow_goes_to_userspace_with_the_final_counts(
    fastpath: FastPath, ends: Ends
) -> None:
    route = ends.route
    server = (route.five_tuple.server.host, route.five_tuple.server.port)
    assert fastpath.routes.install(route, math.inf, math.inf)
    ends.client.sendto(channel_data(b"kernel"), server)
    assert received(ends.peer) == (b"kernel", route.relay.port)
    final = fastpath.routes.remove(route)
    assert (final.packets_to_peer, final.bytes_to_peer) == (1, 6)
    ends.client.sendto(channel_data(b"user"), server)
    assert received(ends.listener) == (channel_data(b"user"), route.five_tuple.client.port)
    ends.peer.sendto(b"to relay", (route.relay.host, route.relay.port))
    assert received(ends.relay) == (b"to relay", route.peer.port)
    ends.peer.settimeout(0.2)
    assert received(ends.peer) is None


def test_what_the_kernel_does_not_handle_reaches_the_sockets_untouched(
    fastpath: FastPath, ends: Ends
) -> None:
    """Padded ChannelData, other channels, STUN and uninstalled peers go to turnd's sockets as
    they were sent."""
    route = ends.route
    server = (route.five_tuple.server.host, route.five_tuple.server.port)
    assert fastpath.routes.install(route, math.inf, math.inf)
    stun = bytes.fromhex("000100002112a442") + os.urandom(12)
    for sent in (
        channel_data(b"abc", pad=b"\0"),  # padded (allowed over UDP, RFC 8656 §12.5)
        channel_data(b"other channel", number=CHANNEL + 1),
        struct.pack("!HH", CHANNEL, 10) + b"short",  # shorter than its length
        stun,
    ):
        ends.client.sendto(sent, server)
        assert received(ends.listener) == (sent, route.five_tuple.client.port)
    fastpath.routes.remove(route)
    ends.peer.sendto(b"not installed", (route.relay.host, route.relay.port))
    assert received(ends.relay) == (b"not installed", route.peer.port)


def test_a_datagram_that_would_not_fit_the_mtu_once_framed_goes_to_userspace(
    fastpath: FastPath, ends: Ends
) -> None:
    route = ends.route
    assert fastpath.routes.install(route, math.inf, math.inf)
    header = 48 if ":" in route.peer.host else 28
    payload = os.urandom(1500 - header)  # a full 1500-byte packet: 4 more bytes do not fit
    ends.peer.sendto(payload, (route.relay.host, route.relay.port))
    assert received(ends.relay) == (payload, route.peer.port)
    assert fastpath.status()["passed_mtu"] >= 1
    fastpath.routes.remove(route)


def test_the_allocation_rate_is_enforced_in_the_kernel_and_counted(
    fastpath: FastPath, ends: Ends
) -> None:
    """One packet per second holds one packet: of ten sent at once one goes, nine are dropped
    and counted, none reaches userspace."""
    route = ends.route
    server = (route.five_tuple.server.host, route.five_tuple.server.port)
    assert fastpath.routes.install(route, 1.0, math.inf)
    for _ in range(10):
        ends.client.sendto(channel_data(b"x" * 100), server)
    assert received(ends.peer) == (b"x" * 100, route.relay.port)
    ends.peer.settimeout(0.3)
    ends.listener.settimeout(0.3)
    assert received(ends.peer) is None
    assert received(ends.listener) is None
    final = fastpath.routes.remove(route)
    assert (final.packets_to_peer, final.dropped_to_peer) == (1, 9)
    assert fastpath.routes.groups == {}  # the allocation's quota entry went with its last route


def test_a_channel_the_kernel_cannot_route_is_refused_and_counted(
    fastpath: FastPath, ends: Ends
) -> None:
    """A routing lookup that fails (netlink raising its own error type, say) refuses the
    install, so the core keeps relaying that channel; the reason is counted."""

    class NetlinkRefused(Exception):
        pass

    def refuse(host: str) -> tuple[int, str | None]:
        raise NetlinkRefused(host)

    routes = fastpath.routes
    routes.resolve = refuse
    assert routes.install(ends.route, math.inf, math.inf) is False
    assert routes.failures["no_route"] == 1
    assert routes.entries == {}


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_two_clients_of_this_server_relaying_to_each_other_go_both_legs_in_one_pass(
    fastpath: FastPath, topologies: tuple[Topology, Topology], v6: bool
) -> None:
    """Client 1's ChannelData to its peer, client 2's relayed address, reaches client 2 as
    ChannelData on client 2's channel, both legs in the kernel (from a veth, where a datagram
    from one relay to the other could not go up the stack), and back the same way."""
    topo = topologies[int(v6)]
    addresses = topo.addresses
    one, two = Ends(topo), Ends(topo)  # each: a client, a listener, a relay (peers unused)
    try:
        a = ChannelRoute(one.route.five_tuple, CHANNEL, one.route.relay, two.route.relay)
        b = ChannelRoute(two.route.five_tuple, CHANNEL + 1, two.route.relay, one.route.relay)
        assert fastpath.routes.install(a, math.inf, math.inf)
        assert fastpath.routes.install(b, math.inf, math.inf)
        for size in (0, 5, 1000):
            payload = os.urandom(size)
            one.client.sendto(channel_data(payload), (addresses["listener"], one.server.port))
            assert received(two.client) == (channel_data(payload, CHANNEL + 1), two.server.port)
            two.client.sendto(
                channel_data(payload, CHANNEL + 1), (addresses["listener"], two.server.port)
            )
            assert received(one.client) == (channel_data(payload), one.server.port)
        for sock in (one.relay, two.relay, one.listener, two.listener):
            sock.settimeout(0.2)
            assert received(sock) is None
        moved = dict(fastpath.routes.collect())
        assert (moved[a].packets_to_peer, moved[a].packets_to_client) == (3, 3)
        assert (moved[b].packets_to_peer, moved[b].packets_to_client) == (3, 3)
        assert moved[a].bytes_to_peer == moved[b].bytes_to_client == 1005
        fastpath.routes.remove(a)
        fastpath.routes.remove(b)
    finally:
        one.close()
        two.close()


def test_an_address_held_on_lo_attaches_to_every_interface(
    topologies: tuple[Topology, Topology],
) -> None:
    """A cluster's service IP lives on lo but its traffic comes in on the router's links: the
    program goes on every interface that is up. A loopback address keeps it on lo alone."""
    topo = topologies[0]
    run("ip", "-n", topo.turnd, "addr", "add", "10.77.9.9/32", "dev", "lo")
    try:
        with inside(topo.turnd):
            service_ip = FastPath(FastpathConfig(), ["10.77.9.9"])
            loopback = FastPath(FastpathConfig(), ["127.0.0.1"])
        try:
            assert sorted(service_ip.links) == ["lo", "tc0", "tp0"]
            assert sorted(loopback.links) == ["lo"]
        finally:
            service_ip.close()
            loopback.close()
    finally:
        run("ip", "-n", topo.turnd, "addr", "del", "10.77.9.9/32", "dev", "lo")


def test_a_refresh_follows_a_moved_route_and_carries_the_counts(
    fastpath: FastPath, ends: Ends
) -> None:
    """When the host's route to an end has moved, a refresh rewrites the entries with the new
    egress; what they relayed before is not lost but comes with the next read. An unchanged
    route is left alone."""
    routes = fastpath.routes
    route = ends.route
    server = (route.five_tuple.server.host, route.five_tuple.server.port)
    assert routes.install(route, math.inf, math.inf)
    ends.client.sendto(channel_data(b"before"), server)
    assert received(ends.peer) == (b"before", route.relay.port)
    routes.refresh(route)  # nothing moved
    assert routes.rerouted == 0
    real = routes.resolve
    routes.resolve = lambda host: (1, real(host)[1]) if host == route.peer.host else real(host)
    routes.refresh(route)  # the peer "moved" behind lo
    assert routes.rerouted == 1
    value = routes.c2p.lookup(routes.entries[route].c2p)
    assert value is not None and maps.ROUTE.unpack(value)[5] == 1  # the egress it now uses
    routes.resolve = real
    routes.refresh(route)  # and back
    assert routes.rerouted == 2
    ends.client.sendto(channel_data(b"after"), server)
    assert received(ends.peer) == (b"after", route.relay.port)
    [(moved, traffic)] = routes.collect()
    assert moved == route
    assert (traffic.packets_to_peer, traffic.bytes_to_peer) == (2, len(b"before") + len(b"after"))
    assert routes.collect() == []
    routes.remove(route)
