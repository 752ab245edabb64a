"""An in-memory TURN world for core tests: a server core, a clock, and clients that speak TURN.

No sockets: a test sends bytes into the core and reads the actions it returns. ``OpenRelay`` is
answered at once (success unless the test says otherwise), so an Allocate completes in one call;
so is ``ConnectPeer`` (RFC 6062 Connect), unless the test leaves it hanging to answer it itself.
Peers connecting to a TCP relay are simulated with :meth:`World.peer_connects`.
The peer policy refuses the server's own listener address (``SERVER``) like the daemon's does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from auth.credentials import Authenticator
from auth.nonce import NonceManager, SecurityFeature
from stun.addresses import Address, AddressFamily
from testkit.client import error_code as error_code
from testkit.memory import CLIENT, SERVER, START, MemoryClient, counter_rng
from testkit.memory import PEER as PEER
from testkit.memory import PEER2 as PEER2
from testkit.memory import REALM as REALM
from testkit.memory import delivered as delivered
from testkit.memory import replies as replies
from testkit.memory import to_peer as to_peer
from turnd.core.actions import (
    Action,
    ConnectPeer,
    FiveTuple,
    OpenRelay,
    Transport,
)
from turnd.core.peer_policy import PeerPolicy
from turnd.core.server import TurnServer
from turnd.core.settings import CoreSettings


def core_settings(**changes: Any) -> CoreSettings:
    """The harness's CoreSettings (realm ``REALM``, IPv4 relay on ``SERVER``) with ``changes``."""
    return CoreSettings(**{"realm": REALM, "relay_ipv4": SERVER.host, **changes})


class World:
    """One core, a clock and helpers."""

    def __init__(
        self,
        settings: CoreSettings | None = None,
        *,
        users: dict[str, str] | None = None,
        secrets: Iterable[str] = (),
        allow: Iterable[str] = (),
        deny: Iterable[str] = (),
        features: Iterable[SecurityFeature] = (SecurityFeature.PASSWORD_ALGORITHMS,),
        bind_ok: bool | Callable[[OpenRelay], bool] = True,
        connect_ok: bool | None = True,
    ) -> None:
        self.now = START
        self.settings = settings or core_settings()
        self.auth = Authenticator.create(
            self.settings.realm,
            users={"alice": "alice-pw", "bob": "bob-pw"} if users is None else users,
            rest_secrets=tuple(secrets),
        )
        self.nonces = NonceManager(b"k" * 32, features=features)
        self.server = TurnServer(
            self.settings,
            self.auth,
            self.nonces,
            PeerPolicy.build(allow=allow, deny=deny, own_addresses=[SERVER]),
            counter_rng(),
        )
        #: Whether the adapter manages to bind each OpenRelay (a callable decides per request).
        self.bind_ok = bind_ok
        self.opened: list[OpenRelay] = []
        #: Whether the adapter manages each ConnectPeer; None leaves it connecting (the test
        #: answers with ``server.peer_connected``).
        self.connect_ok = connect_ok
        self.connects: list[ConnectPeer] = []

    def settle(self, actions: list[Action]) -> list[Action]:
        """Answer every OpenRelay and ConnectPeer at once; return all resulting actions (those
        included)."""
        out: list[Action] = []
        queue = list(actions)
        while queue:
            action = queue.pop(0)
            out.append(action)
            if isinstance(action, OpenRelay):
                self.opened.append(action)
                ok = self.bind_ok(action) if callable(self.bind_ok) else self.bind_ok
                queue.extend(self.server.relay_opened(action.ticket, ok, self.now))
            elif isinstance(action, ConnectPeer):
                self.connects.append(action)
                if self.connect_ok is not None:
                    answer = self.server.peer_connected
                    queue.extend(answer(action.connection_id, self.connect_ok, self.now))
        return out

    def peer_connects(self, relay: Address, peer: Address) -> tuple[int | None, list[Action]]:
        """A peer opens a TCP connection to ``relay`` (RFC 6062 §5.3), as the adapter reports."""
        connection_id, actions = self.server.peer_connection_arrived(relay, peer, self.now)
        return connection_id, self.settle(actions)

    def client_packet(self, five_tuple: FiveTuple, data: bytes) -> list[Action]:
        return self.settle(self.server.handle_client(five_tuple, data, self.now))

    def peer_packet(self, relay: Address, peer: Address, data: bytes) -> list[Action]:
        return self.server.handle_peer(relay, peer, data, self.now)

    def advance(self, seconds: float) -> list[Action]:
        """Move the clock and run every timer that fell due."""
        self.now += seconds
        return self.server.handle_timer(self.now)

    def client(self, username: str = "alice", password: str = "alice-pw", **kw: Any) -> Client:
        return Client(self, username, password, **kw)

    def revoke(self, username: str) -> None:
        """Refuse ``username`` from now on, as the control plane does (DESIGN.md)."""
        checker = self.server.auth
        checker.authenticator = checker.authenticator.revoke(username)

    def taken_ports(self, family: AddressFamily = AddressFamily.IPV4) -> set[int]:
        """Relay ports the core holds in ``family`` (allocations, binds pending, reservations)."""
        return set(self.server._pools[family].taken)

    def client_state(self) -> dict[str, Any]:
        """Everything the core keeps per client or allocation (empty before any allocation)."""
        server = self.server
        return {
            "allocations": dict(server.allocations),
            "by_relay": dict(server.by_relay),
            "pending": dict(server._pending),
            "pending_tuples": set(server._pending_tuples),
            "abandoned": set(server._abandoned),
            "reservations": dict(server._reservations),
            "per_user": +server._per_user,
            "per_ip": +server._per_ip,
            "timers": list(server._timers),
            "taken_ports": {f: set(p.taken) for f, p in server._pools.items()},
            "peer_connections": dict(server.tcp.by_id),
            "data_connections": dict(server.tcp.by_data),
            "peer_index": (dict(server.tcp._by_peer), dict(server.tcp._by_allocation)),
        }


class Client(MemoryClient):
    """A TURN client driving the core: handles the 401/438 dance like a real one."""

    def __init__(
        self,
        world: World,
        username: str,
        password: str,
        address: Address = CLIENT,
        transport: Transport = Transport.UDP,
        **session: Any,
    ) -> None:
        super().__init__(
            world,
            username,
            password,
            address=address,
            server=SERVER,
            transport=transport,
            default_realm=REALM,
            max_retries=1,
            **session,
        )

    def data_connection(self, port: int) -> Client:
        """A second TCP connection of this client (RFC 6062 §4.3: one per peer connection), same
        credentials, from source port ``port``; it learns its own nonce."""
        return Client(
            self.world,  # type: ignore[arg-type]
            self.username,
            self.password,
            address=Address(self.address.host, port),
            transport=self.transport,
            sha256=self.sha256,
        )
