"""RFC 6062 §5: TCP allocations — Allocate with REQUESTED-TRANSPORT TCP, Connect, peers connecting
in (ConnectionAttempt), ConnectionBind and splicing, the 30 s bind timer, and closing data
connections together with their peers and allocations."""

from __future__ import annotations

from typing import Any

import pytest

from stun import attributes as at
from stun.addresses import Address, AddressFamily
from stun.channeldata import frame_channel_data
from stun.message import Message, MessageClass, Method, check_integrity, decode, encode
from tests.core.harness import PEER, PEER2, Client, World, core_settings, error_code, replies
from turnd.core.actions import (
    AllocationEnded,
    CloseConnection,
    ClosePeerConnection,
    CloseRelay,
    ConnectPeer,
    SendToClient,
    SpliceConnection,
    Transport,
)
from turnd.core.tcp_relay import CONNECTION_BIND_TIMEOUT, MAX_CONNECTION_ID, ConnectionState

TCP = at.RequestedTransport(6)
UDP = at.RequestedTransport(17)
PEER6 = Address("2001:db8::7", 40000)


def tcp_client(world: World, transport: Transport = Transport.TCP, **kw: Any) -> Client:
    """A client with a TCP allocation (and a permission for PEER) on its control connection."""
    client = world.client(transport=transport, **kw)
    reply = client.allocate(TCP, at.Lifetime(3600))
    assert error_code(reply) is None, reply
    assert error_code(client.create_permission(PEER)) is None
    return client


def connection_id(reply: Message) -> int:
    attr = reply.get(at.ConnectionId)
    assert attr is not None, reply
    return attr.value


def connected(world: World, client: Client, peer: Address = PEER) -> int:
    """Connect to ``peer``; the id of the pending peer data connection."""
    reply = client.connect(peer)
    assert error_code(reply) is None, reply
    return connection_id(reply)


def connecting() -> tuple[World, Client, ConnectPeer]:
    """A world that leaves connecting to the test, its TCP client, and the one action its
    Connect to PEER asks for."""
    world = World(connect_ok=None)
    client = tcp_client(world)
    client.fetch_nonce()
    [ask] = world.client_packet(
        client.five_tuple, client.build(Method.CONNECT, [at.XorPeerAddress(PEER)])
    )
    assert isinstance(ask, ConnectPeer)
    return world, client, ask


def bound(world: World, client: Client, port: int = 60001) -> tuple[int, Client]:
    """A peer connection to PEER, bound to a new data connection from ``port``."""
    cid = connected(world, client)
    data = client.data_connection(port)
    assert error_code(data.connection_bind(cid)) is None
    return cid, data


def state(world: World, cid: int) -> ConnectionState:
    return world.server.tcp.by_id[cid].state


# --- Allocate (§5.1) -----------------------------------------------------------------------------


@pytest.mark.parametrize("transport", [Transport.TCP, Transport.TLS])
def test_tcp_allocate_over_a_stream_listens_on_the_relayed_address(transport: Transport) -> None:
    """§5.1: REQUESTED-TRANSPORT TCP over TCP/TLS allocates a TCP relayed address to listen on."""
    world = World()
    alice = world.client(transport=transport)
    reply = alice.allocate(TCP)
    assert error_code(reply) is None and check_integrity(reply, alice.key())
    assert not reply.has(at.ReservationToken)
    [opened] = world.opened
    assert opened.tcp and opened.relay == alice.relayed
    assert (opened.reserve, opened.dont_fragment, opened.reserved) == (False, False, False)
    assert world.server.allocations[alice.five_tuple].tcp


def test_udp_allocate_over_tcp_still_opens_a_udp_relay() -> None:
    """§5.1 item 1: REQUESTED-TRANSPORT UDP keeps RFC 8656's procedures, on any transport."""
    world = World()
    assert error_code(world.client(transport=Transport.TCP).allocate(UDP)) is None
    assert not world.opened[0].tcp


