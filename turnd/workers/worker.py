"""One worker process: a whole :class:`turnd.service.TurnService` over the supervisor's sockets.

Started by the supervisor as ``python -m turnd.workers.worker --channel FD`` with its boot
settings in ``$TURND_WORKER_BOOT`` (JSON: the configuration source, its slot, the worker count,
the inherited listener sockets' fd numbers, its fd channel's, and, for a worker started by an
upgrade, the socket it receives its predecessor's relay sockets on). It serves its share of the
listeners and its slice of the relay ports, answers the supervisor's requests
(:class:`WorkerOps`) and tells it of every allocation count its quotas take or give back, and
of revocations made here. It stops on SIGTERM, or when the channel closes (its supervisor is
gone), or once it has handed its allocations over and its last TCP/TLS connection has closed
(:mod:`turnd.workers.handoff`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys
import time
from base64 import b64decode, b64encode
from typing import Any

import attrs

from turnd import logs
from turnd.assembly import StartupError, resolve_secrets
from turnd.config import Config, ConfigError, load_config
from turnd.core.actions import FiveTuple
from turnd.core.handoff import movable
from turnd.logs import event
from turnd.service import TurnService
from turnd.state import StateError
from turnd.workers.handoff import Handoff
from turnd.workers.pins import (
    ALLOCATE_REQUEST,
    WorkerEntry,
    flow_fields,
    flow_of,
    reservation_prefix,
)
from turnd.workers.rpc import Channel
from turnd.workers.worker_ops import WorkerOps

#: The environment variable that carries a worker's boot settings.
BOOT_ENV = "TURND_WORKER_BOOT"


def relay_slice(port_min: int, port_max: int, slot: int, count: int) -> tuple[int, int]:
    """Worker ``slot``'s share of the relay ports: even contiguous slices, the last one taking
    the remainder. ValueError when the range is too small for ``count`` workers."""
    size = (port_max - port_min + 1) // count
    if size < 1:
        raise ValueError(
            f"relay ports {port_min}-{port_max} are too few for {count} workers: widen "
            "relay.port_min..relay.port_max or lower server.workers"
        )
    low = port_min + slot * size
    high = port_max if slot == count - 1 else low + size - 1
    return low, high


def worker_config(config: Config, slot: int, count: int) -> Config:
    """What worker ``slot`` of ``count`` runs: its relay slice, and no side server of its own
    but the credential endpoint on slot 0 (the supervisor serves metrics and turnctl)."""
    low, high = relay_slice(config.relay.port_min, config.relay.port_max, slot, count)
    relay = attrs.evolve(config.relay, port_min=low, port_max=high)
    control = attrs.evolve(config.control, socket="", listen=None, token=None)
    metrics = attrs.evolve(config.metrics, listen=None)
    api = config.api if slot == 0 else attrs.evolve(config.api, listen=None)
    server = attrs.evolve(config.server, workers=1)
    return attrs.evolve(
        config, relay=relay, control=control, metrics=metrics, api=api, server=server
    )


class Worker:
    """The running worker: its service and its channel to the supervisor."""

    def __init__(self, boot: dict[str, Any], channel_fd: int) -> None:
        self.slot: int = boot["slot"]
        self.count: int = boot["count"]
        path, overrides = boot["config_path"], boot["overrides"]

        def fresh_config() -> Config:
            loaded = resolve_secrets(load_config(path, os.environ, overrides))[0]
            return worker_config(loaded, self.slot, self.count)

        self.fresh_config = fresh_config
        config = fresh_config()
        inherited = {
            (transport, host, port): socket.socket(fileno=fd)
            for transport, host, port, fd in boot["listeners"]
        }
        self._fds = _socket_or_none(boot.get("fds"))
        self._receiving = _socket_or_none(boot.get("receive"))
        self.service = TurnService(
            config,
            config_source=fresh_config,
            inherited=inherited,
            hold_udp=self._receiving is not None,
        )
        self.stopped = asyncio.Event()
        #: An upgrade gave its UDP allocations to a successor (it serves what is left).
        self.handed_over = False
        self.channel = Channel(
            socket.socket(fileno=channel_fd), self.handle, self.notice, name="supervisor"
        )
        core = self.service.core
        core.settings = attrs.evolve(
            core.settings, reservation_prefix=reservation_prefix(self.slot)
        )
        self.entry = WorkerEntry(core, self.slot, self.count, self._forward)
        self.service.packets.entry = self.entry
        core.quotas.on_change = self._quota_changed
        self.service.credentials.on_revoke = self._revoked
        self.ops = WorkerOps(self.service, self._handed_over, self.entry)

    def _forward(self, slot: int, flow: FiveTuple, data: bytes, sent: int) -> bool:
        """Datagram number ``sent`` of a flow pinned to ``slot``: to that worker, through the
        supervisor."""
        client, server = flow_fields(flow)
        args = {"slot": slot, "client": client, "server": server, "sent": sent}
        return self.channel.notify("forward", {**args, "data": b64encode(data).decode()})

    def _forwarded(self, args: dict[str, Any]) -> None:
        """A datagram another worker received of a flow whose allocation is here (or was): it
        is served as if it had come here, and answered from this worker's listener socket. A
        datagram other than an Allocate that finds no allocation of its flow here ends the pin
        (the allocation ended, or this worker restarted)."""
        flow, data = flow_of(args["client"], args["server"]), b64decode(args["data"])
        # Through the core itself, not this worker's entry: a forwarded datagram is never
        # pinned or forwarded again (two workers would pass it back and forth for ever). The
        # call is synchronous, so no other datagram sees the entry swapped.
        packets = self.service.packets
        packets.entry = self.service.core
        try:
            packets.client_message(flow, data)
        finally:
            packets.entry = self.entry
        if flow not in self.service.core.allocations and data[:2] != ALLOCATE_REQUEST:
            fields = {key: args[key] for key in ("client", "server", "sent")}
            self.channel.notify("unpin", {"slot": args["from"], **fields})

    def _quota_changed(self, username: str, host: str, delta: int) -> None:
        self.channel.notify("quota", {"username": username, "host": host, "delta": delta})

    def _revoked(self, username: str) -> None:
        self.channel.notify("revoked", {"username": username})

    def notice(self, op: str, args: dict[str, Any]) -> None:
        """A notice from the supervisor: another worker's allocation counts, a datagram of a
        flow pinned here, a pin to give up."""
        quotas = self.service.core.quotas
        if op == "elsewhere":
            quotas.count_elsewhere(str(args["username"]), str(args["host"]), int(args["delta"]))
        elif op == "elsewhere_all":
            quotas.elsewhere_user.clear()
            quotas.elsewhere_ip.clear()
            quotas.elsewhere_user.update(args["users"])
            quotas.elsewhere_ip.update(args["hosts"])
            quotas.elsewhere_total = int(args["total"])
        elif op == "forwarded":
            self._forwarded(args)
        elif op == "add_stats":  # the last counts of the worker this one replaced
            counts = {str(key): int(value) for key, value in args["stats"].items()}
            self.service.core.stats.update(counts)
        elif op == "forward_dropped":  # the worker it was for is down
            self.service.core.stats["drop.worker_unavailable"] += 1
        elif op == "unpin":
            self.entry.unpin(flow_of(args["client"], args["server"]), int(args["sent"]))
        elif op == "stop":
            self.stopped.set()

    def handle(self, op: str, args: dict[str, Any]) -> Any:
        """A request from the supervisor (turnctl and the metrics, fanned out)."""
        return self.ops.handle(op, args)

    def _handed_over(self) -> None:
        """Its UDP allocations are the successor's now: serve what is left, then stop."""
        self.handed_over = True
        asyncio.get_running_loop().create_task(self._linger())

    async def _linger(self) -> None:
        service = self.service
        service.listeners.close()  # its successor accepts the new connections
        deadline = time.monotonic() + service.config.server.upgrade_linger
        # What could not move: TCP/TLS connections and their allocations (a UDP one made here
        # after the hand-off began has no listener left, and its client asks the successor).
        while sum(service.stream_counts().values()) or any(
            not movable(alloc) for alloc in service.core.allocations.values()
        ):
            if time.monotonic() >= deadline:
                event(
                    logging.INFO,
                    "handoff.linger_over",
                    allocations=len(service.core.allocations),
                    connections=sum(service.stream_counts().values()),
                )
                break
            await asyncio.sleep(1.0)
        self.stopped.set()

    async def run(self) -> None:
        self.ops.handoff = Handoff(self.service, self._fds, self._receiving)
        await self.channel.open()
        reader = asyncio.get_running_loop().create_task(self.channel.run())
        reader.add_done_callback(lambda _: self.stopped.set())
        try:
            await self.service.start()
        except BaseException:
            await self.service.stop()
            raise
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stopped.set)
        for ignored in (signal.SIGINT, signal.SIGHUP):  # the supervisor's to act on
            loop.add_signal_handler(ignored, lambda: None)
        quotas = self.service.core.quotas
        self.channel.notify(
            "ready",
            {
                "pid": os.getpid(),
                "users": dict(quotas.per_user),
                "hosts": dict(quotas.per_ip),
            },
        )
        await self.stopped.wait()
        await self.service.stop()
        self.ops.handoff.close()
        if self.handed_over:  # what it counted since, for the slot's worker to count on
            stats = dict(self.service.core.stats)
            self.channel.notify("final_stats", {"pid": os.getpid(), "stats": stats})
        self.channel.close()


def _socket_or_none(fd: int | None) -> socket.socket | None:
    return socket.socket(fileno=fd) if fd is not None else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="turnd-worker", description=__doc__)
    parser.add_argument("--channel", type=int, required=True, help="fd of the supervisor channel")
    options = parser.parse_args(argv)
    boot = json.loads(os.environ.pop(BOOT_ENV))
    logs.setup(boot["log_level"], boot["log_format"])
    logs.set_context(worker=boot["slot"])
    try:
        from turnd.cli import event_loop_factory

        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(Worker(boot, options.channel).run())
    except (StartupError, ConfigError, StateError) as exc:
        event(logging.ERROR, "worker.failed", str(exc), slot=boot["slot"])
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
