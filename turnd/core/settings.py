"""What the core needs to know about its configuration, as one frozen value.

The daemon builds it from :mod:`turnd.config` through :mod:`turnd.core_settings_map`; tests
build it directly. The defaults here are the daemon's too: a config field that sets a setting
(``config_sections.core_field``, named in the comment beside it) takes its default from here and
holds its doc, the reason for the limit. Settings no config field sets are documented here.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class CoreSettings:
    """Protocol parameters and limits of one TURN server core."""

    realm: str = "turnd"  # server.realm
    software: str = "turnd"  # server.software (the daemon's default names its version)
    #: IPv4 relay address (XOR-RELAYED-ADDRESS of IPv4 allocations); None: no IPv4 relays.
    relay_ipv4: str | None = "127.0.0.1"
    #: IPv6 relay address; None: IPv6 allocations are refused with 440.
    relay_ipv6: str | None = None
    port_min: int = 49152  # relay.port_min
    port_max: int = 65535  # relay.port_max
    #: The parts of [port_min, port_max] this server may pick relay ports from (a cluster node's
    #: slices); None: all of it.
    port_ranges: tuple[tuple[int, int], ...] | None = None
    allocation_lifetime: float = 600.0  # relay.allocation_lifetime
    max_allocation_lifetime: float = 3600.0  # relay.max_allocation_lifetime
    permission_lifetime: float = 300.0  # relay.permission_lifetime
    channel_lifetime: float = 600.0  # relay.channel_lifetime
    #: RFC 8656 §7.2: how long a port reserved by EVEN-PORT R=1 is kept (30 s recommended).
    reservation_lifetime: float = 30.0
    max_allocations: int = 100_000  # limits.max_allocations (508 past it)
    max_allocations_per_user: int = 100  # limits.max_allocations_per_user (486)
    max_allocations_per_ip: int = 200  # limits.max_allocations_per_ip (486)
    max_permissions_per_allocation: int = 1000  # limits.max_permissions_per_allocation (508)
    max_channels_per_allocation: int = 1000  # limits.max_channels_per_allocation (508)
    max_peer_connections_per_allocation: int = 100  # limits.max_peer_connections_... (403)
    #: First bytes of every RESERVATION-TOKEN (RFC 8656 §7.2): a cluster node puts its id there,
    #: so that the Allocate redeeming a token reaches the node holding the reserved port.
    reservation_prefix: bytes = b""
    #: RFC 6062 TCP allocations are offered. An anycast cluster turns them off: a peer's TCP
    #: connection to the shared relay address may reach any node, and TCP is not forwarded.
    tcp_relays: bool = True
    allow_anonymous_binding: bool = True  # auth.allow_anonymous_binding
    allocation_packet_rate: float = 50_000.0  # limits.allocation_packet_rate (0: no limit)
    allocation_byte_rate: float = 12_500_000.0  # limits.allocation_byte_rate (0: no limit)
    new_peer_rate: float = 50.0  # limits.new_peer_rate
    new_peer_burst: float = 100.0  # limits.new_peer_burst
    unauthenticated_rate: float = 500.0  # limits.unauthenticated_rate
    unauthenticated_burst: float = 1000.0  # limits.unauthenticated_burst
    unauthenticated_credit: int = 4096  # limits.unauthenticated_credit (ratelimit.ByteCredit)
    auth_failure_burst: float = 20.0  # limits.auth_failure_burst
    auth_failure_rate: float = 0.2  # 1 / limits.auth_failure_interval
    auth_failure_user_burst: float = 100.0  # limits.auth_failure_user_burst
    #: Failed authentications a second one username regains (one a second).
    auth_failure_user_rate: float = 1.0