def test_tcp_allocate_is_442_where_tcp_relays_are_off() -> None:
    """An anycast cluster node (tcp_relays off) answers TCP allocations 442, opening nothing."""
    world = World(core_settings(tcp_relays=False))
    reply = world.client(transport=Transport.TCP).allocate(TCP)
    assert error_code(reply) == 442
    assert world.opened == [] and world.server.allocations == {}


def test_tcp_allocate_over_udp_is_400() -> None:
    """§5.1 item 2: a TCP allocation over a client connection that is not TCP or TLS is 400."""
    world = World()
    assert error_code(world.client().allocate(TCP)) == 400
    assert world.opened == [] and world.server.allocations == {}


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(at.DontFragment(), id="dont-fragment"),
        pytest.param(at.EvenPort(), id="even-port"),
        pytest.param(at.ReservationToken(b"12345678"), id="reservation-token"),
    ],
)
def test_tcp_allocate_with_udp_only_attributes_is_400(extra: Any) -> None:
    """§5.1 item 3: DONT-FRAGMENT, EVEN-PORT or RESERVATION-TOKEN with TCP is 400."""
    world = World()
    reply = world.client(transport=Transport.TCP).allocate(TCP, extra)
    assert error_code(reply) == 400
    assert world.opened == []


# --- Connect (§5.2) ------------------------------------------------------------------------------


def test_connect_answers_a_connection_id_once_the_peer_is_connected() -> None:
    """§5.2: Connect opens a connection from the relayed address; success carries CONNECTION-ID."""
    world, alice, ask = connecting()
    assert (ask.relay, ask.peer) == (alice.relayed, PEER)
    assert state(world, ask.connection_id) is ConnectionState.CONNECTING
    [answer] = world.server.peer_connected(ask.connection_id, True, world.now)
    assert isinstance(answer, SendToClient) and answer.five_tuple == alice.five_tuple
    reply = decode(answer.data)
    assert reply.cls is MessageClass.SUCCESS and reply.method == Method.CONNECT
    assert connection_id(reply) == ask.connection_id and check_integrity(reply, alice.key())
    assert state(world, ask.connection_id) is ConnectionState.PENDING
    assert world.server.stats["tcp.connects"] == 1


def test_connect_failure_is_447_and_the_peer_can_be_tried_again() -> None:
    """§5.2: a connection attempt that fails or times out is answered 447."""
    world = World(connect_ok=False)
    alice = tcp_client(world)
    reply = alice.connect(PEER)
    assert error_code(reply) == 447 and check_integrity(reply, alice.key())
    assert world.server.tcp.by_id == {}
    world.connect_ok = True
    assert error_code(alice.connect(PEER)) is None


def test_connect_without_an_allocation_is_437() -> None:
    """§5.2: Connect on a TCP connection with no allocation gets 437."""
    world = World()
    reply = world.client(transport=Transport.TCP).connect(PEER)
    assert error_code(reply) == 437 and world.connects == []


def test_connect_on_a_udp_allocation_is_400() -> None:
    """§5.2: Connect needs a TCP allocation; on a UDP one it is 400."""
    world = World()
    alice = world.client(transport=Transport.TCP)
    alice.allocate(UDP)
    alice.create_permission(PEER)
    assert error_code(alice.connect(PEER)) == 400 and world.connects == []


def test_connect_by_another_user_on_the_control_connection_is_441() -> None:
    """RFC 8656 §5: a request on an allocation's 5-tuple with other credentials gets 441."""
    world = World()
    tcp_client(world)
    bob = world.client("bob", "bob-pw", transport=Transport.TCP)
    assert error_code(bob.connect(PEER)) == 441


def test_connect_without_xor_peer_address_is_400() -> None:
    """§5.2: a Connect without XOR-PEER-ADDRESS is 400."""
    world = World()
    alice = tcp_client(world)
    assert error_code(alice.request(Method.CONNECT)) == 400


def test_connect_to_a_peer_of_another_family_is_443() -> None:
    """RFC 8656 §10.2 (applied to Connect): a peer of a family with no relay is 443."""
    world = World()
    alice = tcp_client(world)
    assert error_code(alice.connect(PEER6)) == 443


