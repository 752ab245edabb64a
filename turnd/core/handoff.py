"""Handing allocations from one core to another: how a worker gives its allocations to the one
that replaces it (an upgrade) without ending them.

Theory of operation: :func:`export_allocations` writes down, as JSON-ready records, every
allocation that can move — a UDP client's, with UDP relays (a TCP or TLS client's connection
and an RFC 6062 relay's peer connections cannot leave their process) — with all its state:
relays, their expiry and traffic counts, the credential's key, permissions, channel bindings,
channel numbers in their reuse delay, the traffic budget and the cached Allocate answer. Its
routes in the kernel fast path, if any, are removed first, so their counts are in the record and
the kernel hands their packets to the sockets again. Nothing else changes: the exporting core
keeps serving them if the hand-off is called off. :func:`import_allocations` rebuilds them in
another core, which takes their relay ports, counts them in its quotas, arms their timers and
hands their channels to its own kernel fast path;
:func:`forget_exported` then removes them from the old core without ending them (no
``AllocationEnded``: their usage is reported once, by the core that ends them). Times are Unix
seconds, shared by both processes of one host.

A record carries :data:`VERSION`; a core refuses records of another version (ValueError), so an
upgrade that changes what a record holds says so rather than guessing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from stun.addresses import Address, AddressFamily
from turnd.core import routes
from turnd.core.actions import FiveTuple, Transport
from turnd.core.allocation import Allocation, ChannelBinding, Relay
from turnd.core.bucket import TokenBucket
from turnd.core.timers import TimerKind

if TYPE_CHECKING:
    from turnd.core.server import TurnServer

#: What a record holds; bumped whenever that changes.
VERSION = 1
_COUNTERS = (
    "packets_to_peer",
    "bytes_to_peer",
    "packets_to_client",
    "bytes_to_client",
    "kernel_packets_to_peer",
    "kernel_bytes_to_peer",
    "kernel_packets_to_client",
    "kernel_bytes_to_client",
)


def movable(alloc: Allocation) -> bool:
    """Whether ``alloc`` can move to another process: a UDP client's, with UDP relays."""
    return alloc.five_tuple.transport is Transport.UDP and not alloc.tcp


def _address(text: str) -> Address:
    host, _, port = text.rpartition(":")
    return Address(host.strip("[]"), int(port))


def _record(alloc: Allocation) -> dict[str, Any]:
    five_tuple = alloc.five_tuple
    return {
        "version": VERSION,
        "client": str(five_tuple.client),
        "server": str(five_tuple.server),
        "relays": [
            {"address": str(relay.address), "expires": relay.expires}
            | {name: getattr(relay, name) for name in _COUNTERS}
            for relay in alloc.relays.values()
        ],
        "username": alloc.username,
        "realm": alloc.realm,
        "key": alloc.key.hex(),
        "sha256": alloc.sha256,
        "rest_id": alloc.rest_id,
        "started": alloc.started,
        "allocate_txid": alloc.allocate_txid.hex(),
        "allocate_response": alloc.allocate_response.hex(),
        "permissions": dict(alloc.permissions),
        "channels": [
            [number, str(binding.peer), binding.expires, binding.last_seen]
            for number, binding in alloc.channels.items()
        ],
        "cooling": [[number, str(peer), until] for number, (peer, until) in alloc.cooling.items()],
        "budget": [alloc.budget_packets, alloc.budget_bytes, alloc.budget_time],
    }


def export_allocations(server: TurnServer, now: float) -> list[dict[str, Any]]:
    """A record of every allocation that can move (:func:`movable`); their kernel routes are
    removed first, so the records hold what the kernel relayed."""
    records = []
    for alloc in server.allocations.values():
        if not movable(alloc):
            continue
        if alloc.routes:
            routes.remove_families(server, alloc, list(alloc.relays), now)
        records.append(_record(alloc))
    return records


def relay_addresses(records: Iterable[dict[str, Any]]) -> list[Address]:
    """Every relay address the allocations of ``records`` hold: the sockets to hand over."""
    return [_address(relay["address"]) for record in records for relay in record["relays"]]


def five_tuples(records: Iterable[dict[str, Any]]) -> list[FiveTuple]:
    """The 5-tuple of each allocation of ``records`` (to :func:`forget_exported` them)."""
    return [
        FiveTuple(Transport.UDP, _address(record["client"]), _address(record["server"]))
        for record in records
    ]


