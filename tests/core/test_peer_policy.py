"""DESIGN.md "Security defaults": which peers the relay may reach. Every range of the default
deny-list, in every form an IPv6 address can carry an IPv4 one, is refused; public addresses are
not; an allow-list re-opens ranges except the unspecified ones; the node's own transport
addresses and relay ports are never peers."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import pytest

from turnd.core.peer_policy import DEFAULT_DENY, NEVER_ALLOWED, PeerPolicy, embedded_addresses

POLICY = PeerPolicy.build()
PUBLIC_V4 = ipaddress.IPv4Address("8.8.8.8")
TEREDO_PUBLIC_SERVER = ipaddress.IPv4Address("65.54.227.120")


def samples(cidr: str) -> list[str]:
    """The first, a middle and the last address of a network."""
    net = ipaddress.ip_network(cidr)
    return sorted({str(net[0]), str(net[net.num_addresses // 2]), str(net[-1])})


V4_DENIED = [(cidr, ip) for cidr in DEFAULT_DENY if ":" not in cidr for ip in samples(cidr)]
V6_DENIED = [(cidr, ip) for cidr in DEFAULT_DENY if ":" in cidr for ip in samples(cidr)]


def _v6(value: int) -> str:
    return str(ipaddress.IPv6Address(value))


def _v4(ip: str) -> int:
    return int(ipaddress.IPv4Address(ip))


#: Each way an IPv6 address embeds an IPv4 one (DESIGN.md), the other embedded part kept public.
FORMS: dict[str, Callable[[str], str]] = {
    "ipv4": lambda ip: ip,
    "ipv4-mapped": lambda ip: _v6(0xFFFF << 32 | _v4(ip)),
    "ipv4-compatible": lambda ip: _v6(_v4(ip)),
    "nat64": lambda ip: _v6(0x0064FF9B << 96 | _v4(ip)),
    "6to4": lambda ip: _v6(0x2002 << 112 | _v4(ip) << 80 | 1),
    "teredo-server": lambda ip: _v6(
        0x20010000 << 96 | _v4(ip) << 64 | (~int(PUBLIC_V4) & 0xFFFFFFFF)
    ),
    "teredo-client": lambda ip: _v6(
        0x20010000 << 96 | int(TEREDO_PUBLIC_SERVER) << 64 | (~_v4(ip) & 0xFFFFFFFF)
    ),
}


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(("cidr", "ip"), V4_DENIED)
def test_every_denied_ipv4_range_is_denied_in_every_form(form: str, cidr: str, ip: str) -> None:
    """A denied IPv4 address is refused bare and in every IPv6 form (mapped, NAT64, Teredo...)."""
    host = FORMS[form](ip)
    if host not in ("::", "::1"):  # IPv4-compatible 0.0.0.0 and 0.0.0.1 are denied as such
        assert ipaddress.IPv4Address(ip) in embedded_addresses(ipaddress.ip_address(host))
    assert not POLICY.ip_allowed(host), (cidr, form, host)
    assert not POLICY.peer_allowed(host, 40000)


@pytest.mark.parametrize(("cidr", "ip"), V6_DENIED)
def test_every_denied_ipv6_range_is_denied(cidr: str, ip: str) -> None:
    """The IPv6 deny ranges (::, ::1, ULA, link-local, multicast, local NAT64) are refused."""
    assert not POLICY.ip_allowed(ip), cidr


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(
    "ip",
    [
        "8.8.8.8",
        "1.1.1.1",
        "198.51.100.7",
        "9.255.255.255",
        "11.0.0.0",
        "100.63.255.255",
        "100.128.0.0",
        "172.15.255.255",
        "172.32.0.0",
        "192.0.1.255",
        "192.0.1.0",
        "192.167.255.255",
        "192.169.0.0",
        "198.17.255.255",
        "198.20.0.0",
        "223.255.255.255",
    ],
)
def test_public_ipv4_addresses_are_allowed_in_every_form(form: str, ip: str) -> None:
    """Addresses just outside the deny-list are reachable, bare and in every IPv6 form."""
    assert POLICY.ip_allowed(FORMS[form](ip))


@pytest.mark.parametrize(
    "ip", ["2001:4860:4860::8888", "2606:4700::1111", "2001:db8::1", "64:ff9b:2::1"]
)
def test_public_ipv6_addresses_are_allowed(ip: str) -> None:
    """DESIGN.md: global IPv6 addresses are reachable."""
    assert POLICY.ip_allowed(ip)
    assert POLICY.peer_allowed(ip, 1)


@pytest.mark.parametrize("host", ["", "not-an-ip", "1.2.3", "fe80::1%eth0"])
def test_text_that_is_not_an_ip_literal_is_refused(host: str) -> None:
    """A peer host that is not a canonical IP literal is never allowed."""
    assert not POLICY.ip_allowed(host)


def test_extra_deny_entries_add_to_the_defaults() -> None:
    """DESIGN.md: configured deny entries come on top of the default list."""
    policy = PeerPolicy.build(deny=["203.0.113.0/24"])
    assert not policy.ip_allowed("203.0.113.9")
    assert not policy.ip_allowed("::ffff:203.0.113.9")
    assert not policy.ip_allowed("10.0.0.1")
    assert policy.ip_allowed("203.0.114.1")


@pytest.mark.parametrize("form", FORMS)
def test_allow_list_reopens_a_denied_range_in_every_form(form: str) -> None:
    """An allow-list entry re-opens a denied range, whatever form the address takes."""
    policy = PeerPolicy.build(allow=["127.0.0.0/8"])
    assert policy.ip_allowed(FORMS[form]("127.0.0.1"))
    assert not policy.ip_allowed(FORMS[form]("10.0.0.1"))


@pytest.mark.parametrize(
    "host",
    ["0.0.0.0", "0.0.0.1", "0.255.255.255", "::", "::ffff:0.0.0.0", "64:ff9b::5", "::5"],
)
def test_allow_list_never_reopens_the_unspecified_networks(host: str) -> None:
    """0.0.0.0/8 and ::/128 stay denied whatever the allow-list says."""
    policy = PeerPolicy.build(allow=["0.0.0.0/0", "::/0"])
    assert not policy.ip_allowed(host)
    assert policy.ip_allowed("127.0.0.1") and policy.ip_allowed("::1")
    assert any(ipaddress.ip_network(n) == net for net in NEVER_ALLOWED for n in DEFAULT_DENY)


def test_own_transport_addresses_are_refused_as_peers() -> None:
    """The node's own listener addresses are never peers; other ports of the same IP are."""
    policy = PeerPolicy.build(own_addresses=[("192.0.2.1", 3478), ("2001:DB8::0001", 443)])
    assert not policy.peer_allowed("192.0.2.1", 3478)
    assert policy.peer_allowed("192.0.2.1", 3479)
    assert not policy.peer_allowed("2001:db8::1", 443)
    assert policy.peer_allowed("2001:db8::1", 444)
    assert policy.ip_allowed("192.0.2.1")