def test_connect_without_a_permission_is_403() -> None:
    """§5.2: a connection to a peer without a permission is forbidden by policy: 403."""
    world = World()
    alice = tcp_client(world)
    assert error_code(alice.connect(PEER2)) == 403 and world.connects == []


def test_connect_to_a_denied_peer_is_403() -> None:
    """§5.2: a connection forbidden by the peer policy is 403, permission or not."""
    world = World(deny=["198.51.100.7/32"])
    alice = world.client(transport=Transport.TCP)
    alice.allocate(TCP)
    assert error_code(alice.connect(PEER)) == 403
    assert world.server.stats["denied.peer"] >= 1


@pytest.mark.parametrize("stage", ["connecting", "pending", "bound", "inbound"])
def test_connect_to_a_peer_already_connected_or_connecting_is_446(stage: str) -> None:
    """§5.2: a Connect to a peer with a connection made or being made is 446."""
    world = World(connect_ok=None if stage == "connecting" else True)
    alice = tcp_client(world)
    if stage == "inbound":
        world.peer_connects(alice.relayed, PEER)
    elif stage == "bound":
        bound(world, alice)
    else:
        alice.fetch_nonce()
        request = alice.build(Method.CONNECT, [at.XorPeerAddress(PEER)])
        world.client_packet(alice.five_tuple, request)
    [reply] = alice.raw(alice.build(Method.CONNECT, [at.XorPeerAddress(PEER)]))
    assert error_code(reply) == 446
    assert len(world.server.tcp.by_id) == 1
    world.connect_ok = True
    assert error_code(alice.connect(Address(PEER.host, PEER.port + 1))) is None


def test_connect_beyond_the_peer_connection_quota_is_403() -> None:
    """A TCP allocation holds at most max_peer_connections_per_allocation connections: 403."""
    world = World(core_settings(max_peer_connections_per_allocation=2))
    alice = tcp_client(world)
    assert [error_code(alice.connect(Address(PEER.host, p))) for p in (1, 2, 3)] == [
        None,
        None,
        403,
    ]
    assert world.server.stats["quota.peer_connections"] == 1


def test_late_report_for_a_forgotten_connection_closes_the_socket() -> None:
    """§5.2: an allocation deleted while connecting answers 447; a late success is closed."""
    world, alice, ask = connecting()
    actions = world.server.kill(alice.five_tuple, world.now)
    [refusal] = [decode(r) for r in replies(actions, alice.five_tuple)]
    assert error_code(refusal) == 447
    assert ClosePeerConnection(ask.connection_id) in actions
    server = world.server
    assert server.peer_connected(ask.connection_id, True, world.now) == [
        ClosePeerConnection(ask.connection_id)
    ]
    assert server.peer_connected(ask.connection_id, False, world.now) == []
    assert server.stats["drop.peer_connected_unknown"] == 2


def test_a_second_report_for_one_connect_is_ignored() -> None:
    """§5.2: the adapter reports each connection attempt once; a repeat changes nothing."""
    world = World()
    alice = tcp_client(world)
    cid = connected(world, alice)
    assert world.server.peer_connected(cid, True, world.now) == []
    assert world.server.peer_connected(cid, False, world.now) == []
    assert state(world, cid) is ConnectionState.PENDING
    assert world.server.stats["drop.peer_connected_twice"] == 2


def test_peer_connection_lost_while_connecting_answers_447() -> None:
    """§5.2: a connection that fails before the adapter reports it still gets its 447."""
    world, alice, ask = connecting()
    actions = world.server.peer_connection_closed(ask.connection_id, world.now)
    assert actions[0] == ClosePeerConnection(ask.connection_id)
    [refusal] = [decode(r) for r in replies(actions, alice.five_tuple)]
    assert error_code(refusal) == 447
    assert world.server.tcp.by_id == {}


# --- peers connecting in (§5.3) ------------------------------------------------------------------


