"""Permissions and channel bindings: the CreatePermission and ChannelBind requests, the checks on
the peers they name, and the timers that expire them (RFC 8656 §9, §11, §12).

Theory of operation:

* A request's XOR-PEER-ADDRESSes are checked whole before anything is installed (§9.2: all or
  none): the family must have a relay (443), the peer policy must allow it (403), and each peer
  new to the allocation spends its new-peer budget (403; the port-scan guard). A permission is
  per IP, so CreatePermission is checked and counted per IP; a channel's peer is a transport
  address, checked with its port. Peers are remembered only once the whole request succeeded.
* Each permission and binding has one timer; a refresh moves its expiry and the timer re-arms
  itself. An expired binding's number and peer cool down for ``CHANNEL_REUSE_DELAY`` (§12).
* With a route cache attached (turnd.core.routes), a binding whose permission is live is
  installed in it by ChannelBind or CreatePermission, and taken back when either expires.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stun import attributes as at
from stun.addresses import Address
from stun.channeldata import is_valid_channel
from stun.message import Method
from turnd.core import routes
from turnd.core.actions import Action
from turnd.core.allocation import Allocation, ChannelBinding
from turnd.core.request import Request, StunError
from turnd.core.timers import TimerKind

if TYPE_CHECKING:
    from turnd.core.server import TurnServer


def handle_create_permission(server: TurnServer, request: Request) -> list[Action]:
    """RFC 8656 §9.2: install or refresh a permission per XOR-PEER-ADDRESS, all or none."""
    alloc = server.own_allocation(request)
    peers, keys = _peer_addresses(server, request, alloc)
    server.quotas.check_permissions(alloc, {p.host for p in peers})
    for peer in peers:
        _install_permission(server, alloc, peer.host, request.now)
    for key in keys:
        alloc.remember_peer(key)
    if server.routes is not None:  # channels whose permission came back
        routes.install_hosts(server, alloc, {p.host for p in peers}, request.now)
    return server.reply(request.five_tuple, server.responses.success(request))


def handle_channel_bind(server: TurnServer, request: Request) -> list[Action]:
    """RFC 8656 §11.2: bind or refresh a channel, installing a permission for its peer."""
    alloc = server.own_allocation(request)
    if alloc.tcp:
        raise StunError(400, "channels are not used with TCP allocations")
    number_attr = request.message.get(at.ChannelNumber)
    if number_attr is None or not is_valid_channel(number_attr.number):
        raise StunError(400, "CHANNEL-NUMBER must be 0x4000-0x7FFF")
    peer_attr = request.message.get(at.XorPeerAddress)
    if peer_attr is None:
        raise StunError(400, "XOR-PEER-ADDRESS is required")
    peer = peer_attr.address
    _peer_addresses(server, request, alloc)  # policy (with the port) and new-peer budget
    now = request.now
    number = number_attr.number
    conflict = alloc.channel_conflict(number, peer, now)
    if conflict is not None:
        raise StunError(400, conflict)
    server.quotas.check_channel(alloc, number)
    server.quotas.check_permissions(alloc, {peer.host})
    expires = now + server.settings.channel_lifetime
    new = number not in alloc.channels
    alloc.bind_channel(number, peer, expires)  # a refresh: timer re-arms itself
    if new:
        server.timers.add(expires, TimerKind.CHANNEL, alloc, alloc.channels[number])
    _install_permission(server, alloc, peer.host, now)
    alloc.remember_peer(peer)
    if server.routes is not None:  # a new binding, or one whose permission had expired
        routes.install(server, alloc, alloc.channels[number], now)
    return server.reply(request.five_tuple, server.responses.success(request))


def admit_new_peer(server: TurnServer, alloc: Allocation, peer: Address, now: float) -> None:
    """Spend ``alloc``'s new-peer budget on ``peer`` (the port-scan guard); 403 past it."""
    settings = server.settings
    if not alloc.admit_peer(peer, now, settings.new_peer_rate, settings.new_peer_burst):
        server.stats["quota.new_peer_rate"] += 1
        raise StunError(403, "too many new peer addresses per second")


def _peer_addresses(
    server: TurnServer, request: Request, alloc: Allocation
) -> tuple[list[Address], list[Address]]:
    """The request's XOR-PEER-ADDRESSes, each checked against the policy and the new-peer
    budget, and the keys that budget counted (IPs for CreatePermission, port 0; transport
    addresses otherwise; each once). Nothing is remembered yet: the handler remembers the
    keys once the whole request has succeeded."""
    peers = [a.address for a in request.message.attributes if type(a) is at.XorPeerAddress]
    if not peers:
        raise StunError(400, "XOR-PEER-ADDRESS is required")
    per_ip = request.message.method == Method.CREATE_PERMISSION
    policy = server.policy
    for peer in peers:
        if peer.family not in alloc.relays:
            raise StunError(443)  # §10.2, §12.2: no relay of the peer's family
        allowed = (
            policy.ip_allowed(peer.host) if per_ip else policy.peer_allowed(peer.host, peer.port)
        )
        if not allowed:
            server.stats["denied.peer"] += 1
            raise StunError(403, "peer address is not allowed")
    keys = list(
        dict.fromkeys(Address(p.host, 0) for p in peers) if per_ip else dict.fromkeys(peers)
    )
    for key in keys:
        admit_new_peer(server, alloc, key, request.now)
    return peers, keys


def _install_permission(server: TurnServer, alloc: Allocation, host: str, now: float) -> None:
    expires = now + server.settings.permission_lifetime
    if host not in alloc.permissions:
        server.timers.add(expires, TimerKind.PERMISSION, alloc, host)
    alloc.permissions[host] = expires  # a refresh: its timer re-arms itself


# --- timers (the server's handler table) ---------------------------------------------------------


def permission_timer(server: TurnServer, alloc: Allocation, host: str, now: float) -> list[Action]:
    """A permission's expiry (§9): it ends, or re-arms at its refreshed expiry."""
    expiry = alloc.permissions.get(host, now)
    if expiry > now:
        server.timers.add(expiry, TimerKind.PERMISSION, alloc, host)
    else:
        if alloc.routes:
            routes.remove_host(server, alloc, host, now)
        alloc.permissions.pop(host, None)
    return []


def channel_timer(
    server: TurnServer, alloc: Allocation, binding: ChannelBinding, now: float
) -> list[Action]:
    """A binding's expiry (§12): it ends and its number cools down, or it re-arms."""
    if alloc.channels.get(binding.number) is not binding:
        return []  # its allocation or family ended
    if binding.expires > now:
        server.timers.add(binding.expires, TimerKind.CHANNEL, alloc, binding)
    else:
        if alloc.routes:
            routes.remove(server, alloc, binding.number, now)
        until = alloc.expire_channel(binding.number)
        server.timers.add(until, TimerKind.COOLING, alloc, binding.number)
    return []


def cooling_timer(server: TurnServer, alloc: Allocation, number: int, now: float) -> list[Action]:
    """The end of channel ``number``'s reuse delay (§12)."""
    cool = alloc.cooling.get(number)
    if cool is not None and cool[1] <= now:
        del alloc.cooling[number]
    return []
