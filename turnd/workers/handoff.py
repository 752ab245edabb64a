"""An upgrade in place, as the two workers of one slot see it: the running one gives its live
allocations and their sockets to its successor, started from the installed code.

Theory of operation. The supervisor (:meth:`turnd.workers.supervisor.Supervisor.upgrade`)
starts the successor on the slot's listeners with a Unix SOCK_SEQPACKET socket to receive
sockets on, and sends the other end of it to the running worker over that worker's fd channel.
Then:

1. ``handoff_export`` (the running worker, :meth:`Handoff.export`): it stops reading its UDP
   listeners and the relay sockets of the allocations that can move, and stops its timer
   (:meth:`turnd.packet_path.PacketPath.pause`); what arrives meanwhile waits in the kernel's
   socket queues, which the successor reads next. Its allocations become records
   (:mod:`turnd.core.handoff`) and their relay sockets go to the successor with SCM_RIGHTS,
   :data:`MAX_FDS` a message, each message naming its sockets' relay addresses.
2. ``handoff_import`` (the successor, :meth:`Handoff.take`): it waits for the last socket,
   imports the records into its core, and reads the relay sockets and its UDP listeners.
3. ``handoff_commit`` (the running worker, :meth:`Handoff.commit`): it forgets the allocations
   that moved (no usage line: the successor writes it when they end) and closes its copies; it
   goes on serving its TCP and TLS connections, whose state cannot leave the process, until they
   end or the linger runs out. Or ``handoff_abort`` (:meth:`Handoff.abort`), after the
   supervisor has killed the successor: it reads its sockets again, as if nothing happened.

The hand-off window is the time from step 1 to the end of step 2: the slot's UDP packets wait
(up to the socket buffers) and none is lost.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from typing import TYPE_CHECKING, Any

from stun.addresses import Address
from turnd.core import handoff as records_of
from turnd.logs import event

if TYPE_CHECKING:
    from turnd.packet_path import Paused
    from turnd.service import TurnService

#: Sockets sent in one message (the kernel's SCM_MAX_FD is 253).
MAX_FDS = 250
#: The largest header of one message: MAX_FDS relay addresses, as JSON.
MAX_HEADER = 64 * 1024
#: Seconds a successor waits for the last socket of a hand-off.
RECEIVE_TIMEOUT = 30.0


def send_sockets(channel: socket.socket, sockets: dict[str, socket.socket]) -> int:
    """Send ``sockets`` (by name) over the SEQPACKET ``channel``, blocking; the last message
    says so, and there is one even when there is nothing to send. How many messages."""
    items = list(sockets.items())
    batches = [items[at : at + MAX_FDS] for at in range(0, len(items), MAX_FDS)] or [[]]
    for number, batch in enumerate(batches, 1):
        header = {"names": [name for name, _ in batch], "last": number == len(batches)}
        socket.send_fds(channel, [json.dumps(header).encode()], [s.fileno() for _, s in batch])
    return len(batches)


def receive_one(channel: socket.socket, timeout: float) -> socket.socket:
    """The latest socket sent over ``channel`` (the supervisor's fd channel); OSError if none.
    Any sent before it belong to hand-offs called off before they began: they are closed."""
    channel.settimeout(timeout)
    latest: socket.socket | None = None
    try:
        while True:
            try:
                data, fds, flags, _ = socket.recv_fds(channel, 64, 1)
            except (BlockingIOError, TimeoutError):
                break
            if not data and not fds:  # the supervisor's end is closed
                break
            received = [socket.socket(fileno=fd) for fd in fds]
            if len(received) != 1 or flags & socket.MSG_CTRUNC:
                for sock in received:
                    sock.close()
                continue
            if latest is not None:
                latest.close()
            latest = received[0]
            channel.setblocking(False)
    finally:
        channel.setblocking(False)
    if latest is None:
        raise OSError("the supervisor sent no hand-off socket")
    return latest


class SocketReceiver:
    """Reads what :func:`send_sockets` sends, from the event loop, into :attr:`sockets`."""

    def __init__(self, channel: socket.socket) -> None:
        self._channel = channel
        channel.setblocking(False)
        self.sockets: dict[str, socket.socket] = {}
        self.error: str | None = None
        self._done = asyncio.Event()
        asyncio.get_running_loop().add_reader(channel.fileno(), self._read)

    def _read(self) -> None:
        try:
            data, fds, flags, _ = socket.recv_fds(self._channel, MAX_HEADER, MAX_FDS)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._finish(f"the hand-off socket failed: {exc}")
            return
        received = [socket.socket(fileno=fd) for fd in fds]
        try:
            header: Any = json.loads(data) if data else {}
        except ValueError:
            header = {}
        names = header.get("names") if isinstance(header, dict) else None
        if not isinstance(names, list) or len(names) != len(received) or flags & socket.MSG_CTRUNC:
            for sock in received:
                sock.close()
            why = "closed before its last socket" if not data else "sent a damaged message"
            self._finish(f"the worker handing over {why}")
            return
        self.sockets.update(zip(map(str, names), received, strict=True))
        if header.get("last"):
            self._finish(None)

    def _finish(self, error: str | None) -> None:
        self.error = error
        self._done.set()
        asyncio.get_running_loop().remove_reader(self._channel.fileno())
        self._channel.close()

    async def wait(self, timeout: float) -> dict[str, socket.socket]:
        """Every socket sent; ValueError when the sender failed or did not finish in time."""
        try:
            await asyncio.wait_for(self._done.wait(), timeout)
        except TimeoutError:
            self._finish(f"no last socket within {timeout:.0f} s")
        if self.error is not None:
            self.close_unclaimed()
            raise ValueError(self.error)
        return self.sockets

    def close_unclaimed(self) -> None:
        for sock in self.sockets.values():
            sock.close()
        self.sockets.clear()

    def close(self) -> None:
        """Stop reading and close the channel and every socket received."""
        if not self._done.is_set():
            self._finish("the worker stopped")
        self.close_unclaimed()


class Handoff:
    """One worker's side of a hand-off: giving (the running worker) or taking (its successor).

    ``fds`` is the worker's fd channel from the supervisor; ``receiving`` the socket a successor
    receives the relay sockets on (None for a worker started otherwise)."""

    def __init__(
        self, service: TurnService, fds: socket.socket | None, receiving: socket.socket | None
    ) -> None:
        self.service = service
        self._fds = fds
        self._receiver = SocketReceiver(receiving) if receiving is not None else None
        self._records: list[dict[str, Any]] = []
        #: The counters as they were exported (the successor took them over at its import).
        self._stats: dict[str, int] = {}
        self._paused: Paused | None = None
        self.started: float | None = None

    # --- giving ------------------------------------------------------------------------------

    def export(self) -> dict[str, Any]:
        """Stop reading what can move, send its sockets, answer its records."""
        if self._fds is None:
            raise ValueError("this worker has no fd channel: it cannot hand over")
        if self._paused is not None:
            raise ValueError("a hand-off is under way already")
        channel = receive_one(self._fds, 5.0)
        try:
            self.started = time.time()
            core = self.service.core
            records = core.export_allocations(self.started)
            self._paused = self.service.packets.pause(records_of.relay_addresses(records))
            self._records = records
            channel.setblocking(True)
            messages = send_sockets(
                channel, {str(relay): sock for relay, sock in self._paused.relays.items()}
            )
        finally:
            channel.close()
        core.stats["handoff.sent_sockets"] += len(self._paused.relays)
        event(
            logging.INFO,
            "handoff.exported",
            allocations=len(records),
            sockets=len(self._paused.relays),
            messages=messages,
        )
        self._stats = dict(core.stats)
        return {"records": records, "stats": self._stats}

    def commit(self) -> dict[str, Any]:
        """The successor has them: forget the allocations that moved, close this copy."""
        if self._paused is None:
            raise ValueError("no hand-off is under way")
        core = self.service.core
        moved = core.forget_exported(records_of.five_tuples(self._records))
        for key, value in self._stats.items():  # the successor counts on from these
            core.stats[key] -= value
            if core.stats[key] <= 0:
                del core.stats[key]
        self._stats = {}
        self._paused.close()
        self._paused = None
        self._records = []
        self.service.packets.release_timer()
        left = len(self.service.core.allocations)
        event(logging.INFO, "handoff.committed", moved=len(moved), left=left)
        return {"moved": len(moved), "left": left}

    async def abort(self) -> None:
        """The successor failed (and is gone): serve on as before."""
        if self._paused is None:
            return
        paused, self._paused = self._paused, None
        records, self._records = self._records, []
        self._stats = {}
        await self.service.packets.resume(paused)
        routes = self.service.core.resume_exported(records_of.five_tuples(records), time.time())
        self.service.packets.release_timer()
        event(
            logging.WARNING,
            "handoff.aborted",
            "serving on: the successor took nothing",
            allocations=len(records),
            kernel_routes=routes,
        )

    def close(self) -> None:
        """The worker is stopping: close its fd channel and any receiver not yet used."""
        if self._fds is not None:
            self._fds.close()
            self._fds = None
        if self._receiver is not None:
            self._receiver.close()
            self._receiver = None

    # --- taking ------------------------------------------------------------------------------

    async def take(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """Take over ``records`` and their sockets; then read the UDP listeners. ValueError,
        with nothing taken, when the sockets or the records are not all there."""
        if self._receiver is None:
            raise ValueError("this worker was not started to take over allocations")
        receiver, self._receiver = self._receiver, None
        sockets = await receiver.wait(RECEIVE_TIMEOUT)
        wanted = records_of.relay_addresses(records)
        missing = [str(relay) for relay in wanted if str(relay) not in sockets]
        if missing:
            receiver.close_unclaimed()
            raise ValueError(f"no socket came for relays {', '.join(missing[:5])}")
        service = self.service
        try:
            imported = service.core.import_allocations(records, time.time())
        except (ValueError, KeyError, TypeError) as exc:
            receiver.close_unclaimed()
            raise ValueError(f"the records cannot be imported: {exc}") from exc
        relays: dict[Address, socket.socket] = {r: sockets.pop(str(r)) for r in wanted}
        receiver.close_unclaimed()  # any the records did not name
        await service.packets.serve_together(dict(service.listeners.take_held()), relays)
        service.packets.release_timer()
        service.core.stats["handoff.received_sockets"] += len(relays)
        event(logging.INFO, "handoff.imported", allocations=len(imported), sockets=len(relays))
        return {"imported": len(imported)}
