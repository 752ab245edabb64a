"""A worker's answers to its supervisor: the control operations of its own service, the ones the
fan-out (:class:`turnd.workers.views.FanOutOps`) needs besides, and its metrics.

Every request names an operation of :data:`OPERATIONS` and carries its arguments by name; what
it answers is JSON-ready. A ValueError (of whatever subclass) goes back as ``ValueError`` and
a MintRefused as itself, so the supervisor refuses them as a single process would
(:func:`turnd.workers.views.raise_remote`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prometheus_client.exposition import generate_latest

from auth.credentials import MintRefused
from turnd.metrics import registry_for
from turnd.operations import Operations

if TYPE_CHECKING:
    from turnd.service import TurnService
    from turnd.workers.handoff import Handoff
    from turnd.workers.pins import WorkerEntry

#: Each operation and the names of its arguments, in the order its method takes them.
OPERATIONS: dict[str, tuple[str, ...]] = {
    "status": (),
    "allocations": ("user", "client", "transport"),
    "allocation": ("allocation_id",),
    "kill": ("allocation_id",),
    "users": (),
    "add_user": ("name", "password"),
    "remove_user": ("name",),
    "secrets": (),
    "add_secret": ("value",),
    "retire_secret": ("secret_id",),
    "keys": (),
    "add_key": ("key_id", "token"),
    "remove_key": ("key_id",),
    "reload": (),
    "drain": ("on",),
    "revoke": ("username", "persist"),
    "mint": ("ttl", "ident"),
    "cluster_nodes": (),
    "cluster_table": (),
    "cluster_owner": ("transport", "client", "server"),
    "rebuild_credentials": ("unrevoke",),
    "metrics": (),
    "handoff_export": (),
    "handoff_import": ("records",),
    "handoff_commit": (),
    "handoff_abort": (),
}


#: Arguments an operation takes when given (a supervisor of an earlier release leaves them out).
OPTIONAL: dict[str, tuple[str, ...]] = {"handoff_import": ("pins", "stats")}


class WorkerOps:
    """One worker's service, operated by the supervisor."""

    def __init__(
        self, service: TurnService, handed_over: Callable[[], None], entry: WorkerEntry
    ) -> None:
        self.service = service
        self.entry = entry
        self.operations = Operations(service)
        self._registry = registry_for(service)
        #: This worker's side of an upgrade in place, once its event loop runs.
        self.handoff: Handoff | None = None
        self._handed_over = handed_over

    def handle(self, op: str, args: dict[str, Any]) -> Any:
        """The answer to ``op``; ValueError for an unknown one or a missing argument."""
        names = OPERATIONS.get(op)
        if names is None:
            raise ValueError(f"no such operation: {op!r}")
        missing = [name for name in names if name not in args]
        if missing:
            raise ValueError(f"{op}: missing {', '.join(missing)}")
        method: Callable[..., Any] = getattr(self, op, None) or getattr(self.operations, op)
        try:
            extra = {name: args[name] for name in OPTIONAL.get(op, ()) if name in args}
            return method(*(args[name] for name in names), **extra)
        except MintRefused:
            raise
        except ValueError as exc:  # whatever its subclass: the supervisor refuses it as such
            raise ValueError(str(exc)) from exc

    def revoke(self, username: str, persist: bool) -> int:
        """Revoke here; the supervisor asks the other workers itself (no fan-out from here),
        and only one of them writes the state file (``persist``)."""
        credentials = self.service.credentials
        return credentials.revoke(str(username), broadcast=False, persist=bool(persist))

    def rebuild_credentials(self, unrevoke: str | None) -> None:
        """Read the users, secrets and keys another worker changed; accept ``unrevoke`` again
        (a user added back), leaving the state file to that worker."""
        credentials = self.service.credentials
        if unrevoke is not None:
            credentials.unrevoke(str(unrevoke), persist=False)
        credentials.rebuild_authenticator()
        self.service.refresh_api()

    def metrics(self) -> str:
        """This worker's scrape, in the text exposition format."""
        return generate_latest(self._registry).decode()

    # --- an upgrade in place (turnd.workers.handoff) -----------------------------------------

    def _handoff(self) -> Handoff:
        if self.handoff is None:
            raise ValueError("this worker is still starting")
        return self.handoff

    def handoff_export(self) -> dict[str, Any]:
        """Stop reading what can move, send its sockets; its records and its pins (flows whose
        allocation another worker holds, :mod:`turnd.workers.pins`)."""
        return {**self._handoff().export(), "pins": self.entry.export_pins()}

    async def handoff_import(
        self,
        records: list[dict[str, Any]],
        pins: list[list[Any]] | None = None,
        stats: dict[str, int] | None = None,
    ) -> dict[str, Any]:
        """Take over the predecessor's ``records``, the sockets it sent, its pins and its
        counters (so that the node's counters go on from where they were)."""
        taken = await self._handoff().take(records)
        self.entry.import_pins(pins or [])
        self.service.core.stats.update({str(k): int(v) for k, v in (stats or {}).items()})
        return taken

    def handoff_commit(self) -> dict[str, Any]:
        """The successor serves: forget what moved, serve what is left, then stop."""
        done = self._handoff().commit()
        self._handed_over()
        return done

    async def handoff_abort(self) -> None:
        """The successor is gone: serve on."""
        await self._handoff().abort()
