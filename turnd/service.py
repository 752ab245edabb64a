"""The asyncio shell around the core: sockets in, core calls, actions out, one timer.

Everything that decides lives in :mod:`turnd.core`; this module receives datagrams, stamps them
with the wall clock (nonces and REST credentials carry Unix times shared by every node), calls the
core, and executes the actions it returns. A packet that makes the core raise is logged and counted
under ``internal_errors`` — never fatal.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import ipaddress
import json
import logging
import os
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

import attrs

from auth.credentials import Authenticator, parse_rest_username
from auth.nonce import NonceManager, SecurityFeature
from auth.users_file import load_users_file
from stun.addresses import Address, AddressFamily
from stun.keys import unquote
from turnd.config import Config, Secret
from turnd.config import Transport as ListenerTransport
from turnd.core.actions import UDP as _UDP
from turnd.core.actions import (
    Action,
    AllocationEnded,
    CloseConnection,
    ClosePeerConnection,
    CloseRelay,
    ConnectPeer,
    EntryPoint,
    FiveTuple,
    ForwardToNode,
    OpenRelay,
    RevokeUser,
    SendToClient,
    SendToPeer,
    SpliceConnection,
    Transport,
)
from turnd.core.peer_policy import PeerPolicy
from turnd.core.server import TurnServer
from turnd.core.settings import CoreSettings
from turnd.logs import event
from turnd.runtime import RuntimeCredentials
from turnd.state import NONCE_KEY_FILE, REST_SECRET_FILE, StateError, read_or_create_secret
from turnd.streams import ClientStream, serve_tls
from turnd.tcp_relays import TcpRelays

if TYPE_CHECKING:
    from turnd.cluster import ClusterLink
    from turnd.side_http import SideLimits

# Linux socket options for the DF bit (RFC 8656 §18.9); not all are exported by ``socket``.
_IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
_IP_PMTUDISC_DO = getattr(socket, "IP_PMTUDISC_DO", 2)
#: Pending TCP/TLS connections the kernel queues per listener before accept.
LISTEN_BACKLOG = 1024
#: Socket buffer asked for on listeners and relays: bursts of a few hundred packets must not be
#: dropped by the kernel while the event loop is busy (the kernel caps it at net.core.rmem_max).
SOCKET_BUFFER_BYTES = 4 * 1024 * 1024
#: Seconds between prunes of expired REST revocations: they can only grow on a revoke, so the
#: prune runs then, at most this often (an expired name costs memory only, never a wrong answer).
REVOCATION_PRUNE_INTERVAL = 600.0


class StartupError(RuntimeError):
    """The service cannot start; the message says why and what to do."""


@attrs.frozen
class ListenerReport:
    """What happened to one configured listener at start."""

    transport: str
    address: str
    port: int
    ok: bool
    reason: str = ""


def bind_failure_reason(exc: OSError, port: int) -> str:
    """A sentence an operator can act on for a failed bind."""
    if exc.errno == errno.EACCES and port < 1024:
        return (
            f"permission denied: port {port} is privileged; run as root or grant "
            "CAP_NET_BIND_SERVICE (the systemd unit does)"
        )
    if exc.errno == errno.EADDRINUSE:
        return "address already in use by another program"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "address not available on this host"
    return exc.strerror or str(exc)


def detect_relay_address() -> str:
    """The first global IPv4 address of this host, or 127.0.0.1 if there is none.

    Asks the kernel over netlink (pyroute2) in a worker thread: pyroute2's blocking API refuses
    to run on a thread whose event loop is running, and turnd asks from inside its loop.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(_first_global_ipv4).result()


def _first_global_ipv4() -> str:
    try:
        from pyroute2 import IPRoute  # imported here: the package works without it
    except ImportError:
        return "127.0.0.1"
    with IPRoute() as ipr:
        for msg in ipr.get_addr(family=socket.AF_INET):
            address = msg.get_attr("IFA_ADDRESS")
            if address and not ipaddress.ip_address(address).is_loopback:
                return str(address)
    return "127.0.0.1"


def detect_local_networks() -> list[str]:
    """Every network the kernel delivers to this host (its local routes, 127.0.0.0/8 and each
    interface address among them), as CIDRs; only loopback's if netlink cannot be asked."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(_local_routes).result()


def _local_routes() -> list[str]:
    fallback = ["127.0.0.0/8", "::1/128"]
    try:
        from pyroute2 import IPRoute  # imported here: the package works without it
    except ImportError:
        return fallback
    found: list[str] = []
    try:
        with IPRoute() as ipr:
            for msg in ipr.get_routes(table=RT_TABLE_LOCAL):
                if msg["type"] == RTN_LOCAL and msg.get_attr("RTA_DST"):
                    found.append(f"{msg.get_attr('RTA_DST')}/{msg['dst_len']}")
    except OSError as exc:
        event(
            logging.WARNING,
            "peers.local_networks_unknown",
            "could not list the host's local addresses; only loopback counts as this node's",
            error=str(exc),
        )
        return fallback
    return found or fallback


#: Linux's local routing table and its route type for addresses of this host (rtnetlink(7)).
RT_TABLE_LOCAL = 255
RTN_LOCAL = 2


def build_peer_policy(
    config: Config,
    relay_ipv4: str,
    local_networks: Sequence[str],
    listeners: Iterable[tuple[str, int]] | None = None,
) -> PeerPolicy:
    """The peer policy: config's allow and deny lists, and :func:`own_endpoints` refused."""
    own, own_networks = own_endpoints(config, relay_ipv4, local_networks, listeners)
    return PeerPolicy.build(
        allow=[str(n) for n in config.peers.allow],
        deny=[str(n) for n in config.peers.deny],
        own_addresses=own,
        own_networks=own_networks,
    )


