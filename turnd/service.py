"""The service: one node's parts wired together, started, stopped and reloaded.

Each job has its own module, and this one only holds them:

* :mod:`turnd.assembly` builds the core from the configuration;
* :mod:`turnd.packet_path` carries datagrams and frames to and from the core (the hot path);
* :mod:`turnd.listeners` binds the client listeners;
* :mod:`turnd.credential_state` keeps users, secrets and revocations (and their files);
* :mod:`turnd.usage` accounts for ended allocations;
* :mod:`turnd.side_servers` serves metrics, the credential endpoint and the control API;
* :mod:`turnd.cluster` is this node's cluster I/O, when ``[cluster]`` lists nodes.

The satellites reach the service through a Protocol each (``ClusterHost``, ``OperationsHost``,
``MetricsSource``, ...), which :class:`TurnService` satisfies.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import attrs

from stun.addresses import Address
from turnd.assembly import (
    StartupError,
    build_authenticator,
    build_core,
    build_peer_policy,
    detect_local_networks,
    relay_address,
)
from turnd.config import Config
from turnd.core.actions import Action
from turnd.credential_state import CredentialState
from turnd.listeners import Listeners
from turnd.logs import event
from turnd.packet_path import PacketPath, check_buffers
from turnd.side_servers import SideServers
from turnd.state import StateError
from turnd.usage import UsageLog

if TYPE_CHECKING:
    from turnd.cluster import ClusterLink
    from turnd.fastpath import FastPath


class TurnService:
    """One node: the core, its packet path, listeners, credentials, side servers, cluster."""

    def __init__(
        self,
        config: Config,
        *,
        relay_ipv4: str | None = None,
        config_source: Callable[[], Config] | None = None,
        inherited: Mapping[tuple[str, str, int], socket.socket] | None = None,
        hold_udp: bool = False,
    ) -> None:
        self.config = config
        #: Listener sockets bound by a supervisor, when this service is one of its workers.
        self.inherited = inherited
        #: Whether the inherited UDP listeners wait, unread, until a worker that takes over
        #: another's allocations has them (turnd.workers.handoff).
        self.hold_udp = hold_udp
        self.started = time.time()
        #: Produces a fresh configuration for reloads (SIGHUP, turnctl reload).
        self.config_source = config_source
        self.relay_ipv4 = relay_ipv4 or relay_address(config)
        address6 = config.relay.address6
        self.relay_ipv6 = str(address6) if address6 is not None else None
        #: What the kernel delivers to this host (own_endpoints).
        self.local_networks = detect_local_networks()
        self.core = build_core(config, self.relay_ipv4, os.urandom, self.local_networks)
        self.credentials = CredentialState(self)
        self.usage = UsageLog(self)
        self.packets = PacketPath(
            self.core,
            lambda: self.config,
            self.usage.allocation_ended,
            lambda action: self.revoke(action.username, broadcast=False),
        )
        self.listeners = Listeners(self.packets)
        # A worker's credential endpoint shares its port with the worker it replaces.
        self.side = SideServers(self, reuse_port=inherited is not None)
        # Packet errors go straight to the packet path (ClusterHost).
        self.internal_error = self.packets.internal_error
        #: This node's cluster I/O, when [cluster] lists nodes (DESIGN.md "The cluster").
        self.cluster: ClusterLink | None = None
        #: The kernel data path, once started, when [fastpath] allows it (turnd.fastpath).
        self.fastpath: FastPath | None = None
        if config.cluster.enabled:
            from turnd.cluster import ClusterLink, build_node

            self.cluster = ClusterLink(self, config.cluster, build_node(self, config))
            self.packets.cluster = self.cluster
            self.packets.entry = self.cluster.node

    @property
    def bound(self) -> list[tuple[str, Address]]:
        """Every listener that is serving: (transport, bound address)."""
        return self.listeners.bound

    @property
    def udp_addresses(self) -> list[Address]:
        """The bound UDP listener addresses (with the real port when 0 was asked)."""
        return self.packets.udp_addresses

    @property
    def metrics_address(self) -> Address | None:
        """The metrics listener's bound address, once it serves."""
        return self.side.metrics_address

    @property
    def revoked(self) -> set[str]:
        """The usernames revoked here (ClusterHost)."""
        return self.credentials.revoked

    def revoke(self, username: str, *, broadcast: bool = True) -> int:
        """Revoke ``username`` (:meth:`CredentialState.revoke`); how many allocations ended."""
        return self.credentials.revoke(username, broadcast=broadcast)

    def execute(self, actions: list[Action]) -> None:
        """Carry out the core's actions (:meth:`PacketPath.execute`)."""
        self.packets.execute(actions)

    def stream_counts(self) -> Counter[str]:
        """Open TCP/TLS client connections by transport."""
        return self.packets.streams.counts()

    def refresh_api(self) -> None:
        """Give the running credential endpoint the current keys and secrets."""
        self.side.refresh_api()

    def ice_urls(self, config: Config | None = None) -> tuple[list[str], list[str]]:
        """stun:/turn:/turns: URLs of the listeners that serve, for minted credentials."""
        host = (config or self.config).api.public_host or self.relay_ipv4
        return self.listeners.ice_urls(host)

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every configured listener; fail only if none starts."""
        self.packets.run_on_current_loop()
        if self.cluster is not None:
            from turnd.cluster import ClusterError

            try:
                await self.cluster.start()
            except ClusterError as exc:
                raise StartupError(str(exc)) from exc
        if self.inherited is None:  # a worker's supervisor checked them already
            check_buffers(self.config)
        await self.listeners.start(self.config, self.inherited, hold_udp=self.hold_udp)
        await self.side.start()
        if not self.bound:
            raise StartupError(
                "no listener could be started: "
                + "; ".join(
                    f"{r.transport} {r.address}:{r.port}: {r.reason}"
                    for r in self.listeners.reports
                )
            )
        # The ports as bound (a configured port 0 is the kernel's choice): none is a peer.
        self.core.policy = build_peer_policy(
            self.config,
            self.relay_ipv4,
            self.local_networks,
            [(address.host, address.port) for _, address in self.bound],
        )
        self._start_fastpath()
        event(
            logging.INFO,
            "service.started",
            relay_address=self.relay_ipv4,
            relay_ports=f"{self.config.relay.port_min}-{self.config.relay.port_max}",
            realm=self.config.server.realm,
        )

    def _start_fastpath(self) -> None:
        """Relay the established UDP channels in the kernel, as [fastpath] asks."""
        from turnd.fastpath import FastPathUnavailable, open_fastpath

        hosts = [address.host for kind, address in self.bound if kind == "udp"]
        hosts += [a for a in (self.relay_ipv4, self.relay_ipv6) if a]
        try:
            self.fastpath = open_fastpath(self.config.fastpath, hosts)
        except FastPathUnavailable as exc:
            raise StartupError(f"fastpath.mode is on, but {exc}") from exc
        if self.fastpath is not None:
            self.core.attach_routes(self.fastpath.routes, time.time())

    def _stop_fastpath(self) -> None:
        """Take every channel back from the kernel (crediting what it relayed), then detach."""
        if self.fastpath is not None:
            self.core.detach_routes(time.time())
            self.fastpath.close()
            self.fastpath = None

    async def stop(self) -> None:
        """Close every socket; allocations end with the process."""
        self._stop_fastpath()
        if self.cluster is not None:
            self.cluster.stop()
        self.listeners.close()
        self.packets.close()
        await self.side.stop()
        # Revocations still queued reach the disk before the process ends.
        await self.credentials.stop()
        await asyncio.sleep(0)
        event(logging.INFO, "service.stopped", allocations=len(self.core.allocations))

    def reload(self, config: Config) -> None:
        """Swap users, REST secrets, the TLS certificate and the cluster keys without touching
        allocations (other [cluster] changes are logged as needing a restart).

        The new certificate and key are checked as a pair first, then loaded into the existing
        TLS context: listeners keep running, established connections keep theirs, and new
        handshakes use the new one. (``tls.min_version`` takes effect at the next start.)
        """
        from turnd.tls import TlsError, certificate_files, server_context

        authenticator = build_authenticator(
            config, self.credentials.runtime, self.credentials.revoked
        )
        api_settings = self.side.api_settings(config)
        if (self.cluster is not None) != config.cluster.enabled:
            raise ValueError("[cluster] turned on or off: restart turnd to apply it")
        cluster_keys: tuple[dict[int, bytes], int] | None = None
        if self.cluster is not None:
            from turnd.cluster import ClusterError, cluster_keys_of

            try:
                cluster_keys = cluster_keys_of(config.cluster)
            except ClusterError as exc:
                raise ValueError(str(exc)) from exc
        tls_context = self.listeners.tls_context
        if tls_context is not None:
            try:
                cert, key, _ = certificate_files(config)
                server_context(cert, key, config.tls.min_version.value)  # raises if unusable
                tls_context.load_cert_chain(cert, key, password=b"")
            except (TlsError, OSError, ssl.SSLError) as exc:
                raise ValueError(f"TLS certificate not reloaded: {exc}") from exc
        self.core.auth.authenticator = authenticator
        if config.fastpath != self.config.fastpath:  # the kernel's channels stay as they are
            event(logging.WARNING, "reload.fastpath", "[fastpath] changed: restart to apply")
            config = attrs.evolve(config, fastpath=self.config.fastpath)
        if self.cluster is not None and cluster_keys is not None:
            ignored = self.cluster.reload(config.cluster, *cluster_keys)
            if ignored:
                fields = ", ".join(f"cluster.{name}" for name in ignored)
                event(logging.WARNING, "reload.cluster", f"{fields} changed: restart to apply")
            config = attrs.evolve(config, cluster=self.cluster.config)
        self.config = config
        self.side.update_api(api_settings)

    def reload_from_source(self) -> str | None:
        """Reload from :attr:`config_source`; None when done, else why it was refused."""
        from turnd.config import ConfigError

        if self.config_source is None:
            return "this turnd has no configuration source to reload from"
        try:
            self.reload(self.config_source())
        except (ConfigError, StateError, StartupError, ValueError, OSError) as exc:
            event(logging.ERROR, "reload.refused", str(exc))
            return str(exc)
        event(logging.INFO, "reload.done", "users, REST secrets and TLS certificate reloaded")
        return None
