"""Which peers a client may reach through the relay (DESIGN.md "Security defaults").

Theory of operation: a TURN server is an open relay behind a password; the deny-list keeps it from
being pointed at the network it lives in. Every address is canonicalised first: an IPv6 address
that embeds an IPv4 one is checked as every address it stands for, and is denied if any of them
is. The embedding forms are every one the IANA special-purpose registries and the transition RFCs
define: IPv4-mapped ``::ffff:a.b.c.d`` (RFC 4291), IPv4-translated ``::ffff:0:a.b.c.d``
(RFC 2765), IPv4-compatible ``::a.b.c.d`` (RFC 4291, deprecated), NAT64 ``64:ff9b::/96``
(RFC 6052), 6to4 ``2002::/16`` (RFC 3056), Teredo ``2001::/32`` server and client (RFC 4380), and
an ISATAP interface identifier ``…:0:5efe:a.b.c.d`` / ``…:200:5efe:a.b.c.d`` under any prefix
(RFC 5214). The local-use NAT64 prefix ``64:ff9b:1::/48`` (RFC 8215) embeds at an offset only its
operator knows, so it is denied whole.

The deny-list holds every range of the IPv4 and IPv6 special-purpose registries (RFC 6890 and its
updates) that is not globally reachable, except the documentation ranges (``192.0.2.0/24``,
``198.51.100.0/24``, ``203.0.113.0/24``, ``2001:db8::/32``, ``3fff::/20``): nothing routes them,
so denying them protects nothing, and an operator who wants them refused adds them to
``peers.deny``. Multicast is denied too. An allow-list entry re-opens a denied
range, except the unspecified networks ``0.0.0.0/8`` and ``::/128``, which no configuration can
open (sending "to 0.0.0.0" reaches the host itself on Linux).

On top of the IP rules, the node's own listener addresses are refused as peers, in every form
above, so that the relay cannot be turned on the server itself. A listener bound to a wildcard
address serves every address the host accepts as local, so its port is refused on every local
network (``own_networks``: the kernel's local routes, which include all of ``127.0.0.0/8``).
Its relay ports are not refused: two clients of one server that are both relayed (the usual case
with a relay-only ICE policy) reach each other through them, each behind its own permissions.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache

import attrs

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The parts of the IETF protocol assignments block 2001::/23 (RFC 2928) that the IPv6
#: special-purpose registry marks globally reachable, and Teredo (RFC 4380), which is checked as
#: the IPv4 addresses it embeds. The rest of the block is denied.
IETF_GLOBAL: tuple[str, ...] = (
    "2001::/32",  # Teredo
    "2001:1::1/128",  # RFC 7723: PCP anycast
    "2001:1::2/128",  # RFC 8155: TURN anycast
    "2001:1::3/128",  # RFC 9665: DNS-SD SRP anycast
    "2001:3::/32",  # RFC 7450: AMT
    "2001:4:112::/48",  # RFC 7535: AS112-v6
    "2001:20::/28",  # RFC 7343: ORCHIDv2
    "2001:30::/28",  # RFC 9374: drone remote ID
)


def _carve(block: str, holes: Iterable[str]) -> list[IPNetwork]:
    """``block`` less ``holes``, as the fewest networks."""
    parts: list[IPNetwork] = [ipaddress.ip_network(block)]
    for hole in map(ipaddress.ip_network, holes):
        parts = [
            piece
            for part in parts
            for piece in (
                part.address_exclude(hole)  # type: ignore[arg-type]
                if hole.subnet_of(part)  # type: ignore[arg-type]
                else [part]
            )
        ]
    return sorted(parts)


#: The default deny-list (DESIGN.md, and the special-purpose registries as the module docstring
#: says): this-network, loopback, private, CGNAT, link-local, IETF protocol assignments,
#: benchmarking, multicast, reserved, 6to4 relays; IPv6 unspecified, loopback, ULA, link-local,
#: site-local, multicast, local-use NAT64, discard, dummy, benchmarking, ORCHID, SRv6.
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
    "192.88.99.0/24",  # RFC 7526: deprecated 6to4 relay anycast
    "::/128",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
    "fec0::/10",  # RFC 3879: deprecated site-local, still routed inside some sites
    "ff00::/8",
    "64:ff9b:1::/48",  # RFC 8215 local-use NAT64: embeds IPv4 at a prefix-dependent offset
    "100::/64",  # RFC 6666: discard-only
    "100:0:0:1::/64",  # RFC 9780: dummy prefix
    "2001:2::/48",  # RFC 5180: benchmarking (the IPv6 198.18.0.0/15)
    "2001:10::/28",  # RFC 4843: deprecated ORCHID
    "5f00::/16",  # RFC 9602: SRv6 segment identifiers, not globally reachable
    *(str(net) for net in _carve("2001::/23", IETF_GLOBAL)),
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
_IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")
#: RFC 5214 §6.1: an ISATAP interface identifier is 0000:5efe or 0200:5efe (the u/l bit set)
#: followed by the IPv4 address; the g bit (0x0100) may be set too.
_ISATAP_MASK = 0xFCFF_FFFF
_ISATAP_TAG = 0x0000_5EFE


def embedded_addresses(ip: IPAddress) -> tuple[IPAddress, ...]:
    """``ip`` and every IPv4 address an IPv6 form of it carries."""
    if ip.version == 4:
        return (ip,)
    assert isinstance(ip, ipaddress.IPv6Address)
    found: list[IPAddress] = [ip]
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    low32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _NAT64 or ip in _IPV4_TRANSLATED or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        found.append(low32)
    if (int(ip) >> 32) & _ISATAP_MASK == _ISATAP_TAG:
        found.append(low32)
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
    #: Ports this node serves on whole networks (wildcard listeners): (network, port).
    own_networks: tuple[tuple[IPNetwork, int], ...] = ()
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
        own_networks: Iterable[tuple[str, int]] = (),
    ) -> PeerPolicy:
        """The default deny-list plus ``deny``, re-opened by ``allow``; ``own_addresses`` and
        ``own_networks`` ((CIDR, port): a port served on every address of a network) are this
        node's listeners."""
        return cls(
            deny=_networks((*DEFAULT_DENY, *deny)),
            allow=_networks(allow),
            own_addresses=frozenset((str(ipaddress.ip_address(h)), p) for h, p in own_addresses),
            own_networks=tuple(
                (ipaddress.ip_network(cidr, strict=False), port) for cidr, port in own_networks
            ),
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
        forms = _canonical_forms(host)
        if any((ip, port) in self.own_addresses for ip in forms):
            return False
        if self.own_networks:
            ips = _embedded(host)
            return not any(
                port == own_port and ip.version == net.version and ip in net
                for net, own_port in self.own_networks
                for ip in ips
            )
        return True


@lru_cache(maxsize=65536)
def _embedded(host: str) -> tuple[IPAddress, ...]:
    """``host`` (a valid IP) and every IPv4 address it embeds."""
    return embedded_addresses(ipaddress.ip_address(host))


@lru_cache(maxsize=65536)
def _canonical_forms(host: str) -> tuple[str, ...]:
    """The canonical text of each address of :func:`_embedded`."""
    return tuple(map(str, _embedded(host)))


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