def own_endpoints(
    config: Config,
    relay_ipv4: str,
    local_networks: Sequence[str],
    listeners: Iterable[tuple[str, int]] | None = None,
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """This node's listening endpoints that no peer may be: (ip, port) of the concrete TURN
    listeners (``listeners`` as bound, else as configured), of the relay addresses on every
    listener port, and of the metrics, control and API listeners; and (network, port) for the
    ports of wildcard listeners, on every local network. A relay pointed at any of them would
    loop into turnd itself."""
    if listeners is None:
        listeners = [
            (str(address), listener.port)
            for address in config.listen_addresses()
            for listener in config.server.listen
        ]
    hosts: list[tuple[str, list[int]]] = [(host, [port]) for host, port in listeners]
    ports = sorted({port for _, host_ports in hosts for port in host_ports})
    hosts += [(relay_ipv4, ports)]
    if config.relay.address6 is not None:
        hosts += [(str(config.relay.address6), ports)]
    for side in (config.metrics.listen, config.control.listen, config.api.listen):
        if side is not None:
            hosts += [(side.host, [side.port])]
    own: list[tuple[str, int]] = []
    networks: list[tuple[str, int]] = []
    for host, host_ports in hosts:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:  # a side listener named by host name: it is one of the local ones
            ip = ipaddress.ip_address("0.0.0.0")
        if ip.is_unspecified:
            networks += [(net, port) for net in local_networks for port in host_ports]
        else:
            own += [(str(ip), port) for port in host_ports]
    return own, networks


#: Sources whose FiveTuple (listeners) or Address (relays) objects are kept, so that a datagram
#: from a recent source builds none (building them costs about 1 µs on Python 3.11). Per listener,
#: and one for all relays; a full cache starts over, so spoofed sources cost at most this much.
SOURCE_CACHE_SIZE = 16384

_Kept = TypeVar("_Kept")


class SourceCache(dict[tuple[Any, ...], _Kept]):
    """Datagram source (as the loop gives it) -> what ``build`` made of it, at most
    SOURCE_CACHE_SIZE of them: ``cache[addr]`` builds on a miss."""

    def __init__(self, build: Callable[[tuple[Any, ...]], _Kept]) -> None:
        super().__init__()
        self.build = build

    def __missing__(self, addr: tuple[Any, ...]) -> _Kept:
        if len(self) >= SOURCE_CACHE_SIZE:
            self.clear()
        kept = self[addr] = self.build(addr)
        return kept


class _ClientDatagrams(asyncio.DatagramProtocol):
    """A UDP listener: every datagram goes to ``TurnService.client_message``."""

    def __init__(self, service: TurnService, server: Address) -> None:
        self.service = service
        self.server = server
        self.five_tuples = SourceCache(
            lambda addr: FiveTuple(_UDP, Address(addr[0], addr[1]), server)
        )

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.service.client_message(self.five_tuples[addr], data)

    def error_received(self, exc: Exception) -> None:
        self.service.core.stats["socket.listener_errors"] += 1


class _RelayDatagrams(asyncio.DatagramProtocol):
    """A relay socket: every datagram goes to ``TurnServer.handle_peer``."""

    def __init__(self, service: TurnService, relay: Address) -> None:
        self.service = service
        self.relay = relay

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.handle(self.service.peers[addr], data)

    def handle(self, peer: Address, data: bytes) -> None:
        """One datagram from ``peer``."""
        service = self.service
        try:
            out = service.core.peer_message(self.relay, peer, data, time.time())
        except Exception:
            service.internal_error("peer datagram")
            return
        if out is None:
            return  # dropped, counted
        if type(out) is tuple:
            service.send_to_client(out[0], out[1])
        elif out:
            service.execute(cast("list[Action]", out))  # only lists are left

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for what the relay sent (port unreachable and the like).
        self.service.core.stats["socket.relay_errors"] += 1


def build_core(
    config: Config,
    relay_ipv4: str,
    rng: Callable[[int], bytes],
    local_networks: Sequence[str] = (),
) -> TurnServer:
    """A core from the configuration (secrets already resolved into ``config``).

    ``local_networks`` (CIDRs) are what the host accepts as its own addresses (see
    :func:`detect_local_networks`): a wildcard listener serves its port on each of them."""
    server, relay, limits = config.server, config.relay, config.limits
    settings = CoreSettings(
        realm=server.realm,
        software=server.software,
        relay_ipv4=relay_ipv4,
        relay_ipv6=str(relay.address6) if relay.address6 is not None else None,
        port_min=relay.port_min,
        port_max=relay.port_max,
        allocation_lifetime=float(relay.allocation_lifetime),
        max_allocation_lifetime=float(relay.max_allocation_lifetime),
        permission_lifetime=float(relay.permission_lifetime),
        channel_lifetime=float(relay.channel_lifetime),
        max_allocations=limits.max_allocations,
        max_allocations_per_user=limits.max_allocations_per_user,
        max_allocations_per_ip=limits.max_allocations_per_ip,
        max_permissions_per_allocation=limits.max_permissions_per_allocation,
        max_channels_per_allocation=limits.max_channels_per_allocation,
        max_peer_connections_per_allocation=limits.max_peer_connections_per_allocation,
        allocation_packet_rate=float(limits.allocation_packet_rate),
        allocation_byte_rate=float(limits.allocation_byte_rate),
        new_peer_rate=float(limits.new_peer_rate),
        new_peer_burst=float(limits.new_peer_burst),
        unauthenticated_rate=float(limits.unauthenticated_rate),
        unauthenticated_burst=float(limits.unauthenticated_burst),
        unauthenticated_credit=limits.unauthenticated_credit,
        auth_failure_burst=float(limits.auth_failure_burst),
        auth_failure_rate=1.0 / limits.auth_failure_interval,
        auth_failure_user_burst=float(limits.auth_failure_user_burst),
        allow_anonymous_binding=config.auth.allow_anonymous_binding,
        tcp_relays=not config.cluster.enabled,
        reservation_prefix=config.cluster.node_id.to_bytes(2, "big")
        if config.cluster.enabled
        else b"",
    )
    policy = build_peer_policy(config, relay_ipv4, local_networks)
    nonce_key = config.auth.nonce_key
    assert nonce_key is not None, "resolve_secrets() fills in the nonce key"
    nonces = NonceManager(
        nonce_key.reveal().encode(),
        features=(SecurityFeature.PASSWORD_ALGORITHMS,),
        lifetime=float(config.auth.nonce_lifetime),
    )
    return TurnServer(settings, build_authenticator(config), nonces, policy, rng)


def build_authenticator(
    config: Config,
    runtime: RuntimeCredentials | None = None,
    revoked: Iterable[str] = (),
) -> Authenticator:
    """Static users (config, users file, runtime) and REST secrets (runtime, then config).

    Raises StartupError, naming the file, when the users file cannot be read or parsed.
    """
    users: dict[str, Any] = {name: secret.reveal() for name, secret in config.auth.users.items()}
    if config.auth.users_file:
        try:
            users.update(load_users_file(config.auth.users_file))
        except OSError as exc:
            raise StartupError(
                f"auth.users_file: cannot read {config.auth.users_file}: {exc.strerror}"
            ) from exc
        except ValueError as exc:
            raise StartupError(f"auth.users_file: {exc}") from exc
    runtime_secrets: list[str] = []
    if runtime is not None:
        users.update(runtime.users())
        runtime_secrets = runtime.secrets()
    return Authenticator.create(
        config.server.realm,
        users=users,
        rest_secrets=[*runtime_secrets, *(secret.reveal() for secret in config.auth.secrets)],
        revoked=revoked,
    )


class TurnService:
    """Listeners, relay sockets, the core and its timer."""

    def __init__(
        self,
        config: Config,
        *,
        relay_ipv4: str | None = None,
        config_source: Callable[[], Config] | None = None,
    ) -> None:
        self.config = config
        self.started = time.time()
        #: Produces a fresh configuration for reloads (SIGHUP, turnctl reload).
        self.config_source = config_source
        self.relay_ipv4 = relay_ipv4 or self._relay_address(config)
        address6 = config.relay.address6
        self.relay_ipv6 = str(address6) if address6 is not None else None
        self.runtime = RuntimeCredentials(config.server.state_dir)
        #: Revoked usernames: kept across reloads of the authenticator and, in the state
        #: directory, across restarts.
        self.revoked, damaged = self.runtime.revoked(
            accept_damaged=config.server.accept_damaged_revocations
        )
        self._revocations_pruned = time.time()
        #: A revocation write failed: the next one rewrites the whole file, so none is lost.
        self._revocations_unsaved = False
        #: Live revocations per credential endpoint key (api.max_revocations_per_key).
        self._revoked_per_key: Counter[str] = Counter()
        #: One thread writes revocations, in order, off the event loop.
        self._state_writer = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="turnd-state"
        )
        #: What the kernel delivers to this host (own_endpoints).
        self.local_networks = detect_local_networks()
        self.core = build_core(config, self.relay_ipv4, os.urandom, self.local_networks)
        self.rebuild_authenticator()
        loaded = len(self.revoked)
        self._prune_revocations(time.time())
        if damaged:
            self.core.stats["state.damaged_revocations"] += damaged
            event(
                logging.WARNING,
                "state.damaged_revocations_dropped",
                "server.accept_damaged_revocations: damaged lines dropped",
                file=str(self.runtime.revoked_path),
                lines=damaged,
            )
        if damaged or len(self.revoked) < loaded:
            self._compact_revocations()
        self.reports: list[ListenerReport] = []
        #: Every listener that is serving: (transport, bound address).
        self.bound: list[tuple[str, Address]] = []
        self._listeners: dict[Address, asyncio.DatagramTransport] = {}
        self._servers: list[asyncio.Server] = []
        self._tls_listeners: list[socket.socket] = []
        self._streams: dict[FiveTuple, ClientStream] = {}
        self._streams_per_ip: Counter[str] = Counter()
        self.tls_context: ssl.SSLContext | None = None
        self.tls_error = ""
        self._metrics: Any = None  # aiohttp AppRunner of the metrics listener
        self._api: Any = None  # aiohttp Application of the credential endpoint
        self._api_runner: Any = None
        self._control: list[Any] = []  # aiohttp AppRunners of the control API
        #: The metrics listener's bound address, once it serves.
        self.metrics_address: Address | None = None
        self._relays: dict[Address, asyncio.DatagramTransport] = {}
        #: Peer datagram sources -> their Address, for every relay socket.
        self.peers = SourceCache(lambda addr: Address(addr[0], addr[1]))
        self.tcp_relays = TcpRelays(self)
        self._reserved: dict[Address, socket.socket] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when: float | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        #: This node's cluster I/O, when [cluster] lists nodes (DESIGN.md "The cluster").
        self.cluster: ClusterLink | None = None
        #: Where every client message goes: the core, or the cluster node around it.
        self.entry: EntryPoint = self.core
        if config.cluster.enabled:
            from turnd.cluster import ClusterLink, build_node

            self.cluster = ClusterLink(self, config.cluster, build_node(self, config))
            self.entry = self.cluster.node

    @staticmethod
    def _relay_address(config: Config) -> str:
        configured = config.relay_address()
        return str(configured) if configured is not None else detect_relay_address()

    @property
    def udp_addresses(self) -> list[Address]:
        """The bound UDP listener addresses (with the real port when 0 was asked)."""
        return list(self._listeners)

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every configured listener; fail only if none starts."""
        self._loop = asyncio.get_running_loop()
        if self.cluster is not None:
            from turnd.cluster import ClusterError

            try:
                await self.cluster.start()
            except ClusterError as exc:
                raise StartupError(str(exc)) from exc
        listen = self.config.server.listen
        if any(listener.transport is ListenerTransport.TLS for listener in listen):
            self._load_tls()
            configured = self.config.tls.cert_file is not None or self.config.tls.key_file
            if self.tls_context is None and configured:
                # An operator's own certificate that cannot serve is a mistake to fix now, not
                # a node that quietly runs without its TLS listeners.
                raise StartupError(
                    f"tls: {self.tls_error} (fix tls.cert_file and tls.key_file, or remove the "
                    "tls listeners from server.listen)"
                )
        for address in self.config.listen_addresses():
            for listener in listen:
                if listener.transport is ListenerTransport.UDP:
                    await self._start_udp(str(address), listener.port)
                else:
                    await self._start_stream(
                        Transport(listener.transport.value), str(address), listener.port
                    )
        await self._start_metrics()
        await self._start_api()
        await self._start_control()
        if not self.bound:
            raise StartupError(
                "no listener could be started: "
                + "; ".join(f"{r.transport} {r.address}:{r.port}: {r.reason}" for r in self.reports)
            )
        # The ports as bound (a configured port 0 is the kernel's choice): none is a peer.
        self.core.policy = build_peer_policy(
            self.config,
            self.relay_ipv4,
            self.local_networks,
            [(address.host, address.port) for _, address in self.bound],
        )
        event(
            logging.INFO,
            "service.started",
            relay_address=self.relay_ipv4,
            relay_ports=f"{self.config.relay.port_min}-{self.config.relay.port_max}",
            realm=self.config.server.realm,
        )

    async def _start_udp(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            _set_buffers(sock)
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            self._report("udp", host, port, False, bind_failure_reason(exc, port))
            return
        bound = Address(host, sock.getsockname()[1])
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _ClientDatagrams(self, bound), sock=sock
        )
        self._listeners[bound] = transport
        self.bound.append(("udp", bound))
        self._report("udp", host, bound.port, True)

    def _load_tls(self) -> None:
        """Build the TLS context (configured files, or a self-signed certificate)."""
        from turnd.tls import TlsError, context_from_config

        try:
            self.tls_context, notes = context_from_config(self.config)
        except TlsError as exc:
            self.tls_context, self.tls_error = None, str(exc)
            return
        for note in notes:
            event(logging.WARNING, "tls.self_signed", note)

    async def _start_stream(self, kind: Transport, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        context = None
        if kind is Transport.TLS:
            if self.tls_context is None:
                self._report(kind.value, host, port, False, f"no TLS context: {self.tls_error}")
                return
            context = self.tls_context
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
            sock.listen(LISTEN_BACKLOG)
        except OSError as exc:
            sock.close()
            self._report(kind.value, host, port, False, bind_failure_reason(exc, port))
            return
        bound = Address(host, sock.getsockname()[1])
        if context is None:
            server = await loop.create_server(lambda: ClientStream(self, kind, bound), sock=sock)
            self._servers.append(server)
        else:  # connections count from accept, before their handshake (turnd.streams)
            sock.setblocking(False)
            self._tls_listeners.append(sock)
            timeout = float(self.config.limits.tls_handshake_timeout)
            self._spawn(serve_tls(self, sock, bound, context, timeout))
        self.bound.append((kind.value, bound))
        self._report(kind.value, host, bound.port, True)

    async def _start_metrics(self) -> None:
        """Serve GET /metrics on ``[metrics] listen``; a failure is reported, not fatal."""
        endpoint = self.config.metrics.listen
        if endpoint is None:
            return
        from aiohttp import web
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        from turnd import side_http
        from turnd.metrics import registry_for

        registry = registry_for(self)

        async def metrics(_: web.Request) -> web.Response:
            body = generate_latest(registry)
            return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        runner = side_http.runner(app, self.side_limits(), access_log=None)
        await runner.setup()
        site = side_http.TCPSite(
            runner, endpoint.host, endpoint.port, name="metrics", limits=self.side_limits()
        )
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            self._report(
                "metrics",
                endpoint.host,
                endpoint.port,
                False,
                bind_failure_reason(exc, endpoint.port),
            )
            return
        self._metrics = runner
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        port = sockets[0].getsockname()[1] if sockets else endpoint.port
        self.metrics_address = Address(endpoint.host, port)
        event(logging.INFO, "metrics.started", address=endpoint.host, port=port)

    def _api_settings(self, config: Config) -> Any:
        """The credential endpoint's settings from ``config`` and the serving listeners."""
        from auth.endpoint import EndpointSettings

        stun_urls, turn_urls = self.ice_urls(config)
        secrets = self.secret_sources(config)
        return EndpointSettings(
            keys=self.api_keys(config),
            max_ttl=config.api.max_ttl,
            secret=secrets[0][0] if secrets else "",
            stun_urls=tuple(stun_urls),
            turn_urls=tuple(turn_urls),
            max_revocations=config.api.max_revocations_per_key,
        )

    async def _start_api(self) -> None:
        """Serve the credential REST endpoint on ``[api] listen``; failures are reported."""
        endpoint = self.config.api.listen
        if endpoint is None:
            return

        from auth.endpoint import make_app
        from turnd import side_http

        try:
            app = make_app(self._api_settings(self.config), self, time.time)
        except ValueError as exc:
            self._report("api", endpoint.host, endpoint.port, False, f"bad [api] settings: {exc}")
            return
        runner = side_http.runner(app, self.side_limits())
        await runner.setup()
        site = side_http.TCPSite(
            runner, endpoint.host, endpoint.port, name="api", limits=self.side_limits()
        )
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            reason = bind_failure_reason(exc, endpoint.port)
            self._report("api", endpoint.host, endpoint.port, False, reason)
            return
        self._api, self._api_runner = app, runner
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        port = sockets[0].getsockname()[1] if sockets else endpoint.port
        event(logging.INFO, "api.started", address=endpoint.host, port=port)

    def side_limits(self) -> SideLimits:
        """The bounds of each side HTTP server (``limits.side_*``), counted in the core's stats."""
        from turnd.side_http import SideLimits

        limits = self.config.limits
        return SideLimits(
            limits.side_max_connections, float(limits.side_header_timeout), self.core.stats
        )

    async def _start_control(self) -> None:
        """The control API (turnctl) on the Unix socket and, with a token, on TCP."""
        from turnd.control import make_app, start_control
        from turnd.operations import Operations

        control = self.config.control
        operations = Operations(self)
        if control.socket:
            try:
                self._control += await start_control(
                    make_app(operations, None), control.socket, None, self.side_limits()
                )
                event(logging.INFO, "control.started", socket=control.socket)
            except OSError as exc:
                reason = exc.strerror or str(exc)
                self._report("control", control.socket, 0, False, reason)
        if control.listen is not None and control.token is not None:
            listen = (control.listen.host, control.listen.port)
            try:
                self._control += await start_control(
                    make_app(operations, control.token.reveal()), None, listen, self.side_limits()
                )
            except OSError as exc:
                reason = bind_failure_reason(exc, control.listen.port)
                self._report("control", control.listen.host, control.listen.port, False, reason)
            else:
                event(logging.INFO, "control.started", address=control.listen.host)

    def stream_counts(self) -> Counter[str]:
        """Open TCP/TLS client connections by transport."""
        return Counter(five_tuple.transport.value for five_tuple in self._streams)

    # --- stream connections ------------------------------------------------------------------

    def admit_stream(self, stream: ClientStream) -> bool:
        """Register a new TCP/TLS connection, or refuse it past the connection limits."""
        five_tuple = stream.five_tuple
        assert five_tuple is not None
        limits = self.config.limits
        ip = five_tuple.client.host
        if (
            len(self._streams) >= limits.max_connections
            or self._streams_per_ip[ip] >= limits.max_connections_per_ip
        ):
            self.core.stats["drop.connection_limit"] += 1
            return False
        self._streams[five_tuple] = stream
        self._streams_per_ip[ip] += 1
        return True

    def stream_closed(self, stream: ClientStream) -> None:
        """A TCP/TLS connection ended: forget it and tell the core (its allocation goes)."""
        five_tuple = stream.five_tuple
        if five_tuple is None or self._streams.get(five_tuple) is not stream:
            return
        del self._streams[five_tuple]
        ip = five_tuple.client.host
        self._streams_per_ip[ip] -= 1
        if not self._streams_per_ip[ip]:
            del self._streams_per_ip[ip]
        try:
            actions = self.core.connection_closed(five_tuple, time.time())
        except Exception:
            self.internal_error("connection close")
            return
        self.execute(actions)

    def _report(self, transport: str, host: str, port: int, ok: bool, reason: str = "") -> None:
        self.reports.append(ListenerReport(transport, host, port, ok, reason))
        if ok:
            event(logging.INFO, "listener.started", transport=transport, address=host, port=port)
        else:
            event(
                logging.WARNING,
                "listener.failed",
                transport=transport,
                address=host,
                port=port,
                reason=reason,
            )

    async def stop(self) -> None:
        """Close every socket; allocations end with the process."""
        if self._timer is not None:
            self._timer.cancel()
        if self.cluster is not None:
            self.cluster.stop()
        for task in list(self._tasks):
            task.cancel()
        for server in self._servers:
            server.close()
        for listener in self._tls_listeners:
            listener.close()
        self._tls_listeners.clear()
        self.tcp_relays.stop()
        for stream in list(self._streams.values()):
            stream.close()
        for transport in [*self._listeners.values(), *self._relays.values()]:
            transport.close()
        for sock in self._reserved.values():
            sock.close()
        self._listeners.clear()
        self._relays.clear()
        self._reserved.clear()
        if self._control:
            from turnd.control import stop_control

            await stop_control(self._control)
            self._control = []
        for runner in (self._metrics, self._api_runner):
            if runner is not None:
                await runner.cleanup()
        self._metrics = self._api_runner = self._api = None
        # Revocations still queued reach the disk before the process ends.
        await asyncio.get_running_loop().run_in_executor(None, self._state_writer.shutdown)
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

        authenticator = build_authenticator(config, self.runtime, self.revoked)
        api_settings = self._api_settings(config) if self._api is not None else None
        if (self.cluster is not None) != config.cluster.enabled:
            raise ValueError("[cluster] turned on or off: restart turnd to apply it")
        cluster_keys: tuple[dict[int, bytes], int] | None = None
        if self.cluster is not None:
            from turnd.cluster import ClusterError, cluster_keys_of

            try:
                cluster_keys = cluster_keys_of(config.cluster)
            except ClusterError as exc:
                raise ValueError(str(exc)) from exc
        if self.tls_context is not None:
            try:
                cert, key, _ = certificate_files(config)
                server_context(cert, key, config.tls.min_version.value)  # raises if unusable
                self.tls_context.load_cert_chain(cert, key, password=b"")
            except (TlsError, OSError, ssl.SSLError) as exc:
                raise ValueError(f"TLS certificate not reloaded: {exc}") from exc
        self.core.auth.authenticator = authenticator
        if self.cluster is not None and cluster_keys is not None:
            ignored = self.cluster.reload(config.cluster, *cluster_keys)
            if ignored:
                fields = ", ".join(f"cluster.{name}" for name in ignored)
                event(logging.WARNING, "reload.cluster", f"{fields} changed: restart to apply")
            config = attrs.evolve(config, cluster=self.cluster.config)
        self.config = config
        if api_settings is not None:
            from auth.endpoint import update_settings

            update_settings(self._api, api_settings)

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

    def rebuild_authenticator(self) -> None:
        """Users and secrets from the config, the users file and the runtime files, with the
        revocations so far."""
        self.core.auth.authenticator = build_authenticator(self.config, self.runtime, self.revoked)

    def authenticator_users(self) -> frozenset[str]:
        """The static users the authenticator knows (config, users file, runtime)."""
        return self.core.auth.authenticator.static_usernames

    def api_keys(self, config: Config | None = None) -> dict[str, str]:
        """Credential endpoint keys: the config's, then turnctl's (which win on a clash)."""
        keys = {key: token.reveal() for key, token in (config or self.config).api.keys.items()}
        keys.update(self.runtime.api_keys())
        return keys

    def refresh_api(self) -> None:
        """Give the running credential endpoint the current keys and secrets."""
        if self._api is not None:
            from auth.endpoint import update_settings

            update_settings(self._api, self._api_settings(self.config))

    def secret_sources(self, config: Config | None = None) -> list[tuple[str, str]]:
        """REST secrets, newest first, with where each comes from ("runtime" or "config")."""
        return [(s, "runtime") for s in self.runtime.secrets()] + [
            (s.reveal(), "config") for s in (config or self.config).auth.secrets
        ]

    def revoke(self, username: str, *, broadcast: bool = True) -> int:
        """Refuse ``username`` from now on and end its allocations here; how many ended.

        In a cluster (and with ``broadcast``) every other node is told to do the same.
        """
        new = username not in self.revoked
        self.revoked.add(username)
        if broadcast and self.cluster is not None:
            self.cluster.send_all(self.cluster.node.announce_revocation(username))
        now = time.time()
        actions = self.core.revoke(username, now)
        if new:
            key = _minted_for(username)
            if key is not None:
                self._revoked_per_key[key] += 1
            self._store_revocation(username, now)
        ended = {a.five_tuple for a in actions if isinstance(a, AllocationEnded)}
        self.execute(actions)
        event(logging.INFO, "auth.revoked", username=username, allocations=len(ended))
        return len(ended)

    def unrevoke(self, username: str) -> None:
        """Accept ``username`` again (turnctl users add of a revoked name); the caller rebuilds
        the authenticator."""
        if username in self.revoked:
            self.revoked.discard(username)
            key = _minted_for(username)
            if key is not None:
                self._revoked_per_key[key] -= 1
            self._compact_revocations()

    def _store_revocation(self, username: str, now: float) -> None:
        """Append ``username`` to revoked.runtime; when a prune is due, prune and rewrite the
        file with the live names instead (the only way lines leave it, with :meth:`unrevoke`)."""
        if now - self._revocations_pruned >= REVOCATION_PRUNE_INTERVAL:
            self._prune_revocations(now)
            self._compact_revocations()
        elif self._revocations_unsaved:
            self._compact_revocations()
        else:
            self._write_state(self.runtime.append_revoked, username)

    def _prune_revocations(self, now: float) -> None:
        """Drop revoked REST usernames that have expired anyway (the authenticator's
        ``prune_revoked``)."""
        auth = self.core.auth
        auth.authenticator = auth.authenticator.prune_revoked(now)
        kept = auth.authenticator.revoked
        self.revoked = {name for name in self.revoked if unquote(name) in kept}
        self._revocations_pruned = now
        keys = (_minted_for(name) for name in self.revoked)
        self._revoked_per_key = Counter(key for key in keys if key is not None)

    def revocations(self, key_id: str) -> int:
        """How many live revocations hold usernames minted for ``key_id`` (EndpointHooks)."""
        return self._revoked_per_key[key_id]

    def _compact_revocations(self) -> None:
        """Rewrite revoked.runtime with just :attr:`revoked`."""
        self._revocations_unsaved = False
        self._write_state(self.runtime.save_revoked, set(self.revoked))

    def _write_state(self, write: Callable[[Any], None], argument: Any) -> None:
        """Run ``write(argument)`` on the state writer thread (in the caller when no event loop
        runs); a failure is logged and counted, and the revocation holds until restart."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._state_written(None, write, argument)
            return
        try:
            loop.run_in_executor(self._state_writer, self._state_written, loop, write, argument)
        except RuntimeError:  # the writer has shut down (stop): write here, it is the last
            self._state_written(None, write, argument)

    def _state_written(
        self, loop: asyncio.AbstractEventLoop | None, write: Callable[[Any], None], argument: Any
    ) -> None:
        try:
            write(argument)
        except StateError as exc:
            if loop is None:
                self._state_not_saved(str(exc))
            else:
                loop.call_soon_threadsafe(self._state_not_saved, str(exc))

    def _state_not_saved(self, message: str) -> None:
        self._revocations_unsaved = True
        self.core.stats["state.write_failures"] += 1
        event(logging.ERROR, "auth.revoked_not_saved", f"revocations hold until restart: {message}")

    def ice_urls(self, config: Config | None = None) -> tuple[list[str], list[str]]:
        """stun:/turn:/turns: URLs of the listeners that serve, for minted credentials."""
        host = (config or self.config).api.public_host or self.relay_ipv4
        where = f"[{host}]" if ":" in host else host
        stun: list[str] = []
        turn: list[str] = []
        seen: set[tuple[str, int]] = set()
        for kind, address in self.bound:
            if (kind, address.port) in seen:
                continue
            seen.add((kind, address.port))
            if kind == "udp":
                stun.append(f"stun:{where}:{address.port}")
                turn.append(f"turn:{where}:{address.port}?transport=udp")
            elif kind == "tcp":
                turn.append(f"turn:{where}:{address.port}?transport=tcp")
            elif kind == "tls":
                turn.append(f"turns:{where}:{address.port}?transport=tcp")
        return stun[:1], turn

    def internal_error(self, where: str) -> None:
        """A bug surfaced while handling one packet: log it, count it, carry on."""
        self.core.stats["internal_errors"] += 1
        logging.getLogger("turnd").exception("internal error while handling a %s", where)

    # --- executing actions -------------------------------------------------------------------

    def execute(self, actions: list[Action]) -> None:
        """Carry out what the core asked, in order, then re-arm the timer if needed."""
        for action in actions:
            kind = type(action)
            if kind is SendToPeer:
                assert isinstance(action, SendToPeer)
                relay = self._relays.get(action.relay)
                if relay is None:
                    self.core.stats["drop.relay_socket_missing"] += 1
                else:
                    relay.sendto(action.data, action.peer)
            elif kind is SendToClient:
                assert isinstance(action, SendToClient)
                self.send_to_client(action.five_tuple, action.data)
            elif kind is ForwardToNode:
                assert isinstance(action, ForwardToNode) and self.cluster is not None
                self.cluster.send(action.node, action.data)
            elif kind is OpenRelay:
                assert isinstance(action, OpenRelay)
                self._open_relay(action)
            elif kind is CloseRelay:
                assert isinstance(action, CloseRelay)
                self._close_relay(action.relay)
            elif kind is AllocationEnded:
                assert isinstance(action, AllocationEnded)
                self._allocation_ended(action)
            elif kind is SpliceConnection:
                assert isinstance(action, SpliceConnection)
                client = self._streams.get(action.five_tuple)
                self.tcp_relays.splice(action.connection_id, action.five_tuple, client)
            elif kind is ConnectPeer:
                assert isinstance(action, ConnectPeer)
                self._spawn(self.tcp_relays.connect(action))
            elif kind is ClosePeerConnection:
                assert isinstance(action, ClosePeerConnection)
                self.tcp_relays.close(action.connection_id)
            elif kind is CloseConnection:
                assert isinstance(action, CloseConnection)
                closing = self._streams.get(action.five_tuple)
                if closing is not None:
                    closing.close()
            elif kind is RevokeUser:
                assert isinstance(action, RevokeUser)
                self.revoke(action.username, broadcast=False)
        self._arm_timer()

    def client_message(self, five_tuple: FiveTuple, data: bytes) -> None:
        """One client message of ``five_tuple``: a UDP datagram or a frame of a TCP/TLS
        connection, carried out as the entry point (the core, or the cluster node) says
        (``TurnServer.client_message``: relayed data and bare Binding answers come back as
        plain tuples and bytes, the hot path; everything else as actions)."""
        try:
            out = self.entry.client_message(five_tuple, data, time.time())
        except Exception:
            self.internal_error("client message")
            return
        if out is None:
            return  # dropped, counted
        if type(out) is tuple:  # type() is one specialised opcode on 3.11; isinstance a call
            relay = self._relays.get(out[0])
            if relay is None:
                self.core.stats["drop.relay_socket_missing"] += 1
            else:
                relay.sendto(out[2], out[1])
        elif type(out) is bytes:
            self.send_to_client(five_tuple, out)
        elif out:
            self.execute(cast("list[Action]", out))  # only lists are left

    def send_to_client(self, five_tuple: FiveTuple, data: bytes) -> None:
        """Send to a client over its listener (UDP) or its connection (TCP/TLS)."""
        if five_tuple.transport is _UDP:
            listener = self._listeners.get(five_tuple.server)
            if listener is None:
                self.core.stats["drop.listener_missing"] += 1
            else:
                listener.sendto(data, five_tuple.client)
        else:
            stream = self._streams.get(five_tuple)
            if stream is None:
                self.core.stats["drop.stream_closed"] += 1
            else:
                stream.write(data)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _open_relay(self, action: OpenRelay) -> None:
        relay = action.relay
        if action.tcp:
            self._spawn(self.tcp_relays.open_listener(action.ticket, relay))
            return
        if action.reserved:
            sock: socket.socket | None = self._reserved.pop(relay, None)
            if sock is None:
                self.relay_result(action.ticket, False)
                return
        else:
            sock = _bind_relay(relay, self.core.stats)
            if sock is None:
                self.relay_result(action.ticket, False)
                return
            if action.reserve:
                spare = _bind_relay(Address(relay.host, relay.port + 1), self.core.stats)
                if spare is None:
                    sock.close()
                    self.relay_result(action.ticket, False)
                    return
                self._reserved[Address(relay.host, relay.port + 1)] = spare
        if action.dont_fragment and relay.family is AddressFamily.IPV4:
            sock.setsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER, _IP_PMTUDISC_DO)
        self._spawn(self._adopt_relay(action.ticket, relay, sock))

    async def _adopt_relay(self, ticket: int, relay: Address, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _RelayDatagrams(self, relay), sock=sock
            )
        except OSError:
            sock.close()
            self.relay_result(ticket, False)
            return
        self._relays[relay] = transport
        self.relay_result(ticket, True)

    def relay_result(self, ticket: int, ok: bool) -> None:
        try:
            actions = self.core.relay_opened(ticket, ok, time.time())
        except Exception:
            self.internal_error("relay result")
            return
        self.execute(actions)

    def _close_relay(self, relay: Address) -> None:
        if self.tcp_relays.close_listener(relay):
            return
        transport = self._relays.pop(relay, None)
        if transport is not None:
            transport.close()
        sock = self._reserved.pop(relay, None)
        if sock is not None:
            sock.close()

    def _allocation_ended(self, ended: AllocationEnded) -> None:
        if self.cluster is not None:
            self.cluster.send_all(self.cluster.node.allocation_ended(ended.five_tuple))
        usage_file = self.config.usage.file
        if usage_file:
            self._write_usage(usage_file, ended)
        event(
            logging.INFO,
            "allocation.ended",
            username=ended.username,
            client=str(ended.five_tuple.client),
            relay=str(ended.relay),
            reason=ended.reason,
            seconds=round(ended.ended - ended.started, 1),
            packets_to_peer=ended.packets_to_peer,
            bytes_to_peer=ended.bytes_to_peer,
            packets_to_client=ended.packets_to_client,
            bytes_to_client=ended.bytes_to_client,
        )

    def _write_usage(self, path: str, ended: AllocationEnded) -> None:
        """Append one JSON line of accounting for an ended relay; a write failure is logged."""
        key_id, tag = None, ended.rest_id or None
        if ended.rest_id and ended.rest_id.split(":", 1)[0] in self.api_keys():
            key_id, _, tag = ended.rest_id.partition(":")  # minted by the credential endpoint
        record = {
            "username": ended.username,
            "key_id": key_id,
            "customIdentifier": tag or None,
            "transport": ended.five_tuple.transport.value,
            "client": str(ended.five_tuple.client),
            "relay": str(ended.relay),
            "reason": ended.reason,
            "start": round(ended.started, 3),
            "duration": round(ended.ended - ended.started, 3),
            "packets_to_peer": ended.packets_to_peer,
            "bytes_to_peer": ended.bytes_to_peer,
            "packets_to_client": ended.packets_to_client,
            "bytes_to_client": ended.bytes_to_client,
        }
        try:
            with open(path, "a", encoding="utf-8") as handle:  # reopened: survives logrotate
                handle.write(json.dumps(record, separators=(",", ":")) + "\n")
        except OSError as exc:
            self.core.stats["usage.write_failures"] += 1
            event(logging.ERROR, "usage.write_failed", path=path, reason=exc.strerror or str(exc))

    # --- the one timer -----------------------------------------------------------------------

    def _arm_timer(self) -> None:
        deadline = self.core.next_deadline()
        if deadline is None or (self._timer_when is not None and self._timer_when <= deadline):
            return
        if self._timer is not None:
            self._timer.cancel()
        loop = self._loop or asyncio.get_running_loop()
        self._timer_when = deadline
        self._timer = loop.call_later(max(0.0, deadline - time.time()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_when = None
        try:
            actions = self.core.handle_timer(time.time())
        except Exception:
            self.internal_error("timer")
            actions = []
        self.execute(actions)


def _set_buffers(sock: socket.socket) -> None:
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        with contextlib.suppress(OSError):  # the kernel caps it; a refusal is harmless
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)


def relay_socket_failed(stats: Counter[str], relay: Address, exc: OSError) -> None:
    """Count and log a relay socket (UDP or TCP) that could not be created, by errno."""
    reason = errno.errorcode.get(exc.errno or 0, "other")
    stats[f"relay.socket_failures.{reason}"] += 1
    event(
        logging.WARNING,
        "relay.socket_failed",
        "no relay socket: raise LimitNOFILE (systemd) or ulimit -n, or lower limits",
        relay=str(relay),
        reason=reason,
    )


def _bind_relay(relay: Address, stats: Counter[str]) -> socket.socket | None:
    """A bound, non-blocking UDP socket on ``relay``, or None (the core then retries another
    port or answers 508). A socket that cannot even be created (EMFILE, ENFILE, ENOBUFS: the
    process or the host is out of descriptors or buffers) is counted and logged by its errno, so
    that an operator sees why Allocates fail."""
    family = socket.AF_INET6 if ":" in relay.host else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_DGRAM)
    except OSError as exc:
        relay_socket_failed(stats, relay, exc)
        return None
    try:
        _set_buffers(sock)
        sock.bind((relay.host, relay.port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        return None
    return sock


def _minted_for(username: str) -> str | None:
    """The endpoint key a REST username was minted for (auth.endpoint.credential_owner's rule,
    without importing aiohttp); None for other usernames."""
    rest = parse_rest_username(username)
    return rest.ident.partition(":")[0] if rest is not None and rest.ident else None


def resolve_secrets(config: Config) -> tuple[Config, list[str]]:
    """Fill in generated secrets from the state directory; return notes for the operator."""
    notes: list[str] = []
    auth = config.auth
    state_dir = config.server.state_dir
    if auth.nonce_key is None:
        key, _ = read_or_create_secret(state_dir, NONCE_KEY_FILE)
        auth = attrs.evolve(auth, nonce_key=Secret(key))
    if not auth.secrets and not auth.users and not auth.users_file:
        secret, created = read_or_create_secret(state_dir, REST_SECRET_FILE)
        auth = attrs.evolve(auth, secrets=(Secret(secret),))
        where = os.path.join(state_dir, REST_SECRET_FILE)
        notes.append(
            f"no users or REST secrets configured: using the REST secret in {where}"
            + (" (generated now)" if created else "")
        )
    return attrs.evolve(config, auth=auth), notes
