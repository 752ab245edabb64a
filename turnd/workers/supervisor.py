"""The supervisor: the main process of a node that runs ``[server] workers`` worker processes.

It binds every client listener once per worker with SO_REUSEPORT, in slot order, and puts the
reuseport selector (:mod:`turnd.workers.selector`) on each UDP group, so that a client flow
always reaches the same slot; it keeps all those sockets open for its whole life, whatever
happens to the workers. Each worker (:mod:`turnd.workers.worker`) gets its slot's sockets, its
slice of the relay ports and one channel (:mod:`turnd.workers.rpc`) back here.

What must be one node across the workers goes through here: turnctl's control API and the
Prometheus scrape (:class:`turnd.workers.views.FanOutOps` over :meth:`Supervisor.call`), the
allocation quotas (every worker tells its counts, and hears the others'), and revocations (made
on one worker, applied on all). A worker that exits is started again on the same slot, after a
pause that grows while it keeps failing; only its own allocations are lost, and the clients of
its slot wait in its sockets' queues meanwhile.

An upgrade in place (:meth:`Supervisor.upgrade`: turnctl upgrade, SIGUSR2) replaces the workers
one slot at a time by workers started from the installed code, each taking over its
predecessor's UDP allocations and relay sockets (:mod:`turnd.workers.handoff`); a predecessor
goes on serving its TCP and TLS connections until they end or ``server.upgrade_linger`` runs
out. The supervisor itself runs on as it is: a change to it takes a restart.

Signals: SIGTERM and SIGINT stop every worker and then the supervisor; SIGHUP reloads every
worker; SIGUSR2 upgrades them. systemd sees the supervisor as the main PID: READY=1 once every
worker serves.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import attrs

from turnd import logs, systemd
from turnd.assembly import StartupError, resolve_secrets
from turnd.config import Config
from turnd.config import Transport as ListenerTransport
from turnd.listeners import bind_datagram, bind_failure_reason, bind_stream
from turnd.logs import event
from turnd.packet_path import buffer_sizes, check_buffers
from turnd.workers import selector
from turnd.workers.rpc import Channel, ChannelClosed, RemoteError
from turnd.workers.views import WorkerInfo, WorkerUnavailable, raise_remote
from turnd.workers.worker import BOOT_ENV, relay_slice

if TYPE_CHECKING:
    from aiohttp import web

#: Seconds a worker has to serve after it is started before it counts as failed.
READY_TIMEOUT = 60.0
#: The pause before a worker that exited is started again, doubled while it keeps exiting
#: within :data:`STABLE_AFTER` seconds of its start, up to :data:`MAX_RESTART_DELAY`.
RESTART_DELAY = 0.5
MAX_RESTART_DELAY = 30.0
STABLE_AFTER = 60.0
#: Seconds a stopping worker has to end before it is killed.
STOP_TIMEOUT = 20.0
#: Seconds each step of a hand-off (export, import) may take before the upgrade is called off.
HANDOFF_TIMEOUT = 60.0


class UpgradeFailed(ValueError):
    """An upgrade in place stopped at one slot; the slots before it run the new code, that
    one and the rest the old (a 409 with this message)."""


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def worker_count(config: Config) -> int:
    """How many workers ``[server] workers`` asks for: 0 is one per usable core."""
    return config.server.workers or usable_cores()


def check_workers(config: Config, count: int) -> None:
    """StartupError when ``config`` cannot run as ``count`` workers, saying what to change."""
    if count > 1 and config.cluster.enabled:
        raise StartupError(
            "server.workers > 1 does not run in a cluster yet: set server.workers = 1 on "
            "cluster nodes (each node is one process on the backbone)"
        )
    try:
        relay_slice(config.relay.port_min, config.relay.port_max, 0, count)
    except ValueError as exc:
        raise StartupError(str(exc)) from exc


@attrs.define(eq=False)
class Slot:
    """One worker's place: its sockets, and the process that serves them now."""

    index: int
    #: (transport, host, configured port, socket) of each listener this slot serves.
    listeners: list[tuple[str, str, int, socket.socket]] = attrs.field(factory=list)
    process: asyncio.subprocess.Process | None = None
    channel: Channel | None = None
    #: The supervisor's end of the worker's fd channel (SOCK_SEQPACKET): sockets go over it.
    fds: socket.socket | None = None
    up: bool = False
    restarts: int = 0
    started: float | None = None
    ready: asyncio.Event = attrs.field(factory=asyncio.Event)
    #: The worker's allocations by username and by client IP, as it last told (quotas).
    users: Counter[str] = attrs.field(factory=Counter)
    hosts: Counter[str] = attrs.field(factory=Counter)
    #: Notices for this worker held while its slot is handed over (:meth:`Supervisor._pass_on`).
    holding: list[tuple[str, dict[str, Any]]] | None = None

    def close_channels(self) -> None:
        """Its worker is gone (or going): close the channel and the fd channel to it."""
        self.up = False
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.fds is not None:
            self.fds.close()
            self.fds = None

    def info(self) -> WorkerInfo:
        pid = self.process.pid if self.process is not None else None
        return WorkerInfo(self.index, pid, self.up, self.restarts, self.started)