def test_peer_with_a_permission_is_announced_with_connection_attempt() -> None:
    """§5.3: an accepted peer connection is announced on the control connection with
    XOR-PEER-ADDRESS and CONNECTION-ID."""
    world = World()
    alice = tcp_client(world)
    cid, actions = world.peer_connects(alice.relayed, PEER)
    assert cid is not None
    [indication] = [decode(r) for r in replies(actions, alice.five_tuple)]
    assert indication.method == Method.CONNECTION_ATTEMPT
    assert indication.cls is MessageClass.INDICATION
    peer = indication.get(at.XorPeerAddress)
    assert peer is not None and peer.address == PEER
    assert connection_id(indication) == cid
    assert state(world, cid) is ConnectionState.PENDING


def test_peer_without_a_permission_is_refused() -> None:
    """§5.3: a peer with no permission is closed at once; the client hears nothing."""
    world = World()
    alice = tcp_client(world)
    assert world.peer_connects(alice.relayed, PEER2) == (None, [])
    assert world.server.stats["drop.tcp_peer_no_permission"] == 1


@pytest.mark.parametrize("udp", [True, False], ids=["udp-relay", "unknown-relay"])
def test_peer_connection_to_a_relay_without_tcp_allocation_is_refused(udp: bool) -> None:
    """§5.3: only a TCP allocation's relayed address accepts peer connections."""
    world = World()
    alice = world.client(transport=Transport.TCP)
    alice.allocate(UDP)
    alice.create_permission(PEER)
    relay = alice.relayed if udp else Address(alice.relayed.host, 1)
    assert world.peer_connects(relay, PEER) == (None, [])
    assert world.server.stats["drop.tcp_peer_no_allocation"] == 1


def test_second_peer_connection_from_one_peer_address_is_refused() -> None:
    """§5.2/§5.3: one connection per peer transport address and allocation."""
    world = World()
    alice = tcp_client(world)
    first, _ = world.peer_connects(alice.relayed, PEER)
    assert first is not None
    assert world.peer_connects(alice.relayed, PEER) == (None, [])
    assert world.server.stats["drop.tcp_peer_duplicate"] == 1


def test_peer_connection_beyond_the_quota_is_refused() -> None:
    """Peers connecting in count toward max_peer_connections_per_allocation too."""
    world = World(core_settings(max_peer_connections_per_allocation=1))
    alice = tcp_client(world)
    assert world.peer_connects(alice.relayed, PEER)[0] is not None
    assert world.peer_connects(alice.relayed, Address(PEER.host, 1)) == (None, [])
    assert world.server.stats["drop.tcp_peer_quota"] == 1


# --- ConnectionBind (§5.4) -----------------------------------------------------------------------


@pytest.mark.parametrize("inbound", [False, True], ids=["connect", "connection-attempt"])
def test_connection_bind_on_a_new_connection_splices_it(inbound: bool) -> None:
    """§5.4: ConnectionBind on a new TCP connection answers success, then the data connection
    carries raw bytes to and from the peer connection."""
    world = World()
    alice = tcp_client(world, Transport.TLS)
    if inbound:
        cid, _ = world.peer_connects(alice.relayed, PEER)
        assert cid is not None
    else:
        cid = connected(world, alice)
    data = alice.data_connection(60001)
    reply = data.connection_bind(cid)
    assert reply.cls is MessageClass.SUCCESS and check_integrity(reply, data.key())
    response, splice = data.last_actions
    assert isinstance(response, SendToClient) and response.five_tuple == data.five_tuple
    assert splice == SpliceConnection(cid, data.five_tuple)
    assert state(world, cid) is ConnectionState.BOUND
    assert world.server.tcp.by_data[data.five_tuple].connection_id == cid


def test_connection_bind_over_udp_is_400() -> None:
    """§5.4: a ConnectionBind whose client connection is not TCP or TLS is 400."""
    world = World()
    alice = tcp_client(world)
    cid = connected(world, alice)
    udp = world.client(address=Address(alice.address.host, 60001))
    assert error_code(udp.connection_bind(cid)) == 400
    assert state(world, cid) is ConnectionState.PENDING


