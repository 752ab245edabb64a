"""The cluster's sockets: the backbone, heartbeats, and the catch sockets of other nodes' ports.

Every decision is :class:`turnd.core.cluster.ClusterNode`'s (operator actions between nodes
included: :mod:`turnd.core.cluster_control`); this module moves bytes and hands what the node
answers to ``ClusterHost.execute``. Three kinds of socket:

* the backbone socket, UDP on this node's backbone address: sealed frames to and from the other
  nodes (client and peer datagrams forwarded to their owner, heartbeats, operator actions);
* the listeners of :mod:`turnd.packet_path`, which hand every client datagram to the node (their
  entry point); one of a flow another node owns comes back as a ``ForwardToNode`` for
  :meth:`ClusterLink.send`;
* one *catch* socket per relay port of the other nodes' slices, bound on the service IP: the
  network may deliver a peer's datagram for any relay port to any node, and this node forwards
  what it catches to the slice's owner. Named limit: a node holds one socket per relay port of
  the range that it does not own — keep the relay range to what the cluster needs (turnd raises
  its open-file limit to the hard limit and refuses to start, saying so, when that is too low).

Ports of this node's own slices are bound on demand, as on a single node. The owner answers
clients and peers from its own sockets on the service IP (direct server return), so a forwarded
datagram crosses the backbone once (twice while membership views disagree).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import hashlib
import logging
import resource
import socket
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from forwarding.frames import BackboneCodec
from forwarding.membership import Membership
from forwarding.slices import SliceTable
from stun.addresses import Address
from turnd.config import ClusterConfig, Config, Secret
from turnd.core.actions import ForwardToNode, as_actions
from turnd.core.cluster import ClusterNode
from turnd.host import ServiceHost
from turnd.logs import event

if TYPE_CHECKING:
    from turnd.core.actions import Action


class ClusterHost(ServiceHost, Protocol):
    """What the cluster's I/O asks of the service (:class:`turnd.service.TurnService`), beyond
    the configuration (the relay port range) and this node's core."""

    @property
    def revoked(self) -> set[str]:
        """The usernames revoked here (the node answers ``revocations?`` with them)."""

    def execute(self, actions: list[Action]) -> None:
        """Carry out what the node answered (ForwardToNode, RevokeUser, the core's actions)."""

    def internal_error(self, where: str) -> None:
        """Log and count a bug surfaced while handling a frame."""


#: Datagrams read from one ready catch socket in one go (then other sockets get their turn).
CATCH_BATCH = 64
#: Largest datagram read from a catch or backbone socket (a UDP datagram's maximum).
DATAGRAM_MAX = 65535


class ClusterError(RuntimeError):
    """The cluster cannot start on this node; the message says why and what to do."""


def cluster_keys(key: Secret, accept: Iterable[Secret]) -> tuple[dict[int, bytes], int]:
    """Backbone keys by key id, and the id to send with, from the configured secrets.

    A 32-byte key is SHA-256 of the secret; its id (one byte, carried in every frame) comes from a
    second hash, so nodes agree on ids without configuring them.
    """
    keys: dict[int, bytes] = {}
    send = -1
    for index, secret in enumerate([key, *accept]):
        text = secret.reveal().encode()
        key_id = hashlib.sha256(b"turnd cluster key id\x00" + text).digest()[0]
        material = hashlib.sha256(b"turnd cluster key\x00" + text).digest()
        if key_id in keys and keys[key_id] != material:
            raise ClusterError(
                "cluster.accept_keys: two keys share a key id (1 in 256 chance): "
                "generate another new key"
            )
        keys[key_id] = material
        if index == 0:
            send = key_id
    return keys, send


def cluster_keys_of(cluster: ClusterConfig) -> tuple[dict[int, bytes], int]:
    """:func:`cluster_keys` of a [cluster] section that lists nodes (so it has a key)."""
    assert cluster.key is not None
    return cluster_keys(cluster.key, cluster.accept_keys)


def build_node(service: ClusterHost, config: Config) -> ClusterNode:
    """The cluster logic for this node, around ``service.core``."""
    cluster = config.cluster
    keys, send = cluster_keys_of(cluster)
    ids = [node.id for node in cluster.nodes]
    now = time.time()
    epoch = int(now * 1000)  # this incarnation: newer than any before it
    codec = BackboneCodec(keys, send, cluster.node_id, epoch, ids)
    membership = Membership(cluster.node_id, ids, cluster.dead_after, started=now)
    slices = SliceTable(config.relay.port_min, config.relay.port_max, ids, cluster.slice_size)
    backbone = {node.id: Address(node.backbone.host, node.backbone.port) for node in cluster.nodes}
    return ClusterNode(
        service.core,
        codec,
        membership,
        slices,
        backbone,
        started=now,
        revoked=lambda: service.revoked,  # reassigned when pruned: read it each time
    )