class Supervisor:
    """Starts, watches and stops the workers of one node; implements
    :class:`turnd.workers.views.WorkerCalls` for the control API and the metrics."""

    def __init__(
        self,
        config: Config,
        count: int,
        config_path: str | None,
        overrides: dict[str, object],
    ) -> None:
        check_workers(config, count)
        self.config = config
        self.count = count
        self._config_path = config_path
        self._overrides = {key: str(value) for key, value in overrides.items()}
        self.places = [Slot(index) for index in range(count)]
        #: Workers replaced by an upgrade, serving their last TCP/TLS connections.
        self.lingering: list[Slot] = []
        self._upgrading = asyncio.Lock()
        self.started = time.time()
        self.stopping = False
        #: The bound listeners: (transport, host, port) once each, for the status line.
        self.bound: list[tuple[str, str, int]] = []
        self._watchers: list[asyncio.Task[None]] = []
        self._side: list[web.AppRunner] = []
        self.metrics_port: int | None = None

    # --- sockets -----------------------------------------------------------------------------

    def bind(self) -> None:
        """Bind each listener once per slot (SO_REUSEPORT, in slot order) and put the selector
        on the UDP groups. A listener that cannot be bound is logged and left out; StartupError
        when none can be."""
        check_buffers(self.config)
        failures: list[str] = []
        for address in self.config.listen_addresses():
            host = str(address)
            for listener in self.config.server.listen:
                transport = listener.transport.value
                try:
                    group = self._bind_group(listener.transport, host, listener.port)
                except OSError as exc:
                    reason = bind_failure_reason(exc, listener.port)
                    failures.append(f"{transport} {host}:{listener.port}: {reason}")
                    event(
                        logging.WARNING,
                        "listener.failed",
                        transport=transport,
                        address=host,
                        port=listener.port,
                        reason=reason,
                    )
                    continue
                for slot, sock in zip(self.places, group, strict=True):
                    slot.listeners.append((transport, host, listener.port, sock))
                port = group[0].getsockname()[1]
                self.bound.append((transport, host, port))
                event(
                    logging.INFO, "listener.started", transport=transport, address=host, port=port
                )
        if not self.bound:
            raise StartupError("no listener could be started: " + "; ".join(failures))

    def _bind_group(self, kind: ListenerTransport, host: str, port: int) -> list[socket.socket]:
        """``count`` sockets sharing ``host``:``port`` (the first one's port when 0 is asked)."""
        group: list[socket.socket] = []
        try:
            for _ in range(self.count):
                if kind is ListenerTransport.UDP:
                    sock = bind_datagram(host, port, buffer_sizes(self.config), reuseport=True)
                else:
                    sock = bind_stream(host, port, reuseport=True)
                group.append(sock)
                port = sock.getsockname()[1]
            if kind is ListenerTransport.UDP:
                selector.attach(group[0], self.count)
        except OSError:
            for sock in group:
                sock.close()
            raise
        return group

    # --- workers -----------------------------------------------------------------------------

    async def _spawn(self, slot: Slot, receive: socket.socket | None = None) -> None:
        """Start the worker of ``slot`` on its sockets, with a fresh channel and fd channel;
        ``receive``: the socket it takes a predecessor's relay sockets from (an upgrade)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds_ours, fds_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        passed = [theirs, fds_theirs] + ([receive] if receive is not None else [])
        fds = [sock.fileno() for *_, sock in slot.listeners]
        boot = {
            "fds": fds_theirs.fileno(),
            "receive": receive.fileno() if receive is not None else None,
            "slot": slot.index,
            "count": self.count,
            "config_path": self._config_path,
            "overrides": self._overrides,
            "listeners": [[t, h, p, s.fileno()] for t, h, p, s in slot.listeners],
            "log_level": self.config.server.log_level.value,
            "log_format": self.config.server.log_format.value,
        }
        env = {key: value for key, value in os.environ.items() if key != systemd.NOTIFY_SOCKET}
        env[BOOT_ENV] = json.dumps(boot)
        try:
            slot.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "turnd.workers.worker",
                "--channel",
                str(theirs.fileno()),
                pass_fds=[*(sock.fileno() for sock in passed), *fds],
                env=env,
                start_new_session=True,  # Ctrl-C in a terminal is the supervisor's to act on
            )
        except BaseException:
            fds_ours.close()
            raise
        finally:
            theirs.close()
            fds_theirs.close()
        slot.fds = fds_ours
        slot.ready = asyncio.Event()
        slot.started = time.time()
        slot.users.clear()
        slot.hosts.clear()
        channel = Channel(
            ours,
            self._worker_request,
            lambda op, args: self._notice(slot, op, args),
            name=f"worker {slot.index}",
        )
        await channel.open()
        slot.channel = channel
        asyncio.get_running_loop().create_task(channel.run())
        # What the others hold, before anything the worker could count on its own: deltas
        # sent from here on follow it on the same stream.
        channel.notify("elsewhere_all", self._elsewhere(slot))
        event(logging.INFO, "worker.started", slot=slot.index, pid=slot.process.pid)

    def _worker_request(self, op: str, args: dict[str, Any]) -> Any:
        raise ValueError(f"the supervisor answers no worker requests ({op})")

    def _elsewhere(self, slot: Slot) -> dict[str, Any]:
        users: Counter[str] = Counter()
        hosts: Counter[str] = Counter()
        for other in [*self.places, *self.lingering]:
            if other is not slot:
                users.update(other.users)
                hosts.update(other.hosts)
        return {"users": dict(users), "hosts": dict(hosts), "total": sum(hosts.values())}

    def _notice(self, slot: Slot, op: str, args: dict[str, Any]) -> None:
        """A notice from the worker of ``slot``."""
        if op == "ready":
            slot.up = True
            slot.users = Counter(args.get("users", {}))
            slot.hosts = Counter(args.get("hosts", {}))
            slot.ready.set()
            self._share_counts(slot)
        elif op == "quota":
            username, host, delta = str(args["username"]), str(args["host"]), int(args["delta"])
            for counter, key in ((slot.users, username), (slot.hosts, host)):
                counter[key] += delta
                if counter[key] <= 0:
                    del counter[key]
            for other in self._others(slot):
                assert other.channel is not None
                other.channel.notify("elsewhere", args)
        elif op == "forward":  # a datagram of a flow whose allocation another worker holds
            self._pass_on(slot, "forwarded", args)
        elif op == "unpin":
            self._pass_on(slot, "unpin", args)
        elif op == "final_stats":  # a replaced worker's last counts, to its slot's worker
            if not self._pass_on(slot, "add_stats", {**args, "slot": slot.index}):
                event(logging.WARNING, "upgrade.counts_lost", slot=slot.index, pid=args.get("pid"))
        elif op == "revoked":
            username = str(args["username"])
            for other in self._others(slot):
                asyncio.get_running_loop().create_task(self._revoke_on(other, username))
        else:
            event(logging.WARNING, "worker.unknown_notice", slot=slot.index, op=op)

    def _pass_on(self, sender: Slot, op: str, args: dict[str, Any]) -> bool:
        """Hand a notice of ``sender`` to the worker of the slot it names: at once, or after
        the slot's hand-off when it is being upgraded; dropped (and counted) when that worker
        is down."""
        index = args.get("slot")
        target = self.places[index] if isinstance(index, int) and 0 <= index < self.count else None
        message = {**args, "from": sender.index}
        if target is not None and target.holding is not None:
            target.holding.append((op, message))
            return True
        passed = target is not None and target.channel is not None
        if passed and target is not None and target.channel is not None:
            passed = target.channel.notify(op, message)
        if not passed and op == "forwarded" and sender.channel is not None:
            sender.channel.notify("forward_dropped")  # counted there, with its drops
        return passed

    def _release(self, held: Slot, to: Slot) -> None:
        """Pass on what was held for ``held`` during its hand-off, to ``to`` (its successor, or
        itself when the hand-off failed)."""
        notices, held.holding = held.holding or [], None
        for op, message in notices:
            if to.channel is None or not to.channel.notify(op, message):
                break

    def _others(self, slot: Slot | None) -> list[Slot]:
        every = [*self.places, *self.lingering]
        return [o for o in every if o is not slot and o.channel is not None]

    def _share_counts(self, changed: Slot | None) -> None:
        """Tell every worker but ``changed`` the node's counts anew (``changed`` came or went;
        None: tell every one)."""
        for other in self._others(changed):
            assert other.channel is not None
            other.channel.notify("elsewhere_all", self._elsewhere(other))

    async def _revoke_on(self, slot: Slot, username: str) -> None:
        """Apply a revocation made on another worker (persisted there already)."""
        try:
            await self.call(slot.index, "revoke", {"username": username, "persist": False})
        except (WorkerUnavailable, ValueError) as exc:
            # A worker that is down reads the revocation from the state file when it starts.
            event(logging.WARNING, "worker.revoke_missed", slot=slot.index, reason=str(exc))

    async def _watch(self, slot: Slot) -> None:
        """Wait for the worker of ``slot`` to exit, and start it again unless stopping."""
        delay = RESTART_DELAY
        while True:
            assert slot.process is not None
            status = await slot.process.wait()
            lived = time.time() - (slot.started or time.time())
            self._gone(slot)
            if self.stopping:
                return
            event(
                logging.ERROR,
                "worker.exited",
                f"worker {slot.index} exited with status {status}; its allocations are lost, "
                "starting it again",
                slot=slot.index,
                status=status,
                lived=round(lived, 3),
            )
            delay = RESTART_DELAY if lived >= STABLE_AFTER else delay
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RESTART_DELAY)
            if self.stopping:
                return
            slot.restarts += 1
            try:
                await self._spawn(slot)
            except OSError as exc:
                event(logging.ERROR, "worker.spawn_failed", slot=slot.index, reason=str(exc))
                continue

    def _gone(self, slot: Slot) -> None:
        """The worker of ``slot`` has exited: close its channels, forget its counts."""
        slot.close_channels()
        slot.users.clear()
        slot.hosts.clear()
        self._share_counts(slot)

    async def _until_ready(self, slot: Slot) -> None:
        """Wait until the worker just started on ``slot`` serves; StartupError when it exits
        first or takes over :data:`READY_TIMEOUT`."""
        assert slot.process is not None
        ready = asyncio.ensure_future(slot.ready.wait())
        exited = asyncio.ensure_future(slot.process.wait())
        try:
            await asyncio.wait(
                [ready, exited], timeout=READY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            ready.cancel()
            exited.cancel()
        if slot.ready.is_set():
            return
        if slot.process.returncode is not None:
            raise StartupError(
                f"worker {slot.index} exited with status {slot.process.returncode} before it "
                "served (its log lines above say why)"
            )
        raise StartupError(f"worker {slot.index} did not serve within {READY_TIMEOUT:.0f} s")

    async def start(self) -> None:
        """Bind, start every worker and wait until each serves (StartupError if one cannot)."""
        self.bind()
        try:
            for slot in self.places:
                await self._spawn(slot)
            await asyncio.gather(*(self._until_ready(slot) for slot in self.places))
        except BaseException:
            await self.stop()
            raise
        self._watchers = [
            asyncio.get_running_loop().create_task(self._watch(slot)) for slot in self.places
        ]
        await self._start_side()
        event(
            logging.INFO,
            "workers.ready",
            workers=self.count,
            pids=",".join(str(s.process.pid) for s in self.places if s.process is not None),
        )

    async def _start_side(self) -> None:
        """turnctl's control API and the metrics, for the whole node."""
        from turnd.control import make_app, start_control
        from turnd.workers.views import FanOutOps

        ops = FanOutOps(self, self.started)
        control = self.config.control
        limits = self._side_limits()
        if control.socket:
            try:
                self._side += await start_control(make_app(ops, None), control.socket, None, limits)
                event(logging.INFO, "control.started", socket=control.socket)
            except OSError as exc:
                event(logging.WARNING, "control.failed", socket=control.socket, reason=str(exc))
        if control.listen is not None and control.token is not None:
            listen = (control.listen.host, control.listen.port)
            try:
                self._side += await start_control(
                    make_app(ops, control.token.reveal()), None, listen, limits
                )
                event(logging.INFO, "control.started", address=control.listen.host)
            except OSError as exc:
                reason = bind_failure_reason(exc, control.listen.port)
                event(logging.WARNING, "control.failed", address=control.listen.host, reason=reason)
        if self.config.metrics.listen is not None:
            await self._start_metrics(ops)

    def _side_limits(self) -> Any:
        from turnd.side_http import SideLimits

        limits = self.config.limits
        return SideLimits(limits.side_max_connections, float(limits.side_header_timeout))

    async def _start_metrics(self, ops: Any) -> None:
        from aiohttp import web
        from prometheus_client import CONTENT_TYPE_LATEST

        from turnd import side_http

        endpoint = self.config.metrics.listen
        assert endpoint is not None

        async def metrics(_: web.Request) -> web.Response:
            body = await ops.metrics()
            return web.Response(text=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        limits = self._side_limits()
        runner = side_http.runner(app, limits, access_log=None)
        await runner.setup()
        site = side_http.TCPSite(
            runner, endpoint.host, endpoint.port, name="metrics", limits=limits
        )
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            reason = bind_failure_reason(exc, endpoint.port)
            event(logging.WARNING, "listener.failed", transport="metrics", reason=reason)
            return
        self._side.append(runner)
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.metrics_port = sockets[0].getsockname()[1] if sockets else endpoint.port
        event(logging.INFO, "metrics.started", address=endpoint.host, port=self.metrics_port)

    async def stop(self) -> None:
        """Stop every worker (SIGTERM, then SIGKILL past :data:`STOP_TIMEOUT`), then the side
        servers, then close the listeners."""
        self.stopping = True
        for watcher in self._watchers:
            watcher.cancel()
        every = [*self.places, *self.lingering]
        running = [s.process for s in every if s.process is not None]
        for process in running:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        for process in running:
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
            except TimeoutError:
                event(logging.ERROR, "worker.killed", pid=process.pid, timeout=STOP_TIMEOUT)
                process.kill()
                await process.wait()
        for slot in every:
            slot.close_channels()
        from turnd.control import stop_control

        await stop_control(self._side)
        self._side = []
        for slot in self.places:
            for *_, sock in slot.listeners:
                sock.close()
            slot.listeners.clear()

    # --- WorkerCalls -------------------------------------------------------------------------

    def slots(self) -> list[WorkerInfo]:
        """Each worker's slot, PID, state and restart count."""
        return [slot.info() for slot in self.places]

    async def call(self, slot: int, op: str, args: dict[str, Any]) -> Any:
        """Ask worker ``slot``: its answer; WorkerUnavailable when it is down or does not
        answer in time; the error it raised otherwise (:func:`raise_remote`)."""
        place = self.places[slot]
        channel = place.channel
        if channel is None or not place.up:
            raise WorkerUnavailable(slot, "restarting" if not self.stopping else "stopping")
        try:
            return await channel.call(op, args)
        except (ChannelClosed, TimeoutError) as exc:
            raise WorkerUnavailable(slot, f"no answer ({exc or type(exc).__name__})") from exc
        except RemoteError as exc:
            raise_remote(slot, str(exc))

    def old_workers(self) -> list[WorkerInfo]:
        """The workers an upgrade replaced that still serve their last TCP/TLS connections."""
        return [slot.info() for slot in self.lingering if slot.channel is not None]

    async def call_old(self, pid: int, op: str, args: dict[str, Any]) -> Any:
        """Ask the replaced worker of ``pid``, as :meth:`call` asks a slot's."""
        slot = next((s for s in self.lingering if s.process and s.process.pid == pid), None)
        if slot is None or slot.channel is None:
            raise WorkerUnavailable(-1, f"the old worker {pid} is gone")
        try:
            return await slot.channel.call(op, args)
        except (ChannelClosed, TimeoutError) as exc:
            raise WorkerUnavailable(slot.index, f"no answer ({exc or type(exc).__name__})") from exc
        except RemoteError as exc:
            raise_remote(slot.index, str(exc))

    # --- upgrading in place ------------------------------------------------------------------

    async def upgrade(self) -> dict[str, Any]:
        """Replace every worker, one slot at a time, by one started from the installed code
        that takes over its UDP allocations (:mod:`turnd.workers.handoff`). For each slot: the
        PIDs, the allocations moved, the hand-off window, what the old worker serves on.
        UpgradeFailed (409) when a slot cannot be upgraded: it and the ones after it run on
        as they were."""
        if self._upgrading.locked():
            raise ValueError("an upgrade is under way already")
        async with self._upgrading:
            self._check_config()
            done: list[dict[str, Any]] = []
            for index in range(self.count):
                try:
                    done.append(await self._upgrade_slot(index))
                except (StartupError, ValueError, OSError, RuntimeError) as exc:
                    upgraded = ", ".join(str(d["slot"]) for d in done) or "none"
                    event(logging.ERROR, "upgrade.failed", str(exc), slot=index)
                    raise UpgradeFailed(
                        f"worker {index}: {exc}; upgraded: {upgraded} (the others run the old "
                        "code: fix the cause and upgrade again)"
                    ) from exc
            event(
                logging.INFO,
                "upgrade.done",
                workers=self.count,
                moved=sum(d["moved"] for d in done),
                window_ms=max(d["window_ms"] for d in done),
            )
            return {"workers": done}

    def _check_config(self) -> None:
        """Load the configuration as a new worker will, before any is started: a broken file
        fails the upgrade with its own message, and no worker is touched."""
        from turnd.config import ConfigError, load_config
        from turnd.state import StateError
        from turnd.tls import TlsError, check_configured

        try:
            config = load_config(self._config_path, os.environ, self._overrides)
            resolve_secrets(config)
            check_configured(config)
        except (ConfigError, StateError, TlsError) as exc:
            event(logging.ERROR, "upgrade.failed", str(exc), slot=None)
            raise UpgradeFailed(
                f"the configuration cannot be loaded: {exc}; no worker was upgraded (all run "
                "as they were: fix it, check it with `turnd check-config`, upgrade again)"
            ) from exc

    async def _upgrade_slot(self, index: int) -> dict[str, Any]:
        old = self.places[index]
        if not old.up or old.channel is None or old.fds is None or old.process is None:
            raise ValueError("it is restarting: upgrade again once it serves")
        give, take = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        new = Slot(index, listeners=old.listeners, restarts=old.restarts)
        try:
            try:
                await self._spawn(new, receive=take)
            finally:
                take.close()
            await self._until_ready(new)
            socket.send_fds(old.fds, [b"handoff"], [give.fileno()])
        except BaseException:
            await self._discard(new)
            raise
        finally:
            give.close()
        assert new.channel is not None and new.process is not None
        began = time.monotonic()
        old.holding = []
        try:
            exported = await old.channel.call("handoff_export", {}, timeout=HANDOFF_TIMEOUT)
            taken = await new.channel.call(
                "handoff_import",
                {
                    "records": exported["records"],
                    "pins": exported.get("pins", []),
                    "stats": exported.get("stats", {}),
                },
                timeout=HANDOFF_TIMEOUT,
            )
        except (RemoteError, ChannelClosed, TimeoutError) as exc:
            await self._discard(new)
            await self._resume(old)
            self._release(old, old)
            raise RuntimeError(f"the hand-off failed: {exc}") from exc
        except BaseException:  # cancelled (the supervisor stops): hold nothing back
            self._release(old, old)
            raise
        window = time.monotonic() - began
        # The successor serves the slot; the old worker serves what could not move, then goes.
        self._watchers[index].cancel()
        self.places[index] = new
        self._release(old, new)
        self.lingering.append(old)
        old.up = False
        self._watchers[index] = asyncio.get_running_loop().create_task(self._watch(new))
        try:
            left = await old.channel.call("handoff_commit", {}, timeout=HANDOFF_TIMEOUT)
        except (RemoteError, ChannelClosed, TimeoutError) as exc:
            event(logging.WARNING, "upgrade.commit_failed", slot=index, reason=str(exc))
            left = {"left": None}
        asyncio.get_running_loop().create_task(self._retire(old))
        self._share_counts(None)
        result = {
            "slot": index,
            "old_pid": old.process.pid,
            "pid": new.process.pid,
            "moved": int(taken["imported"]),
            "window_ms": round(window * 1000, 1),
            "lingering": left.get("left"),
        }
        event(logging.INFO, "upgrade.slot", **result)
        return result

    async def _discard(self, slot: Slot) -> None:
        """Kill a successor that will not take over (it has read none of the slot's UDP
        sockets yet)."""
        process = slot.process
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()
        self._gone(slot)

    async def _resume(self, slot: Slot) -> None:
        """Have the worker of ``slot`` read its sockets again after a failed hand-off; one that
        cannot is killed, and restarted by its watcher (its allocations are lost)."""
        assert slot.channel is not None
        try:
            await slot.channel.call("handoff_abort", {}, timeout=HANDOFF_TIMEOUT)
        except (RemoteError, ChannelClosed, TimeoutError) as exc:
            event(logging.ERROR, "upgrade.resume_failed", slot=slot.index, reason=str(exc))
            if slot.process is not None and slot.process.returncode is None:
                slot.process.kill()

    async def _retire(self, slot: Slot) -> None:
        """Wait for a replaced worker to exit (it does once its connections are gone), killing
        it past the linger."""
        assert slot.process is not None
        linger = self.config.server.upgrade_linger + STOP_TIMEOUT
        try:
            await asyncio.wait_for(slot.process.wait(), linger)
        except TimeoutError:
            event(logging.ERROR, "worker.killed", pid=slot.process.pid, timeout=linger)
            slot.process.kill()
            await slot.process.wait()
        if slot in self.lingering:
            self.lingering.remove(slot)
        self._gone(slot)
        event(logging.INFO, "upgrade.retired", slot=slot.index, pid=slot.process.pid)

    # --- running -----------------------------------------------------------------------------

    def status_line(self) -> str:
        listeners = ", ".join(f"{t} {p}" for t, _, p in self.bound)
        up = sum(slot.up for slot in self.places)
        return f"serving {listeners}; {up} of {self.count} workers up"

    async def reload(self) -> str | None:
        """Reload every worker: None when all took it, else what went wrong."""
        from turnd.workers.views import FanOutOps

        result = await FanOutOps(self, self.started).reload()
        failures = result.get("failed") or {}
        return "; ".join(f"worker {k}: {v}" for k, v in failures.items()) or None

    async def serve(self) -> None:
        """Run until SIGTERM or SIGINT; SIGHUP reloads every worker, SIGUSR2 upgrades them."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        reloads: set[asyncio.Task[None]] = set()

        async def reload() -> None:
            systemd.reloading("reloading configuration")
            error: str | None = "internal error: see the log"
            try:
                error = await self.reload()
            finally:
                systemd.ready(f"reload refused: {error}" if error else self.status_line())

        async def upgrade() -> None:
            systemd.reloading("upgrading the workers in place")
            try:
                await self.upgrade()
            except ValueError as exc:  # logged as upgrade.failed
                event(logging.ERROR, "upgrade.refused", str(exc))
            finally:
                systemd.ready(self.status_line())

        def run(job: Any) -> None:
            task = loop.create_task(job())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, run, reload)
        loop.add_signal_handler(signal.SIGUSR2, run, upgrade)
        systemd.ready(self.status_line())
        try:
            await stop.wait()
        finally:
            systemd.stopping("shutting down")
            await self.stop()
            event(logging.INFO, "workers.stopped", workers=self.count)


async def supervise(config: Config, path: str | None, overrides: dict[str, object]) -> None:
    """Run the node as ``[server] workers`` workers until stopped."""
    count = worker_count(config)
    supervisor = Supervisor(config, count, path, overrides)
    logs.set_context(worker="supervisor")
    await supervisor.start()
    await supervisor.serve()
