"""What an operator can do to a running turnd: the ControlOps the control API serves.

Each method reads or changes the service and its core in one event-loop turn, so nothing here
races the packet path. Views are plain JSON-ready dicts.
"""

from __future__ import annotations

import ipaddress
import time
from collections import Counter
from typing import TYPE_CHECKING, Any, Protocol

from auth.credentials import mint_rest_credentials
from stun.addresses import Address
from turnd.core.actions import FiveTuple, Transport
from turnd.core.allocation import Allocation
from turnd.host import ClusteredHost
from turnd.runtime import secret_id

if TYPE_CHECKING:
    from turnd.config import Config
    from turnd.core.actions import Action
    from turnd.credential_state import CredentialState
    from turnd.fastpath import FastPath


class OperationsHost(ClusteredHost, Protocol):
    """What the operator's levers read and change (:class:`turnd.service.TurnService`), beyond
    the configuration, the core and the cluster link."""

    @property
    def fastpath(self) -> FastPath | None:
        """The kernel data path, when it runs."""

    @property
    def started(self) -> float:
        """When the service started (Unix time)."""

    @property
    def bound(self) -> list[tuple[str, Address]]:
        """The serving listeners: (transport, bound address)."""

    @property
    def relay_ipv4(self) -> str:
        """The IPv4 relay address."""

    @property
    def relay_ipv6(self) -> str | None:
        """The IPv6 relay address, if any."""

    @property
    def credentials(self) -> CredentialState:
        """Users, secrets, endpoint keys and revocations."""

    def stream_counts(self) -> Counter[str]:
        """Open TCP/TLS client connections by transport."""

    def execute(self, actions: list[Action]) -> None:
        """Carry out the core's actions."""

    def refresh_api(self) -> None:
        """Give the credential endpoint the current keys and secrets."""

    def reload_from_source(self) -> str | None:
        """Reload the configuration; None when done, else why not."""

    def ice_urls(self, config: Config | None = None) -> tuple[list[str], list[str]]:
        """stun:/turn:/turns: URLs of the listeners that serve."""


def allocation_id(alloc: Allocation) -> str:
    """A stable name for an allocation: its first relayed transport address."""
    return str(next(iter(alloc.relays.values())).address)


def _view(alloc: Allocation, detail: bool) -> dict[str, Any]:
    relays = list(alloc.relays.values())
    view: dict[str, Any] = {
        "id": allocation_id(alloc),
        "username": alloc.username,
        "rest_id": alloc.rest_id,
        "client": str(alloc.five_tuple.client),
        "server": str(alloc.five_tuple.server),
        "transport": alloc.five_tuple.transport.value,
        "relays": [str(r.address) for r in relays],
        "tcp": alloc.tcp,
        "started": round(alloc.started, 3),
        "expires": round(max(r.expires for r in relays), 3),
        "permissions": len(alloc.permissions),
        "channels": len(alloc.channels),
        "packets_to_peer": sum(r.packets_to_peer for r in relays),
        "bytes_to_peer": sum(r.bytes_to_peer for r in relays),
        "packets_to_client": sum(r.packets_to_client for r in relays),
        "bytes_to_client": sum(r.bytes_to_client for r in relays),
        # The part of the four above the kernel fast path relayed.
        "kernel_packets_to_peer": sum(r.kernel_packets_to_peer for r in relays),
        "kernel_bytes_to_peer": sum(r.kernel_bytes_to_peer for r in relays),
        "kernel_packets_to_client": sum(r.kernel_packets_to_client for r in relays),
        "kernel_bytes_to_client": sum(r.kernel_bytes_to_client for r in relays),
    }
    if detail:
        view["permission_list"] = sorted(alloc.permissions)
        view["channel_list"] = [
            {
                "number": number,
                "peer": str(binding.peer),
                "kernel": number in alloc.routes,
                "last_seen": None if binding.last_seen is None else round(binding.last_seen, 3),
            }
            for number, binding in sorted(alloc.channels.items())
        ]
    return view


#: Per-type or per-reason backbone counters of the cluster view: answer key -> stats key prefix.
_CLUSTER_BREAKDOWNS = {
    "frames_sent": "backbone.sent.",
    "frames_received": "backbone.received.",
    "drops": "backbone.drop.",
}
_TRANSPORTS = ", ".join(t.value for t in Transport)