class _Backbone(asyncio.DatagramProtocol):
    """The backbone socket: each datagram is a sealed frame for ClusterLink.frame_received."""

    def __init__(self, link: ClusterLink) -> None:
        self.link = link

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.link.frame_received(data)

    def error_received(self, exc: Exception) -> None:
        self.link.service.core.stats["backbone.socket_errors"] += 1


class ClusterLink:
    """This node's cluster I/O: created by the service when ``[cluster]`` lists nodes."""

    def __init__(self, service: ClusterHost, config: ClusterConfig, node: ClusterNode) -> None:
        self.service = service
        self.config = config
        self.node = node
        self.node_id = node.node_id
        self.stats = service.core.stats
        self._destinations = {
            node_id: (address.host, address.port) for node_id, address in node.backbone.items()
        }
        self._backbone: asyncio.DatagramTransport | None = None
        self._catch: dict[int, socket.socket] = {}
        self._heartbeat: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_view: frozenset[int] = frozenset()

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Service IP on lo (if asked), backbone socket, catch sockets, first heartbeat."""
        self._loop = asyncio.get_running_loop()
        if self.config.setup_service_ip:
            await self._setup_service_ip()
        own = self.node.backbone[self.node_id]
        family = socket.AF_INET6 if ":" in own.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind((own.host, own.port))
        except OSError as exc:
            sock.close()
            raise ClusterError(
                f"cluster backbone {own}: cannot bind: {exc.strerror}: this node's entry in "
                "cluster.nodes must be an address of this host"
            ) from exc
        transport, _ = await self._loop.create_datagram_endpoint(lambda: _Backbone(self), sock=sock)
        self._backbone = transport
        self._bind_catch_sockets()
        self._beat()
        event(
            logging.INFO,
            "cluster.started",
            node=self.node_id,
            nodes=len(self.node.backbone),
            backbone=str(own),
            own_ports=self.node.slices.share(self.node_id),
            catch_sockets=len(self._catch),
        )

    async def _setup_service_ip(self) -> None:
        from forwarding.netsetup import ensure_service_ip_on_lo

        service_ip = str(self.config.service_ip)
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            future = pool.submit(ensure_service_ip_on_lo, service_ip)
            try:
                added = await asyncio.wrap_future(future)
            except (PermissionError, OSError) as exc:
                event(
                    logging.WARNING,
                    "cluster.service_ip",
                    f"cannot put {service_ip} on lo ({exc}); binding it will fail unless the "
                    "network setup already did it (or set cluster.setup_service_ip = false)",
                )
                return
        if added:
            event(logging.INFO, "cluster.service_ip", f"added {service_ip}/32 to lo")

    def _bind_catch_sockets(self) -> None:
        """One socket per relay port of the other nodes' slices, on the service IP."""
        slices = self.node.slices
        ports = [
            port
            for other in self.node.backbone
            if other != self.node_id
            for low, high in slices.ranges(other)
            for port in range(low, high + 1)
        ]
        _raise_open_file_limit(len(ports) + 4096)
        service_ip = str(self.config.service_ip)
        family = socket.AF_INET6 if ":" in service_ip else socket.AF_INET
        loop = self._loop
        assert loop is not None
        for port in ports:
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.setblocking(False)
                sock.bind((service_ip, port))
            except OSError as exc:
                sock.close()
                self.stop()
                if exc.errno == errno.EMFILE:
                    raise ClusterError(
                        f"out of file descriptors after {len(self._catch)} catch sockets: this "
                        f"node needs one per relay port it does not own ({len(ports)}); raise "
                        "LimitNOFILE or narrow relay.port_min-port_max"
                    ) from exc
                raise ClusterError(
                    f"cannot bind the catch socket {service_ip}:{port}: {exc.strerror}"
                ) from exc
            self._catch[port] = sock
            loop.add_reader(sock.fileno(), self._catch_ready, sock, Address(service_ip, port))

    def stop(self) -> None:
        """Close the backbone and catch sockets; stop heartbeats."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        if self._backbone is not None:
            self._backbone.close()
            self._backbone = None
        loop = self._loop
        for sock in self._catch.values():
            if loop is not None:
                with contextlib.suppress(Exception):
                    loop.remove_reader(sock.fileno())
            sock.close()
        self._catch.clear()

    def reload(self, config: ClusterConfig, keys: dict[int, bytes], send: int) -> list[str]:
        """Apply a reloaded [cluster]: its keys (``cluster_keys`` of it, a rotation step) take
        effect at once; anything else needs a restart. Returns the fields not applied."""
        codec = self.node.codec
        for key_id, key in keys.items():
            codec.add_key(key_id, key)
        codec.set_send_key(send)
        for key_id in codec.key_ids - keys.keys():
            codec.remove_key(key_id)
        ignored = [
            field.name
            for field in attrs.fields(ClusterConfig)
            if field.name not in ("key", "accept_keys")
            and getattr(config, field.name) != getattr(self.config, field.name)
        ]
        self.config = attrs.evolve(self.config, key=config.key, accept_keys=config.accept_keys)
        return ignored

    # --- sending -----------------------------------------------------------------------------

    def send(self, node: int, data: bytes) -> None:
        """Put one sealed frame on the backbone to ``node``."""
        backbone = self._backbone
        if backbone is None:
            self.stats["backbone.drop.not_started"] += 1
            return
        backbone.sendto(data, self._destinations[node])

    def send_all(self, frames: Iterable[ForwardToNode]) -> None:
        """Send frames the node made outside an input (heartbeats, announcements)."""
        for frame in frames:
            self.send(frame.node, frame.data)

    # --- receiving ---------------------------------------------------------------------------

    def _catch_ready(self, sock: socket.socket, relay: Address) -> None:
        """A peer datagram for a port of another node's slice: the node forwards it to the owner."""
        node = self.node
        service = self.service
        for _ in range(CATCH_BATCH):
            try:
                data, addr = sock.recvfrom(DATAGRAM_MAX)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.stats["socket.relay_errors"] += 1
                return
            try:
                out = node.peer_message(relay, Address(addr[0], addr[1]), data, time.time())
            except Exception:
                service.internal_error("caught peer datagram")
                continue
            if out is not None:  # None: dropped, counted (the slice's owner is down)
                service.execute(as_actions(out))

    def frame_received(self, data: bytes) -> None:
        """A datagram on the backbone socket: the node opens it; carry out what it says."""
        try:
            actions = self.node.backbone_frame(data, time.time())
        except Exception:
            self.service.internal_error("backbone frame")
            return
        if actions:
            self.service.execute(actions)

    # --- heartbeats --------------------------------------------------------------------------

    def _beat(self) -> None:
        now = time.time()
        try:
            self.send_all(self.node.heartbeats(now))
            self.node.expire(now)
            self._log_view_change()
        except Exception:
            self.service.internal_error("cluster heartbeat")
        loop = self._loop
        if loop is not None:
            self._heartbeat = loop.call_later(self.config.heartbeat_interval, self._beat)

    def _log_view_change(self) -> None:
        alive = self.node.membership.alive
        if alive != self._last_view:
            joined = sorted(alive - self._last_view)
            left = sorted(self._last_view - alive)
            self._last_view = alive
            self.send_all(self.node.joined(joined))
            event(
                logging.INFO,
                "cluster.view",
                alive=",".join(map(str, sorted(alive))),
                joined=",".join(map(str, joined)),
                left=",".join(map(str, left)),
            )

    # --- for turnctl -------------------------------------------------------------------------

    def nodes(self) -> list[dict[str, Any]]:
        """Per configured node: id, backbone address, alive, draining, last heard, own ports."""
        now = time.time()
        found = []
        for status in self.node.membership.status(now):
            node_id = status["node"]
            found.append(
                {
                    **status,
                    "backbone": str(self.node.backbone[node_id]),
                    "relay_ports": self.node.slices.share(node_id),
                }
            )
        return found

    def table(self) -> dict[str, Any]:
        """The slice table: relay port ranges per node, and the size of a slice."""
        slices = self.node.slices
        return {
            "slice_size": self.config.slice_size,
            "port_min": self.service.config.relay.port_min,
            "port_max": self.service.config.relay.port_max,
            "nodes": {
                str(node_id): [list(span) for span in slices.ranges(node_id)]
                for node_id in sorted(self.node.backbone)
            },
            "catch_sockets": len(self._catch),
        }


def _raise_open_file_limit(needed: int) -> None:
    """Lift the soft open-file limit towards the hard one when ``needed`` descriptors exceed it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