def test_connection_bind_on_a_connection_already_in_use_is_400() -> None:
    """§5.4: ConnectionBind comes on a new connection: not on one with an allocation, one
    opening an allocation, or one already bound."""
    world = World()
    alice = tcp_client(world)
    _, data = bound(world, alice)
    second = connected(world, alice, Address(PEER.host, 1))
    assert error_code(alice.connection_bind(second)) == 400
    assert error_code(data.connection_bind(second)) == 400
    opening = alice.data_connection(60002)
    opening.fetch_nonce()
    world.bind_ok = lambda action: False  # never reached: the Allocate below stays pending
    world.server.handle_client(opening.five_tuple, opening.build(Method.ALLOCATE, [TCP]), world.now)
    assert error_code(opening.connection_bind(second)) == 400
    assert state(world, second) is ConnectionState.PENDING


def test_connection_bind_without_connection_id_is_400() -> None:
    """§5.4: a ConnectionBind without CONNECTION-ID is 400."""
    world = World()
    data = tcp_client(world).data_connection(60001)
    assert error_code(data.request(Method.CONNECTION_BIND)) == 400


@pytest.mark.parametrize("which", ["unknown", "connecting", "bound"])
def test_connection_bind_to_an_id_not_pending_is_400(which: str) -> None:
    """§5.4: a CONNECTION-ID that names no pending connection (unknown, not yet connected,
    already bound) is 400."""
    world = World(connect_ok=None if which == "connecting" else True)
    alice = tcp_client(world)
    if which == "bound":
        cid, _ = bound(world, alice)
    elif which == "connecting":
        alice.fetch_nonce()
        request = alice.build(Method.CONNECT, [at.XorPeerAddress(PEER)])
        [ask] = world.client_packet(alice.five_tuple, request)
        assert isinstance(ask, ConnectPeer)
        cid = ask.connection_id
    else:
        cid = 12345
    assert error_code(alice.data_connection(60009).connection_bind(cid)) == 400


def test_connection_bind_by_another_user_is_441() -> None:
    """§5.4, RFC 8656 §5: only the allocation's user may bind its connections (441)."""
    world = World()
    alice = tcp_client(world)
    cid = connected(world, alice)
    bob = world.client("bob", "bob-pw", address=Address("203.0.113.9", 60001))
    bob.transport = Transport.TCP
    reply = bob.connection_bind(cid)
    assert error_code(reply) == 441 and check_integrity(reply, bob.key())
    assert state(world, cid) is ConnectionState.PENDING


def test_connection_bind_is_authenticated_before_anything_is_looked_up() -> None:
    """RFC 8489 §9.2.4: an unauthenticated ConnectionBind gets 401 and changes nothing."""
    world = World()
    alice = tcp_client(world)
    cid = connected(world, alice)
    stranger = alice.data_connection(60001)
    [reply] = stranger.raw(stranger.build(Method.CONNECTION_BIND, [at.ConnectionId(cid)]))
    assert error_code(reply) == 401
    assert state(world, cid) is ConnectionState.PENDING


# --- the 30 s bind timer (§5.2, §5.3) ------------------------------------------------------------


@pytest.mark.parametrize("inbound", [False, True], ids=["connect", "connection-attempt"])
def test_unbound_connection_is_closed_after_30_seconds(inbound: bool) -> None:
    """§5.2, §5.3: a peer connection not bound within 30 seconds is closed."""
    world = World()
    alice = tcp_client(world)
    if inbound:
        cid, _ = world.peer_connects(alice.relayed, PEER)
        assert cid is not None
    else:
        cid = connected(world, alice)
    assert CONNECTION_BIND_TIMEOUT == 30.0
    assert world.advance(29.9) == []
    assert world.advance(0.1) == [ClosePeerConnection(cid)]
    assert world.server.tcp.by_id == {}
    assert world.server.stats["tcp.bind_timeouts"] == 1
    assert error_code(alice.data_connection(60001).connection_bind(cid)) == 400


