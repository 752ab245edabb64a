"""What the core needs to know about its configuration, as one frozen value.

The daemon builds it from :mod:`turnd.config`; tests build it directly. Every limit is named here
with the reason it exists.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class CoreSettings:
    """Protocol parameters and limits of one TURN server core."""

    realm: str = "turnd"
    #: SOFTWARE attribute value; empty: none is sent.
    software: str = "turnd"
    #: IPv4 relay address (XOR-RELAYED-ADDRESS of IPv4 allocations); None: no IPv4 relays.
    relay_ipv4: str | None = "127.0.0.1"
    #: IPv6 relay address; None: IPv6 allocations are refused with 440.
    relay_ipv6: str | None = None
    port_min: int = 49152
    port_max: int = 65535
    #: The parts of [port_min, port_max] this server may pick relay ports from (a cluster node's
    #: slices); None: all of it.
    port_ranges: tuple[tuple[int, int], ...] | None = None
    #: RFC 8656 §7.2: default allocation lifetime.
    allocation_lifetime: float = 600.0
    #: RFC 8656 §7.2: an operator's ceiling on requested lifetimes (3600 s recommended).
    max_allocation_lifetime: float = 3600.0
    #: RFC 8656 §9: fixed at 300 s by the RFC.
    permission_lifetime: float = 300.0
    #: RFC 8656 §12: 10 minutes.
    channel_lifetime: float = 600.0
    #: RFC 8656 §7.2: how long a port reserved by EVEN-PORT R=1 is kept (30 s recommended).
    reservation_lifetime: float = 30.0
    #: Node-wide allocation ceiling: beyond it 508 Insufficient Capacity.
    max_allocations: int = 100_000
    #: One user's allocations: a leaked credential cannot take the whole node (486).
    max_allocations_per_user: int = 100
    #: One client IP's allocations: bounds what one host behind many usernames can hold (486).
    max_allocations_per_ip: int = 200
    #: Permissions per allocation: bounds memory and the reach of one allocation (508).
    max_permissions_per_allocation: int = 1000
    #: Channels per allocation: at most 4096 exist; a lower bound limits memory (508).
    max_channels_per_allocation: int = 1000
    #: RFC 6062 peer data connections per TCP allocation, made or being made: bounds the sockets
    #: one allocation can hold open (Connect beyond it is 403, peers connecting in are refused).
    max_peer_connections_per_allocation: int = 100
    #: First bytes of every RESERVATION-TOKEN (RFC 8656 §7.2): a cluster node puts its id there,
    #: so that the Allocate redeeming a token reaches the node holding the reserved port.
    reservation_prefix: bytes = b""
    #: RFC 6062 TCP allocations are offered. An anycast cluster turns them off: a peer's TCP
    #: connection to the shared relay address may reach any node, and TCP is not forwarded.
    tcp_relays: bool = True
    #: STUN Binding is answered without credentials (ICE servers are used that way).
    allow_anonymous_binding: bool = True
    #: Relayed packets per second per allocation, both directions together (0: no limit). Past it
    #: packets are dropped and counted: a relay drops, it does not queue.
    allocation_packet_rate: float = 50_000.0
    #: Relayed payload bytes per second per allocation (0: no limit); 12.5 MB/s is 100 Mbit/s.
    allocation_byte_rate: float = 12_500_000.0
    #: New peer addresses per second one allocation may start using (a port-scan guard).
    new_peer_rate: float = 50.0
    #: How many new peer addresses at once before that rate applies (ICE checks come in bursts).
    new_peer_burst: float = 100.0
    #: Unauthenticated answers (Binding, 401, 400 before auth) per second per source IP. Generous:
    #: many ICE clients share one NAT address; it stops floods and reflection, not browsers.
    unauthenticated_rate: float = 500.0
    #: Bucket size of the limit above: the burst one source may get answered at once.
    unauthenticated_burst: float = 1000.0
    #: Bytes one source IP may be answered beyond what it sent before authenticating
    #: (turnd.core.ratelimit.ByteCredit): a forged source's victim gets at most 1x plus this.
    unauthenticated_credit: int = 4096
    #: Failed authentications one source IP may make at once (online password guessing); past
    #: them its signed requests are dropped until the bucket refills at the rate below.
    auth_failure_burst: float = 20.0
    #: Failed authentications a second one source IP regains (one per 5 s).
    auth_failure_rate: float = 0.2
    #: Failed authentications one username may take at once from all sources together; past them
    #: each failing source is throttled at its first further failure.
    auth_failure_user_burst: float = 100.0
    #: Failed authentications a second one username regains.
    auth_failure_user_rate: float = 1.0
