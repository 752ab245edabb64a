"""An in-memory TURN world for core tests: a server core, a clock, and clients that speak TURN.

No sockets: a test sends bytes into the core and reads the actions it returns. ``OpenRelay`` is
answered at once (success unless the test says otherwise), so an Allocate completes in one call;
so is ``ConnectPeer`` (RFC 6062 Connect), unless the test leaves it hanging to answer it itself.
Peers connecting to a TCP relay are simulated with :meth:`World.peer_connects`.
The peer policy refuses the server's own listener address (``SERVER``) like the daemon's does.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from stun.addresses import Address, AddressFamily
from testkit.client import error_code as error_code
from testkit.memory import CLIENT, CoreWorld, MemoryClient
from testkit.memory import PEER as PEER
from testkit.memory import PEER2 as PEER2
from testkit.memory import REALM as REALM
from testkit.memory import SERVER as SERVER
from testkit.memory import START as START
from testkit.memory import counter_rng as counter_rng
from testkit.memory import delivered as delivered
from testkit.memory import replies as replies
from testkit.memory import to_peer as to_peer
from turnd.core.actions import Transport
from turnd.core.actions import as_actions as as_actions
from turnd.core.settings import CoreSettings


def core_settings(**changes: Any) -> CoreSettings:
    """The harness's CoreSettings (realm ``REALM``, IPv4 relay on ``SERVER``) with ``changes``."""
    return CoreSettings(**{"realm": REALM, "relay_ipv4": SERVER.host, **changes})


class World(CoreWorld):
    """One core, a clock and helpers (:class:`testkit.memory.CoreWorld`), with harness clients
    and views of the core's state."""

    def client(self, username: str = "alice", password: str = "alice-pw", **kw: Any) -> Client:
        return Client(self, username, password, **kw)

    def revoke(self, username: str) -> None:
        """Refuse ``username`` from now on, as the control plane does (DESIGN.md)."""
        checker = self.server.auth
        checker.authenticator = checker.authenticator.revoke(username)

    def taken_ports(self, family: AddressFamily = AddressFamily.IPV4) -> set[int]:
        """Relay ports the core holds in ``family`` (allocations, binds pending, reservations)."""
        return set(self.server.ports.pools[family].taken)

    def client_state(self) -> dict[str, Any]:
        """Everything the core keeps per client or allocation (empty before any allocation)."""
        server = self.server
        return {
            "allocations": dict(server.allocations),
            "by_relay": dict(server.by_relay),
            "pending": dict(server.pending.by_ticket),
            "pending_tuples": set(server.pending.tuples),
            "abandoned": set(server.pending.abandoned),
            "reservations": dict(server.ports.reservations),
            "per_user": +Counter(server.quotas.per_user),
            "per_ip": +Counter(server.quotas.per_ip),
            "timers": server.timers.entries(),
            "taken_ports": {f: set(p.taken) for f, p in server.ports.pools.items()},
            "peer_connections": dict(server.tcp.by_id),
            "data_connections": dict(server.tcp.by_data),
            "peer_index": (dict(server.tcp.by_peer), dict(server.tcp.by_allocation)),
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