def parse_address(text: str) -> Address:
    """``ip:port`` (IPv6 as ``[v6]:port``) as an :class:`Address`; ValueError saying why not."""
    host, colon, port = text.strip().rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        ip = ipaddress.ip_address((host[1:-1] if bracketed else host).split("%", 1)[0])
        number = int(port) if colon and port.isascii() and port.isdigit() else -1
    except ValueError:
        ip, number = None, -1
    if ip is None or not 0 <= number <= 0xFFFF or (ip.version == 6) != bracketed:
        raise ValueError(f"not an address: {text!r} (expected ip:port, or [ipv6]:port)")
    return Address(str(ip), number)


def cluster_counters(stats: Counter[str]) -> dict[str, Any]:
    """The cluster's counters from the core's stats (zeros and empty maps on a single node)."""
    counters: dict[str, Any] = {
        "forwarded_client": stats["cluster.forwarded.client"],
        "forwarded_peer": stats["cluster.forwarded.peer"],
        "second_chance": stats["cluster.second_chance"],
        "arrived_client": stats["cluster.arrived.client"],
    }
    for name, prefix in _CLUSTER_BREAKDOWNS.items():
        counters[name] = {
            key.removeprefix(prefix): value
            for key, value in sorted(stats.items())
            if key.startswith(prefix)
        }
    return counters


