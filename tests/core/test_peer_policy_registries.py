"""DESIGN.md "Security defaults", issue 20 item 10: the peer policy walks the IANA IPv4 and IPv6
special-purpose address registries (RFC 6890 and updates). Every block the registry marks not
globally reachable is denied (documentation blocks aside, as peer_policy says); the globally
reachable ones are not; every IPv4-embedding form (mapped, translated, compatible, NAT64, 6to4,
Teredo, ISATAP) gets its IPv4 address's verdict; wildcard listeners' ports are refused on every
local network. The tables below are transcribed from the registries, not from turnd."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from turnd.core.peer_policy import PeerPolicy, embedded_addresses

POLICY = PeerPolicy.build()

#: IANA IPv4 Special-Purpose Address Registry: (block, globally reachable). None: not applicable.
IPV4_REGISTRY: list[tuple[str, bool | None]] = [
    ("0.0.0.0/8", False),
    ("0.0.0.0/32", False),
    ("10.0.0.0/8", False),
    ("100.64.0.0/10", False),
    ("127.0.0.0/8", False),
    ("169.254.0.0/16", False),
    ("172.16.0.0/12", False),
    ("192.0.0.0/24", False),
    ("192.0.0.0/29", False),
    ("192.0.0.8/32", False),
    ("192.0.0.170/32", False),
    ("192.0.0.171/32", False),
    ("192.0.2.0/24", False),
    ("192.31.196.0/24", True),
    ("192.52.193.0/24", True),
    ("192.88.99.0/24", None),
    ("192.168.0.0/16", False),
    ("192.175.48.0/24", True),
    ("198.18.0.0/15", False),
    ("198.51.100.0/24", False),
    ("203.0.113.0/24", False),
    ("240.0.0.0/4", False),
    ("255.255.255.255/32", False),
]

#: IANA IPv6 Special-Purpose Address Registry, the same way.
IPV6_REGISTRY: list[tuple[str, bool | None]] = [
    ("::1/128", False),
    ("::/128", False),
    ("::ffff:0:0/96", False),
    ("64:ff9b::/96", True),
    ("64:ff9b:1::/48", False),
    ("100::/64", False),
    ("100:0:0:1::/64", False),
    ("2001::/23", False),
    ("2001::/32", None),
    ("2001:1::1/128", True),
    ("2001:1::2/128", True),
    ("2001:1::3/128", True),
    ("2001:2::/48", False),
    ("2001:3::/32", True),
    ("2001:4:112::/48", True),
    ("2001:10::/28", False),
    ("2001:20::/28", True),
    ("2001:30::/28", True),
    ("2001:db8::/32", False),
    ("2002::/16", None),
    ("2620:4f:8000::/48", True),
    ("3fff::/20", False),
    ("5f00::/16", False),
    ("fc00::/7", False),
    ("fe80::/10", False),
]

#: Not globally reachable, left reachable on purpose: nothing routes them (peer_policy).
DOCUMENTATION = {"192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32", "3fff::/20"}
#: Globally reachable but inside a denied block: turnd denies 192.0.0.0/24 whole.
DENIED_BY_CHOICE = {"192.0.0.9/32", "192.0.0.10/32"}
#: Blocks that carry an IPv4 address: their verdict is that address's (the property test below).
EMBEDDING = {"::ffff:0:0/96", "64:ff9b::/96", "2001::/32", "2002::/16"}
#: Blocks other RFCs deprecated and turnd denies, beside the registries.
DEPRECATED = ["fec0::/10", "ff00::/8", "224.0.0.0/4"]


def samples(cidr: str) -> list[str]:
    """The first, a middle and the last address of a network."""
    net = ipaddress.ip_network(cidr)
    return sorted({str(net[0]), str(net[net.num_addresses // 2]), str(net[-1])})


def _sub_blocks(cidr: str) -> list[str]:
    """The more specific registry entries inside ``cidr`` (their verdicts are their own)."""
    net = ipaddress.ip_network(cidr)
    return [
        other
        for other, _ in IPV4_REGISTRY + IPV6_REGISTRY
        if other != cidr
        and ipaddress.ip_network(other).version == net.version
        and ipaddress.ip_network(other).subnet_of(net)  # type: ignore[arg-type]
    ]


def _own_verdict_samples(cidr: str) -> list[str]:
    """Samples of ``cidr`` that no more specific registry entry covers."""
    inner = [ipaddress.ip_network(n) for n in _sub_blocks(cidr)]
    return [s for s in samples(cidr) if not any(ipaddress.ip_address(s) in n for n in inner)]


NOT_GLOBAL = [
    (cidr, ip)
    for cidr, reachable in IPV4_REGISTRY + IPV6_REGISTRY
    if reachable is False and cidr not in DOCUMENTATION | EMBEDDING
    for ip in _own_verdict_samples(cidr)
] + [(cidr, ip) for cidr in DEPRECATED for ip in samples(cidr)]

GLOBAL = [
    (cidr, ip)
    for cidr, reachable in IPV4_REGISTRY + IPV6_REGISTRY
    if reachable is True and cidr not in DENIED_BY_CHOICE | EMBEDDING
    for ip in _own_verdict_samples(cidr)
]


@pytest.mark.parametrize(("cidr", "ip"), NOT_GLOBAL)
def test_every_block_not_globally_reachable_is_denied(cidr: str, ip: str) -> None:
    """A registry block marked not globally reachable is no peer (its first, middle, last)."""
    assert not POLICY.ip_allowed(ip), cidr


@pytest.mark.parametrize(("cidr", "ip"), GLOBAL)
def test_globally_reachable_registry_blocks_are_allowed(cidr: str, ip: str) -> None:
    """A registry block marked globally reachable (AS112, AMT, ORCHIDv2...) stays reachable."""
    assert POLICY.ip_allowed(ip), cidr


@pytest.mark.parametrize(
    ("cidr", "ip"), [(c, i) for c in sorted(DOCUMENTATION) for i in samples(c)]
)
def test_documentation_blocks_are_left_reachable(cidr: str, ip: str) -> None:
    """The documented exception: documentation blocks are allowed unless peers.deny lists them."""
    assert POLICY.ip_allowed(ip)
    assert not PeerPolicy.build(deny=[cidr]).ip_allowed(ip)


def _v6(value: int) -> str:
    return str(ipaddress.IPv6Address(value))


def _forms(v4: ipaddress.IPv4Address, prefix64: int, host_bits: int) -> dict[str, str]:
    """Every IPv6 form that embeds ``v4``; ``prefix64`` (a global /64) and ``host_bits`` fill
    the parts that are free."""
    n = int(v4)
    public_v4 = int(ipaddress.IPv4Address("8.8.8.8"))
    return {
        "mapped": _v6(0xFFFF << 32 | n),  # RFC 4291 §2.5.5.2
        "translated": _v6(0xFFFF << 48 | n),  # RFC 2765 §2.1
        "compatible": _v6(n),  # RFC 4291 §2.5.5.1
        "nat64": _v6(0x64FF9B << 96 | n),  # RFC 6052 §2.1
        "6to4": _v6(0x2002 << 112 | n << 80 | host_bits & (1 << 80) - 1),  # RFC 3056 §2
        "teredo-server": _v6(0x20010000 << 96 | n << 64 | (~public_v4 & 0xFFFFFFFF)),
        "teredo-client": _v6(0x20010000 << 96 | public_v4 << 64 | (~n & 0xFFFFFFFF)),
        "isatap": _v6(prefix64 << 64 | 0x5EFE << 32 | n),  # RFC 5214 §6.1
        "isatap-u": _v6(prefix64 << 64 | 0x0200_5EFE << 32 | n),
    }


GLOBAL_PREFIX64 = 0x2606_4700_0000_0001  # a global /64 (2606:4700:0:1::/64)


@given(
    v4=st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address),
    host_bits=st.integers(0, 2**80 - 1),
)
def test_every_ipv4_embedding_form_gets_its_ipv4_verdict(
    v4: ipaddress.IPv4Address, host_bits: int
) -> None:
    """Property: whatever IPv4 address an IPv6 form embeds, a denied one is denied in every
    form; a form of an allowed one is allowed (its own prefix being global)."""
    verdict = POLICY.ip_allowed(str(v4))
    for name, form in _forms(v4, GLOBAL_PREFIX64, host_bits).items():
        assert v4 in embedded_addresses(ipaddress.ip_address(form)) or int(v4) <= 1, name
        if name == "compatible" and int(v4) <= 1:
            continue  # ::, ::1: the unspecified and loopback addresses themselves
        assert POLICY.ip_allowed(form) == verdict, (name, form, verdict)


@given(st.integers(0, 2**128 - 1))
def test_verdict_does_not_depend_on_how_the_address_is_written(value: int) -> None:
    """Property: the compressed and the exploded text of one IPv6 address get one verdict, and
    the embedded IPv4 addresses are those ipaddress's own accessors find (mapped, 6to4, Teredo)."""
    ip = ipaddress.IPv6Address(value)
    assert POLICY.ip_allowed(ip.compressed) == POLICY.ip_allowed(ip.exploded)
    found = embedded_addresses(ip)
    for accessor in (ip.ipv4_mapped, ip.sixtofour):
        assert accessor is None or accessor in found
    if ip.teredo is not None:
        assert set(ip.teredo) <= set(found)