@pytest.mark.parametrize("form", ["ipv4-mapped", "nat64", "ipv4-compatible"])
def test_own_addresses_are_refused_in_their_ipv6_forms(form: str) -> None:
    """An IPv6 form of an own address (mapped, NAT64) is refused too: it loops back to the node."""
    policy = PeerPolicy.build(own_addresses=[("192.0.2.1", 3478)])
    host = FORMS[form]("192.0.2.1")
    assert not policy.peer_allowed(host, 3478)
    assert policy.peer_allowed(host, 3000)


def test_relay_addresses_of_this_node_are_peers() -> None:
    """Relay-to-relay is allowed: two clients of one server, both relayed, reach each other."""
    policy = PeerPolicy.build(own_addresses=[("192.0.2.1", 3478)])
    assert policy.peer_allowed("192.0.2.1", 49152)
    assert policy.peer_allowed("192.0.2.1", 65535)


def test_denied_ip_is_refused_as_peer_on_any_port() -> None:
    """peer_allowed applies the IP rules first."""
    assert not POLICY.peer_allowed("10.0.0.1", 80)
    assert POLICY.peer_allowed("8.8.8.8", 80)


def test_verdict_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A scan over many peer IPs cannot grow the policy's verdict cache without limit."""
    from turnd.core import peer_policy

    monkeypatch.setattr(peer_policy, "VERDICT_CACHE_SIZE", 4)
    policy = PeerPolicy.build()
    for i in range(10):
        assert policy.ip_allowed(f"198.51.100.{i}")
        assert not policy.ip_allowed(f"10.0.0.{i}")
    assert len(policy._verdicts) <= 4