def test_connection_bind_arriving_at_the_deadline_is_too_late() -> None:
    """§5.2: the 30 s are up even if the timer has not run yet when ConnectionBind arrives."""
    world = World()
    alice = tcp_client(world)
    cid = connected(world, alice)
    data = alice.data_connection(60001)
    data.fetch_nonce()
    world.now += CONNECTION_BIND_TIMEOUT
    reply = data.connection_bind(cid)
    assert error_code(reply) == 400
    assert ClosePeerConnection(cid) in data.last_actions


def test_bound_connection_outlives_the_bind_timer() -> None:
    """§5.4: once bound, a connection is no longer subject to the 30 s timer."""
    world = World()
    alice = tcp_client(world)
    cid, _ = bound(world, alice)
    assert world.advance(60) == []
    assert state(world, cid) is ConnectionState.BOUND


# --- closing (§5.5) ------------------------------------------------------------------------------


def test_closing_the_data_connection_closes_the_peer_connection() -> None:
    """§5.5: when a client data connection closes, the server closes its peer connection."""
    world = World()
    alice = tcp_client(world)
    cid, data = bound(world, alice)
    actions = world.server.connection_closed(data.five_tuple, world.now)
    assert actions == [ClosePeerConnection(cid)]
    assert world.server.tcp.by_id == {} and world.server.tcp.by_data == {}
    assert world.server.connection_closed(data.five_tuple, world.now) == []
    assert len(world.server.allocations) == 1


def test_closing_the_peer_connection_closes_the_data_connection() -> None:
    """§5.5: when a peer data connection closes, the server closes its client data connection."""
    world = World()
    alice = tcp_client(world)
    cid, data = bound(world, alice)
    actions = world.server.peer_connection_closed(cid, world.now)
    assert CloseConnection(data.five_tuple) in actions
    assert world.server.tcp.by_data == {}
    assert world.server.peer_connection_closed(cid, world.now) == []


def test_pending_peer_connection_closing_is_forgotten_quietly() -> None:
    """§5.5: a peer that hangs up before ConnectionBind leaves nothing behind; binding it is 400."""
    world = World()
    alice = tcp_client(world)
    cid, _ = world.peer_connects(alice.relayed, PEER)
    assert cid is not None
    assert world.server.peer_connection_closed(cid, world.now) == [ClosePeerConnection(cid)]
    assert error_code(alice.data_connection(60001).connection_bind(cid)) == 400
    assert world.advance(CONNECTION_BIND_TIMEOUT) == []


def deletions() -> list[Any]:
    return [
        pytest.param(lambda w, c: w.settle(w.server.kill(c.five_tuple, w.now)), id="kill"),
        pytest.param(
            lambda w, c: w.server.connection_closed(c.five_tuple, w.now), id="control-closed"
        ),
        pytest.param(
            lambda w, c: c.raw(c.build(Method.REFRESH, [at.Lifetime(0)])) and c.last_actions,
            id="refresh-0",
        ),
        pytest.param(lambda w, c: w.advance(3600), id="expiry"),
    ]


@pytest.mark.parametrize("delete", deletions())
def test_deleting_a_tcp_allocation_closes_all_its_connections(delete: Any) -> None:
    """§5.5: the connections of a TCP allocation end with it: peer connections close, data
    connections close, and a Connect still waiting is answered 447."""
    world = World()
    alice = tcp_client(world)
    before = world.client_state()
    bound_id, data = bound(world, alice)
    pending_id = connected(world, alice, Address(PEER.host, 1))
    world.connect_ok = None
    alice.fetch_nonce()
    request = alice.build(Method.CONNECT, [at.XorPeerAddress(Address(PEER.host, 2))])
    [ask] = world.client_packet(alice.five_tuple, request)
    assert isinstance(ask, ConnectPeer)
    world.now += 29  # the connections' bind timers are still ahead; the allocation's is not
    actions = delete(world, alice)
    closed = [a.connection_id for a in actions if isinstance(a, ClosePeerConnection)]
    assert sorted(closed) == sorted([bound_id, pending_id, ask.connection_id])
    assert CloseConnection(data.five_tuple) in actions
    refusals = [decode(r) for r in replies(actions, alice.five_tuple)]
    assert 447 in [error_code(r) for r in refusals]
    assert [type(a) for a in actions if isinstance(a, (CloseRelay, AllocationEnded))] == [
        CloseRelay,
        AllocationEnded,
    ]
    state_after = world.client_state()
    assert state_after["peer_connections"] == {} and state_after["data_connections"] == {}
    assert state_after["peer_index"] == ({}, {})
    assert before["peer_connections"] == {}
    assert world.advance(CONNECTION_BIND_TIMEOUT) == []