def test_non_prefix_aligned_deny_entries_cover_their_network() -> None:
    """coturn 6c13608c: a deny entry written with host bits set (2001:db8::1/33) denies the whole
    network it names, not just addresses that share its written form."""
    policy = PeerPolicy.build(deny=["2001:db8::1/33", "203.0.113.77/25"])
    assert not policy.ip_allowed("2001:db8:7fff:ffff::1")
    assert not policy.ip_allowed("2001:db8::")
    assert policy.ip_allowed("2001:db8:8000::1")
    assert not policy.ip_allowed("203.0.113.1")
    assert policy.ip_allowed("203.0.113.200")


def test_wildcard_listener_ports_are_refused_on_every_local_network() -> None:
    """A listener on 0.0.0.0 serves every local address: its port is no peer on any local
    network, in any form; other ports and other networks are peers."""
    policy = PeerPolicy.build(
        allow=["127.0.0.0/8"], own_networks=[("127.0.0.0/8", 3478), ("192.0.2.2/32", 3478)]
    )
    for host in ("127.0.0.1", "127.9.9.9", "192.0.2.2", "::ffff:192.0.2.2", "64:ff9b::7f00:5"):
        assert not policy.peer_allowed(host, 3478), host
        assert policy.peer_allowed(host, 3479), host
    assert policy.peer_allowed("192.0.2.3", 3478)
