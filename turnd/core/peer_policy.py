"""Which peers a client may reach through the relay (DESIGN.md "Security defaults").

Theory of operation: a TURN server is an open relay behind a password; the deny-list keeps it from
being pointed at the network it lives in. Every address is canonicalised first: an IPv6 address
that embeds an IPv4 one (IPv4-mapped ``::ffff:a.b.c.d``, IPv4-compatible ``::a.b.c.d``, NAT64
``64:ff9b::/96``, 6to4 ``2002::/16``, Teredo ``2001::/32`` server and client) is checked as every
address it stands for, and is denied if any of them is. An allow-list entry re-opens a denied
range, except the unspecified networks ``0.0.0.0/8`` and ``::/128``, which no configuration can
open (sending "to 0.0.0.0" reaches the host itself on Linux).

On top of the IP rules, the node's own listener addresses are refused as peers, in every form
above, so that the relay cannot be turned on the server itself. Its relay addresses are not:
two clients of one server that are both relayed (the usual case with a relay-only ICE policy)
reach each other through them, each behind its own permissions.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache

import attrs

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The default deny-list (DESIGN.md): this-network, loopback, private, CGNAT, link-local, IETF
#: protocol assignments, benchmarking, multicast, reserved; IPv6 unspecified, loopback, ULA,
#: link-local, multicast.
DEFAULT_DENY: tuple[str, ...] = (
    "0.0.0.0/8",
    "127.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
    "64:ff9b:1::/48",  # RFC 8215 local-use NAT64: embeds IPv4 at a prefix-dependent offset
)

#: Networks no allow-list may re-open.
NEVER_ALLOWED: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("0.0.0.0/8"),
    ipaddress.ip_network("::/128"),
)

#: Distinct peer IPs whose verdict a policy remembers before it starts over.
VERDICT_CACHE_SIZE = 65536

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def embedded_addresses(ip: IPAddress) -> tuple[IPAddress, ...]:
    """``ip`` and every IPv4 address an IPv6 form of it carries."""
    if ip.version == 4:
        return (ip,)
    assert isinstance(ip, ipaddress.IPv6Address)
    found: list[IPAddress] = [ip]
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip in _NAT64 or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    return tuple(found)


def _networks(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


@attrs.frozen
class PeerPolicy:
    """Deny/allow rules for peer addresses."""

    deny: tuple[IPNetwork, ...]
    allow: tuple[IPNetwork, ...] = ()
    #: Transport addresses of this node that are never peers: (ip text, port).
    own_addresses: frozenset[tuple[str, int]] = frozenset()
    #: Verdicts by IP text. Per instance, so that a lookup hashes only the host string (hashing
    #: the policy itself would hash every network of the deny-list, on every packet).
    _verdicts: dict[str, bool] = attrs.field(factory=dict, eq=False, hash=False, repr=False)

    @classmethod
    def build(
        cls,
        allow: Iterable[str] = (),
        deny: Iterable[str] = (),
        *,
        own_addresses: Iterable[tuple[str, int]] = (),
    ) -> PeerPolicy:
        """The default deny-list plus ``deny``, re-opened by ``allow``."""
        return cls(
            deny=_networks((*DEFAULT_DENY, *deny)),
            allow=_networks(allow),
            own_addresses=frozenset((str(ipaddress.ip_address(h)), p) for h, p in own_addresses),
        )

    def ip_allowed(self, host: str) -> bool:
        """Whether peer IP ``host`` may be given a permission."""
        verdict = self._verdicts.get(host)
        if verdict is None:
            if len(self._verdicts) >= VERDICT_CACHE_SIZE:
                self._verdicts.clear()  # crude but bounded: a scan cannot grow it without limit
            verdict = self._verdicts[host] = _ip_allowed(self, host)
        return verdict

    def peer_allowed(self, host: str, port: int) -> bool:
        """Whether data may be relayed to the transport address ``host:port``."""
        if not self.ip_allowed(host):
            return False
        # Every form: an IPv4-mapped or NAT64 address reaches the IPv4 one it embeds.
        return not any((ip, port) in self.own_addresses for ip in _canonical_forms(host))


@lru_cache(maxsize=65536)
def _canonical_forms(host: str) -> tuple[str, ...]:
    """The canonical text of ``host`` and of every IPv4 address it embeds (a valid IP)."""
    return tuple(str(ip) for ip in embedded_addresses(ipaddress.ip_address(host)))


def _ip_allowed(policy: PeerPolicy, host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    for candidate in embedded_addresses(ip):
        if any(candidate in net for net in NEVER_ALLOWED):
            return False
        denied = any(candidate.version == n.version and candidate in n for n in policy.deny)
        if denied and not any(
            candidate.version == n.version and candidate in n for n in policy.allow
        ):
            return False
    return True