# --- no datagrams on a TCP allocation (§5) -------------------------------------------------------


def test_send_indication_on_a_tcp_allocation_is_dropped_and_counted() -> None:
    """§5 relays a TCP allocation over connections only: a Send indication is discarded."""
    world = World()
    alice = tcp_client(world)
    message = Message(
        Method.SEND,
        MessageClass.INDICATION,
        alice.new_txid(),
        (at.XorPeerAddress(PEER), at.Data(b"x")),
    )
    assert world.client_packet(alice.five_tuple, encode(message)) == []
    assert world.server.stats["drop.send_tcp_allocation"] == 1


def test_channel_bind_on_a_tcp_allocation_is_400_and_channel_data_is_dropped() -> None:
    """§5 gives TCP allocations no channels: ChannelBind is 400, ChannelData is dropped."""
    world = World()
    alice = tcp_client(world)
    assert error_code(alice.channel_bind(0x4000, PEER)) == 400
    assert world.client_packet(alice.five_tuple, frame_channel_data(0x4000, b"x", pad=True)) == []
    assert world.server.stats["drop.channel_data_tcp_allocation"] == 1


# --- connection ids (§6.2.1) ---------------------------------------------------------------------


def test_connection_ids_are_unique_while_alive_and_wrap_around_in_32_bits() -> None:
    """§5.2, §6.2.1: each live connection has its own 32-bit id; the counter wraps past ids in
    use and never gives out one that is alive."""
    world = World()
    alice = tcp_client(world)
    world.server.tcp.next_id = MAX_CONNECTION_ID
    last = connected(world, alice)
    world.server.tcp.next_id = MAX_CONNECTION_ID
    wrapped = connected(world, alice, Address(PEER.host, 1))
    assert (last, wrapped) == (MAX_CONNECTION_ID, 1)
    world.server.tcp.next_id = 1
    skipped = connected(world, alice, Address(PEER.host, 2))
    assert skipped == 2
    assert len({last, wrapped, skipped}) == 3


# --- timers run before the adapter's reports -----------------------------------------------------


def test_reports_run_due_timers_first() -> None:
    """An allocation past its lifetime is gone before a peer connection or report is handled."""
    world = World()
    alice = tcp_client(world)
    world.now += 3600
    connection, actions = world.server.peer_connection_arrived(alice.relayed, PEER, world.now)
    assert connection is None
    assert [type(a) for a in actions][:2] == [CloseRelay, AllocationEnded]
    assert world.server.peer_connected(99, False, world.now + 1) == []


def test_dual_tcp_allocation_connects_from_the_peers_family_and_ends_per_family() -> None:
    """§5.2 with RFC 8656 §8.1: a dual TCP allocation connects from the relay of the peer's
    family; deleting one family closes that family's connections only."""
    world = World(core_settings(relay_ipv6="2001:db8::1"))
    alice = world.client(transport=Transport.TCP)
    alice.allocate(TCP, at.AdditionalAddressFamily(AddressFamily.IPV6))
    assert [o.tcp for o in world.opened] == [True, True]
    alice.create_permission(PEER, PEER6)
    four, six = connected(world, alice), connected(world, alice, PEER6)
    assert [c.relay.family for c in world.connects] == [AddressFamily.IPV4, AddressFamily.IPV6]
    alice.refresh(0, at.RequestedAddressFamily(AddressFamily.IPV6))
    assert [a for a in alice.last_actions if isinstance(a, ClosePeerConnection)] == [
        ClosePeerConnection(six)
    ]
    assert set(world.server.tcp.by_id) == {four}
