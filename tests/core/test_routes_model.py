"""The route cache against its model (turnd.core.routes): after any sequence of requests, traffic,
timer jumps, drains, kills and cache attach/detach, the cache holds exactly the core's live
routes, and every packet either plane delivered is in the core's traffic totals once."""

from __future__ import annotations

from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from stun import attributes as at
from stun.addresses import Address
from testkit.fuzz import FUZZ
from tests.core.harness import PEER, PEER2, Client, World, core_settings
from turnd.core.actions import SendToClient, SendToPeer
from turnd.core.routes import live_route

PEERS = (PEER, PEER2, Address("198.51.100.9", 40002))
CHANNELS = (0x4000, 0x4001, 0x4002)
SECONDS = (0.5, 1.0, 60.0, 150.0, 299.0, 301.0, 601.0)

BIND = st.tuples(st.just("bind"), st.sampled_from(CHANNELS), st.sampled_from(PEERS))
TRAFFIC = st.tuples(st.just("traffic"), st.integers(1, 3))
ADVANCE = st.tuples(st.just("advance"), st.sampled_from(SECONDS))
#: Binds, traffic and time more often than the rest, so that most runs relay on both planes.
EVENTS = st.lists(
    st.one_of(
        BIND,
        BIND,
        TRAFFIC,
        TRAFFIC,
        TRAFFIC,
        ADVANCE,
        ADVANCE,
        st.tuples(st.just("permit"), st.sampled_from(PEERS)),
        st.tuples(st.just("drain"), st.booleans()),
        st.tuples(st.just("allocate")),
        st.tuples(st.just("refresh0")),
        st.tuples(st.just("kill")),
        st.tuples(st.just("attach")),
        st.tuples(st.just("detach")),
        st.tuples(st.just("collect")),
    ),
    min_size=10,
    max_size=40,
)


class Model:
    """The world under test and what was delivered to peers and to the client."""

    def __init__(self, permission_lifetime: float) -> None:
        settings = core_settings(
            allocation_packet_rate=0,
            allocation_byte_rate=0,
            permission_lifetime=permission_lifetime,
        )
        self.world = World(settings)
        self.world.attach_routes()
        self.alice: Client = self.world.client()
        self.alice.allocate(at.RequestedTransport(17), at.Lifetime(900))
        self.alice.channel_bind(CHANNELS[0], PEERS[0])
        self.to_peer = [0, 0]
        self.to_client = [0, 0]

    def apply(self, event: tuple[Any, ...]) -> None:
        world, alice, server = self.world, self.alice, self.world.server
        alloc = server.allocations.get(alice.five_tuple)
        kind = event[0]
        if kind == "allocate" and alloc is None:
            alice.allocate(at.RequestedTransport(17), at.Lifetime(900))
        elif kind == "bind" and alloc is not None:
            alice.channel_bind(event[1], event[2])
        elif kind == "permit" and alloc is not None:
            alice.create_permission(event[1])
        elif kind == "advance":
            world.advance(event[1])
        elif kind == "drain":
            server.set_draining(event[1], world.now)
        elif kind == "traffic" and alloc is not None:
            for binding in list(alloc.channels.values()):
                for _ in range(event[1]):
                    self.count(alice.channel_data(binding.number, b"up"))
                    self.count(world.peer_packet(alice.relayed, binding.peer, b"down!"))
        elif kind == "refresh0" and alloc is not None:
            alice.refresh(0)
        elif kind == "kill":
            server.kill(alice.five_tuple, world.now)
        elif kind == "attach" and world.routes is None:
            world.attach_routes()
        elif kind == "detach" and world.routes is not None:
            world.detach_routes()
        elif kind == "collect":
            server.collect_routes(world.now)

    def count(self, actions: list[Any]) -> None:
        for action in actions:
            if isinstance(action, SendToPeer):
                self.to_peer[0] += 1
                self.to_peer[1] += len(action.data)
            elif isinstance(action, SendToClient):
                self.to_client[0] += 1
                self.to_client[1] += len(b"down!")

    def check(self) -> None:
        world, server = self.world, self.world.server
        held = {r for a in server.allocations.values() for r in a.routes.values()}
        cache = world.routes
        assert server.routes is cache
        if cache is None:
            assert held == set()
        else:
            assert cache.installed == held and server.routes_installed == len(held)
        for alloc in server.allocations.values():
            for number, route in alloc.routes.items():  # installed: bound and live
                binding = alloc.channels.get(number)
                assert binding is not None
                assert live_route(server, alloc, binding, world.now) == route
            for binding in alloc.channels.values():  # live: installed
                live = live_route(server, alloc, binding, world.now)
                expected = None if cache is None else live
                assert alloc.routes.get(binding.number) == expected
        server.collect_routes(world.now)
        traffic = server.traffic()
        assert [traffic["packets_to_peer"], traffic["bytes_to_peer"]] == self.to_peer
        assert [traffic["packets_to_client"], traffic["bytes_to_client"]] == self.to_client
        assert server.stats["fastpath.orphan_packets"] == 0


@settings(FUZZ, max_examples=400)
@example(
    events=[("drain", True), ("traffic", 1), ("drain", False), ("traffic", 1)],
    permission_lifetime=300.0,
)
@example(
    events=[("traffic", 1), ("advance", 301.0), ("permit", PEER), ("traffic", 1)],
    permission_lifetime=300.0,
)
@example(events=[("advance", 301.0), ("bind", CHANNELS[0], PEER)], permission_lifetime=300.0)
@example(events=[("traffic", 2), ("advance", 601.0), ("traffic", 1)], permission_lifetime=900.0)
@example(events=[("detach",), ("bind", CHANNELS[1], PEER2), ("attach",)], permission_lifetime=300.0)
@example(
    events=[("traffic", 2), ("refresh0",), ("allocate",), ("bind", CHANNELS[0], PEER), ("kill",)],
    permission_lifetime=300.0,
)
@given(events=EVENTS, permission_lifetime=st.sampled_from([300.0, 900.0]))
def test_the_cache_holds_exactly_the_live_routes_and_traffic_adds_up(
    events: list[tuple[Any, ...]], permission_lifetime: float
) -> None:
    """Installed routes == live routes after every event; delivered == counted, once.
    (Permissions outliving channels or not: either expiry may come first.)"""
    model = Model(permission_lifetime)
    model.check()
    for event in events:
        model.apply(event)
        model.check()