class Operations:
    """The operator's view and levers of one service."""

    def __init__(self, service: OperationsHost) -> None:
        self.service = service

    def status(self) -> dict[str, Any]:
        from turnd import __version__

        service = self.service
        core = service.core
        return {
            "version": __version__,
            "started": round(service.started, 3),
            "uptime_s": round(time.time() - service.started, 1),
            "realm": service.config.server.realm,
            "listeners": [
                {"transport": kind, "address": address.host, "port": address.port}
                for kind, address in service.bound
            ],
            "relay_addresses": [a for a in (service.relay_ipv4, service.relay_ipv6) if a],
            "allocations": len(core.allocations),
            "connections": sum(service.stream_counts().values()),
            "draining": core.draining,
            "fastpath": self._fastpath(),
        }

    def _fastpath(self) -> dict[str, Any]:
        """Whether the kernel relays, and what it relayed (the core's credited counters)."""
        service = self.service
        core = service.core
        core.collect_routes(time.time())
        fastpath = service.fastpath
        view: dict[str, Any] = fastpath.status() if fastpath is not None else {"active": False}
        view["mode"] = service.config.fastpath.mode.value
        for key in ("packets_to_peer", "packets_to_client", "bytes_to_peer", "bytes_to_client"):
            view["relayed_" + key] = core.stats["fastpath." + key]
        return view

    def allocations(
        self, user: str | None, client: str | None, transport: str | None
    ) -> list[dict[str, Any]]:
        found = []
        self.service.core.collect_routes(time.time())  # the kernel's counters, up to now
        for alloc in self.service.core.allocations.values():
            if user is not None and alloc.username != user:
                continue
            if client is not None and client not in (
                alloc.five_tuple.client.host,
                str(alloc.five_tuple.client),
            ):
                continue
            if transport is not None and alloc.five_tuple.transport.value != transport:
                continue
            found.append(_view(alloc, detail=False))
        return sorted(found, key=lambda view: view["started"])

    def _find(self, identifier: str) -> Allocation | None:
        return next(
            (a for a in self.service.core.allocations.values() if allocation_id(a) == identifier),
            None,
        )

    def allocation(self, allocation_id: str) -> dict[str, Any] | None:
        self.service.core.collect_routes(time.time())  # the kernel's counters, up to now
        alloc = self._find(allocation_id)
        return None if alloc is None else _view(alloc, detail=True)

    def kill(self, allocation_id: str) -> bool:
        alloc = self._find(allocation_id)
        if alloc is None:
            return False
        self.service.execute(self.service.core.kill(alloc.five_tuple, time.time()))
        return True

    def users(self) -> list[str]:
        return sorted(self.service.credentials.authenticator_users())

    def add_user(self, name: str, password: str) -> None:
        self.service.credentials.runtime.add_user(name, password)
        self.service.credentials.unrevoke(name)
        self.service.credentials.rebuild_authenticator()

    def remove_user(self, name: str) -> bool:
        removed = self.service.credentials.runtime.remove_user(name)
        if removed:
            self.service.credentials.rebuild_authenticator()
        return removed

    def secrets(self) -> list[dict[str, Any]]:
        return [
            {"id": secret_id(value), "source": source, "fingerprint": secret_id(value)}
            for value, source in self.service.credentials.secret_sources()
        ]

    def add_secret(self, value: str | None) -> dict[str, Any]:
        secret = self.service.credentials.runtime.add_secret(value)
        self.service.credentials.rebuild_authenticator()
        self.service.refresh_api()
        return {"id": secret_id(secret), "secret": secret}

    def retire_secret(self, secret_id_: str) -> bool:
        sources = self.service.credentials.secret_sources()
        match = [source for value, source in sources if secret_id(value) == secret_id_]
        if not match:
            return False
        if len(sources) == 1:
            raise ValueError("this is the last REST secret: add another before retiring it")
        if match[0] != "runtime":
            raise ValueError(
                f"this secret comes from the {match[0]} configuration: remove it there and reload"
            )
        self.service.credentials.runtime.remove_secret(secret_id_)
        self.service.credentials.rebuild_authenticator()
        self.service.refresh_api()
        return True

    def keys(self) -> list[dict[str, Any]]:
        configured = self.service.config.api.keys
        runtime = self.service.credentials.runtime.api_keys()
        return [
            {"id": key, "source": "runtime" if key in runtime else "config"}
            for key in sorted({*configured, *runtime})
        ]

    def add_key(self, key_id: str, token: str | None) -> dict[str, Any]:
        value = self.service.credentials.runtime.add_key(key_id, token)
        self.service.refresh_api()
        return {"id": key_id, "token": value}

    def remove_key(self, key_id: str) -> bool:
        if key_id in self.service.credentials.runtime.api_keys():
            self.service.credentials.runtime.remove_key(key_id)
            self.service.refresh_api()
            return True
        if key_id in self.service.config.api.keys:
            raise ValueError("this key comes from [api] keys in the configuration: remove it there")
        return False

    def reload(self) -> dict[str, Any]:
        error = self.service.reload_from_source()
        return {"ok": error is None, "error": error}

    def upgrade(self) -> dict[str, Any]:
        raise ValueError(
            "this turnd is one process (server.workers = 1): an upgrade in place needs workers "
            "under a supervisor; set server.workers = 0 (one per core) or 2 or more, and "
            "restart once"
        )

    def drain(self, on: bool) -> dict[str, Any]:
        core = self.service.core
        core.set_draining(on, time.time())
        link = self.service.cluster
        if link is not None:
            # heartbeats() sets this node's view from core.draining, and the other nodes hear
            # it now, not at the next beat.
            link.send_all(link.node.heartbeats(time.time()))
        return {"draining": on, "allocations": len(core.allocations)}

    def cluster_nodes(self) -> dict[str, Any]:
        link = self.service.cluster
        return {
            "enabled": link is not None,
            "node_id": 0 if link is None else link.node.node_id,
            "nodes": [] if link is None else link.nodes(),
            "counters": {
                **cluster_counters(self.service.core.stats),
                "relayed_to_client": self.service.core.traffic()["packets_to_client"],
            },
        }

    def cluster_table(self) -> dict[str, Any] | None:
        link = self.service.cluster
        return None if link is None else link.table()

    def cluster_owner(
        self, transport: str, client: str, server: str | None
    ) -> dict[str, Any] | None:
        link = self.service.cluster
        if link is None:
            return None
        if transport not in {t.value for t in Transport}:
            raise ValueError(f"not a transport: {transport!r} (expected one of {_TRANSPORTS})")
        flow = FiveTuple(Transport(transport), parse_address(client), self._server(server))
        here = flow in self.service.core.allocations
        owner: int | None
        if flow.transport is Transport.UDP:
            owner = link.node.owner(flow.transport.value, flow.client, flow.server)
        else:  # a TCP/TLS client belongs to the node that accepted its connection
            owner = link.node.node_id if here else None
        return {
            "node": owner,
            "alive": owner in link.node.membership.alive,
            "here": here,
            "flow": f"{flow.transport.value} {flow.client} -> {flow.server}",
        }

    def _server(self, server: str | None) -> Address:
        """``server`` parsed, or the first UDP listener's address."""
        if server is not None:
            return parse_address(server)
        listener = next((address for kind, address in self.service.bound if kind == "udp"), None)
        if listener is None:
            raise ValueError("turnd has no UDP listener: name the server address")
        return listener

    def revoke(self, username: str) -> int:
        return self.service.credentials.revoke(username)

    def mint(self, ttl: int, ident: str) -> dict[str, Any]:
        secrets_ = self.service.credentials.secret_sources()
        if not secrets_:
            raise ValueError("no REST secret is configured: add one with turnctl secrets add")
        username, password = mint_rest_credentials(secrets_[0][0], time.time(), ttl, ident)
        stun_urls, turn_urls = self.service.ice_urls()
        return {
            "iceServers": [
                {"urls": list(stun_urls)},
                {"urls": list(turn_urls), "username": username, "credential": password},
            ]
        }
