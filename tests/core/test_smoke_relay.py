"""End-to-end relaying through the in-memory core: the paths every TURN client uses."""

from stun import attributes as at
from tests.core.harness import PEER, World, delivered, error_code


def test_allocate_is_challenged_then_succeeds_with_relay_in_range() -> None:
    """RFC 8656 §7.2: an unauthenticated Allocate gets 401; the retry with credentials succeeds."""
    world = World()
    alice = world.client()
    reply = alice.allocate()
    assert error_code(reply) is None, reply
    assert alice.relay is not None
    assert world.settings.port_min <= alice.relay.port <= world.settings.port_max
    lifetime = reply.get(at.Lifetime)
    assert lifetime is not None and lifetime.seconds == 600
    mapped = reply.get(at.XorMappedAddress)
    assert mapped is not None and mapped.address == alice.address


def test_send_indication_and_data_indication_round_trip() -> None:
    """RFC 8656 §10: Send relays to a permitted peer; the peer's answer comes back as Data."""
    world = World()
    alice = world.client()
    alice.allocate()
    assert error_code(alice.create_permission(PEER)) is None
    [out] = alice.send(PEER, b"hello")
    assert (out.peer, out.data, out.relay) == (PEER, b"hello", alice.relay)
    assert alice.relay is not None
    back = world.peer_packet(alice.relay, PEER, b"world")
    assert delivered(back, alice) == [("data", (PEER, b"world"))]


def test_channel_data_both_ways() -> None:
    """RFC 8656 §12: after ChannelBind, ChannelData flows both ways on the channel."""
    world = World()
    alice = world.client()
    alice.allocate()
    assert error_code(alice.channel_bind(0x4001, PEER)) is None
    [out] = alice.channel_data(0x4001, b"ping")
    assert (out.peer, out.data) == (PEER, b"ping")
    assert alice.relay is not None
    back = world.peer_packet(alice.relay, PEER, b"pong")
    assert delivered(back, alice) == [("channel", (0x4001, b"pong"))]


def test_sha256_client_allocates() -> None:
    """RFC 8489 §9.2: a client choosing SHA-256 from PASSWORD-ALGORITHMS is served with it."""
    world = World()
    bob = world.client("bob", "bob-pw", sha256=True)
    reply = bob.allocate()
    assert error_code(reply) is None
    assert reply.has(at.MessageIntegritySha256)