def _rebuild(record: dict[str, Any], server: TurnServer, now: float) -> Allocation:
    if record.get("version") != VERSION:
        raise ValueError(
            f"an allocation record of version {record.get('version')!r}: this turnd reads "
            f"version {VERSION} only (restart instead of upgrading in place)"
        )
    relays: dict[AddressFamily, Relay] = {}
    for fields in record["relays"]:
        relay = Relay(_address(fields["address"]), float(fields["expires"]))
        for name in _COUNTERS:
            setattr(relay, name, int(fields[name]))
        relays[relay.address.family] = relay
    budget_packets, budget_bytes, budget_time = record["budget"]
    alloc = Allocation(
        five_tuple=FiveTuple(Transport.UDP, _address(record["client"]), _address(record["server"])),
        relays=relays,
        username=record["username"],
        realm=record["realm"],
        key=bytes.fromhex(record["key"]),
        sha256=bool(record["sha256"]),
        rest_id=record["rest_id"],
        started=float(record["started"]),
        allocate_txid=bytes.fromhex(record["allocate_txid"]),
        allocate_response=bytes.fromhex(record["allocate_response"]),
        permissions={host: float(until) for host, until in record["permissions"].items()},
        budget_packets=float(budget_packets),
        budget_bytes=float(budget_bytes),
        budget_time=float(budget_time),
        new_peers=TokenBucket(server.settings.new_peer_burst, now),
    )
    for number, peer, expires, last_seen in record["channels"]:
        binding = ChannelBinding(int(number), _address(peer), float(expires), last_seen)
        alloc.channels[binding.number] = binding
        alloc.channel_by_peer[binding.peer] = binding
    for number, peer, until in record["cooling"]:
        alloc.cooling[int(number)] = (_address(peer), float(until))
    return alloc


def import_allocations(
    server: TurnServer, records: Iterable[dict[str, Any]], now: float
) -> list[Allocation]:
    """Rebuild the allocations of ``records`` in ``server``: registered, their relay ports
    taken, counted in the quotas, their timers armed. ValueError (and nothing imported) when a
    record is of another version or names a 5-tuple or relay address this core holds already."""
    rebuilt = [_rebuild(record, server, now) for record in records]
    for alloc in rebuilt:
        clash = alloc.five_tuple in server.allocations or any(
            relay.address in server.by_relay for relay in alloc.relays.values()
        )
        if clash:
            raise ValueError(f"allocation of {alloc.five_tuple.client} is held here already")
    timers = server.timers
    for alloc in rebuilt:
        server.allocations[alloc.five_tuple] = alloc
        server.quotas.add(alloc.username, alloc.five_tuple.client.host)
        for relay in alloc.relays.values():
            server.by_relay[relay.address] = alloc
            server.ports.take(relay.address)
            timers.add(relay.expires, TimerKind.RELAY, alloc, relay)
        for host, until in alloc.permissions.items():
            timers.add(until, TimerKind.PERMISSION, alloc, host)
        for binding in alloc.channels.values():
            timers.add(binding.expires, TimerKind.CHANNEL, alloc, binding)
        for number, (_, until) in alloc.cooling.items():
            timers.add(until, TimerKind.COOLING, alloc, number)
        for binding in list(alloc.channels.values()):  # to this core's kernel path, if any
            routes.install(server, alloc, binding, now)
    server.stats["handoff.imported"] += len(rebuilt)
    return rebuilt


def resume_exported(server: TurnServer, five_tuples: Iterable[FiveTuple], now: float) -> int:
    """A hand-off was called off: the exported allocations of ``five_tuples`` stay here, so
    their channels go back to this core's kernel fast path, if any. The routes installed."""
    installed = 0
    for five_tuple in five_tuples:
        alloc = server.allocations.get(five_tuple)
        if alloc is None:
            continue
        for binding in list(alloc.channels.values()):
            routes.install(server, alloc, binding, now)
        installed += len(alloc.routes)
    return installed


def forget_exported(server: TurnServer, five_tuples: Iterable[FiveTuple]) -> list[Address]:
    """Remove the allocations of ``five_tuples`` (now another core's) without ending them: no
    usage, no CloseRelay (the caller hands their sockets over). Their relay addresses."""
    from turnd.core.teardown import forget_timers

    moved: list[Address] = []
    for five_tuple in five_tuples:
        alloc = server.allocations.pop(five_tuple, None)
        if alloc is None:
            continue
        for relay in alloc.relays.values():
            del server.by_relay[relay.address]
            server.ports.release(relay.address)
            moved.append(relay.address)
        server.quotas.forget(alloc.username, five_tuple.client.host)
        forget_timers(server, alloc, len(alloc.relays))
        alloc.relays.clear()
        server.stats["handoff.exported"] += 1
    return moved
