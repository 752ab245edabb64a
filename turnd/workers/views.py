"""One node's control API and metrics over its workers: each request asked of the workers that
hold the answer, and their answers made one.

:class:`FanOutOps` is the :class:`turnd.control.ControlOps` of a supervisor. What each worker
holds alone (allocations, traffic, drain, reload, revocations) is asked of every worker and
summed or merged; what they share through the state directory (users, secrets, endpoint keys) is
changed on one worker, which writes the files, and then read again by the others
(``rebuild_credentials``). A request that needs a worker that is down is refused with 503
(:class:`WorkerUnavailable`), never answered for half the node without saying so: the status
lists every worker and whether it is up.

:func:`merge_metrics` makes one Prometheus scrape of the workers' own: every series summed
across workers, and ``turnd_worker_*`` families with a ``worker`` label for each worker's state.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import attrs
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

from auth.credentials import MintRefused
from turnd.control import OpsUnavailable

#: Families whose value is a state, not an amount: the node's value is the largest worker's.
_MAX_FAMILIES = frozenset({"turnd_fastpath_active"})
#: The fastpath status fields that count something (summed); the rest are the first worker's.
_FASTPATH_SUMS = ("routes", "errors", "passed_mtu")


@attrs.frozen
class WorkerInfo:
    """One worker as the supervisor sees it."""

    slot: int
    pid: int | None
    up: bool
    restarts: int
    #: When its process started (Unix time), None before the first start.
    started: float | None


class WorkerUnavailable(OpsUnavailable):
    """Worker ``slot`` is down or did not answer in time."""

    def __init__(self, slot: int, reason: str) -> None:
        super().__init__(f"worker {slot} is unavailable ({reason}): try again in a moment")
        self.slot = slot
        self.reason = reason


class WorkerCalls(Protocol):
    """What the fan-out needs of the supervisor."""

    def slots(self) -> list[WorkerInfo]:
        """Every worker, in slot order."""

    async def call(self, slot: int, op: str, args: dict[str, Any]) -> Any:
        """Worker ``slot``'s answer to ``op``; WorkerUnavailable, or what it raised."""

    async def upgrade(self) -> dict[str, Any]:
        """Replace every worker in place (turnd.workers.supervisor.Supervisor.upgrade)."""

    def old_workers(self) -> list[WorkerInfo]:
        """Workers an upgrade replaced that serve their last TCP/TLS connections."""

    async def call_old(self, pid: int, op: str, args: dict[str, Any]) -> Any:
        """The answer of the replaced worker ``pid``; WorkerUnavailable once it is gone."""


def raise_remote(slot: int, text: str) -> None:
    """Raise again the error worker ``slot`` answered with (``"Type: message"``): a ValueError or
    MintRefused keeps its kind, so the control API refuses it as it would on one process;
    anything else is a RuntimeError naming the worker (500)."""
    kind, _, message = text.partition(": ")
    if kind == "MintRefused":
        raise MintRefused(message)
    if kind == "ValueError":
        raise ValueError(message)
    raise RuntimeError(f"worker {slot}: {text}")


class FanOutOps:
    """The control API's operations for a node of workers."""

    def __init__(self, calls: WorkerCalls, started: float) -> None:
        self.calls = calls
        self.started = started

    # --- asking ------------------------------------------------------------------------------

    def _up(self) -> list[int]:
        return [info.slot for info in self.calls.slots() if info.up]

    def _every(self) -> list[int]:
        """Every slot, all up; WorkerUnavailable naming the first that is not."""
        slots = self.calls.slots()
        down = next((info for info in slots if not info.up), None)
        if down is not None:
            raise WorkerUnavailable(down.slot, "restarting")
        return [info.slot for info in slots]

    def _primary(self) -> int:
        """The worker that carries the node-wide changes: the first one up."""
        up = self._up()
        if not up:
            raise OpsUnavailable("no worker is up: every worker is restarting")
        return up[0]

    async def _ask(self, slots: Iterable[int], op: str, **args: Any) -> dict[int, Any]:
        """``op`` asked of ``slots`` at once: each slot's answer."""
        chosen = list(slots)
        answers = await asyncio.gather(*(self.calls.call(s, op, args) for s in chosen))
        return dict(zip(chosen, answers, strict=True))

    async def _ask_up(self, op: str, **args: Any) -> dict[int, Any]:
        """``op`` asked of every worker that is up (OpsUnavailable when none is)."""
        up = self._up()
        if not up:
            raise OpsUnavailable("no worker is up: every worker is restarting")
        return await self._ask(up, op, **args)

    async def _ask_old(self, op: str, **args: Any) -> dict[WorkerInfo, Any]:
        """``op`` asked of every replaced worker still serving: each one's answer (one that
        went meanwhile is left out)."""
        old = self.calls.old_workers()
        if not old:
            return {}
        answers = await asyncio.gather(
            *(self.calls.call_old(info.pid or 0, op, args) for info in old),
            return_exceptions=True,
        )
        found: dict[WorkerInfo, Any] = {}
        for info, answer in zip(old, answers, strict=True):
            if isinstance(answer, WorkerUnavailable):
                continue
            if isinstance(answer, BaseException):
                raise answer
            found[info] = answer
        return found

    async def _change_shared(self, op: str, unrevoke: str | None = None, **args: Any) -> Any:
        """Make a change to the shared credentials on the primary worker, then have every
        other worker read them again. Every worker must be up: one that is not would serve
        the old credentials until it starts again, and the caller is told to retry."""
        slots = self._every()
        primary = slots[0]
        answer = await self.calls.call(primary, op, args)
        await self._ask(slots[1:], "rebuild_credentials", unrevoke=unrevoke)
        return answer

    # --- ControlOps ------------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        from turnd import __version__

        answers = await self._ask_up("status")
        first = answers[min(answers)]
        per_worker = {slot: answer["allocations"] for slot, answer in answers.items()}
        return {
            "version": __version__,
            "started": round(self.started, 3),
            "uptime_s": round(time.time() - self.started, 1),
            "realm": first["realm"],
            "listeners": first["listeners"],
            "relay_addresses": first["relay_addresses"],
            "allocations": sum(per_worker.values()),
            "connections": sum(answer["connections"] for answer in answers.values()),
            "draining": any(answer["draining"] for answer in answers.values()),
            "fastpath": _merge_fastpath([answers[slot]["fastpath"] for slot in sorted(answers)]),
            "workers": [
                {
                    "slot": info.slot,
                    "pid": info.pid,
                    "up": info.up,
                    "restarts": info.restarts,
                    "started": None if info.started is None else round(info.started, 3),
                    "allocations": per_worker.get(info.slot),
                }
                for info in self.calls.slots()
            ],
            "lingering": [
                {
                    "slot": info.slot,
                    "pid": info.pid,
                    "allocations": answer["allocations"],
                    "connections": answer["connections"],
                }
                for info, answer in (await self._ask_old("status")).items()
            ],
        }

    async def allocations(
        self, user: str | None, client: str | None, transport: str | None
    ) -> list[dict[str, Any]]:
        asked = {"user": user, "client": client, "transport": transport}
        answers = await self._ask_up("allocations", **asked)
        found = [{**view, "worker": slot} for slot, views in answers.items() for view in views]
        for info, views in (await self._ask_old("allocations", **asked)).items():
            found += [{**view, "worker": info.slot, "old_pid": info.pid} for view in views]
        return sorted(found, key=lambda view: view["started"])

    async def allocation(self, allocation_id: str) -> dict[str, Any] | None:
        answers = await self._ask_up("allocation", allocation_id=allocation_id)
        found = next(
            ({**view, "worker": slot} for slot, view in sorted(answers.items()) if view),
            None,
        )
        if found is None:
            old = await self._ask_old("allocation", allocation_id=allocation_id)
            found = next(
                ({**view, "worker": info.slot, "old_pid": info.pid} for info, view in old.items()
                 if view),
                None,
            )  # fmt: skip
        return found

    async def kill(self, allocation_id: str) -> bool:
        answers = await self._ask_up("kill", allocation_id=allocation_id)
        old = await self._ask_old("kill", allocation_id=allocation_id)
        return any(answers.values()) or any(old.values())

    async def users(self) -> list[str]:
        return list(await self.calls.call(self._primary(), "users", {}))

    async def add_user(self, name: str, password: str) -> None:
        await self._change_shared("add_user", unrevoke=name, name=name, password=password)

    async def remove_user(self, name: str) -> bool:
        return bool(await self._change_shared("remove_user", name=name))

    async def secrets(self) -> list[dict[str, Any]]:
        return list(await self.calls.call(self._primary(), "secrets", {}))

    async def add_secret(self, value: str | None) -> dict[str, Any]:
        return dict(await self._change_shared("add_secret", value=value))

    async def retire_secret(self, secret_id: str) -> bool:
        return bool(await self._change_shared("retire_secret", secret_id=secret_id))

    async def keys(self) -> list[dict[str, Any]]:
        return list(await self.calls.call(self._primary(), "keys", {}))

    async def add_key(self, key_id: str, token: str | None) -> dict[str, Any]:
        return dict(await self._change_shared("add_key", key_id=key_id, token=token))

    async def remove_key(self, key_id: str) -> bool:
        return bool(await self._change_shared("remove_key", key_id=key_id))

    async def reload(self) -> dict[str, Any]:
        """Reload every worker that is up (one that is down reads the files when it starts):
        ok when all took it; ``failed`` names each that refused, and why."""
        up = self._up()
        if not up:
            return {"ok": False, "error": "no worker is up: every worker is restarting"}
        results = await asyncio.gather(
            *(self.calls.call(slot, "reload", {}) for slot in up), return_exceptions=True
        )
        failed: dict[str, str] = {}
        for slot, result in zip(up, results, strict=True):
            if isinstance(result, BaseException):
                failed[str(slot)] = str(result)
            elif not result.get("ok"):
                failed[str(slot)] = str(result.get("error"))
        errors = sorted(set(failed.values()))
        return {"ok": not failed, "error": "; ".join(errors) or None, "failed": failed}

    async def upgrade(self) -> dict[str, Any]:
        return await self.calls.upgrade()

    async def drain(self, on: bool) -> dict[str, Any]:
        answers = await self._ask(self._every(), "drain", on=on)
        return {
            "draining": on,
            "allocations": sum(answer["allocations"] for answer in answers.values()),
        }

    async def revoke(self, username: str) -> int:
        """Revoke on every worker; the primary writes the state file. A worker that is down
        reads the revocation from that file when it starts again."""
        primary = self._primary()
        ended = int(
            await self.calls.call(primary, "revoke", {"username": username, "persist": True})
        )
        others = [slot for slot in self._up() if slot != primary]
        answers = await self._ask(others, "revoke", username=username, persist=False)
        old = await self._ask_old("revoke", username=username, persist=False)
        return ended + sum(int(n) for n in [*answers.values(), *old.values()])

    async def mint(self, ttl: int, ident: str) -> dict[str, Any]:
        return dict(await self.calls.call(self._primary(), "mint", {"ttl": ttl, "ident": ident}))

    async def cluster_nodes(self) -> dict[str, Any]:
        # A node of workers is not in a cluster (check_workers); the counters are summed.
        answers = await self._ask_up("cluster_nodes")
        merged = dict(answers[min(answers)])
        merged["counters"] = _sum_tree([answer["counters"] for answer in answers.values()])
        return merged

    async def cluster_table(self) -> dict[str, Any] | None:
        table: dict[str, Any] | None = await self.calls.call(self._primary(), "cluster_table", {})
        return table

    async def cluster_owner(
        self, transport: str, client: str, server: str | None
    ) -> dict[str, Any] | None:
        args = {"transport": transport, "client": client, "server": server}
        owner: dict[str, Any] | None = await self.calls.call(self._primary(), "cluster_owner", args)
        return owner

    # --- metrics -----------------------------------------------------------------------------

    async def metrics(self) -> str:
        """One scrape for the node: the workers that are up, summed, and each worker's state."""
        up = self._up()
        results = await asyncio.gather(
            *(self.calls.call(slot, "metrics", {}) for slot in up), return_exceptions=True
        )
        texts = {
            slot: result
            for slot, result in zip(up, results, strict=True)
            if isinstance(result, str)
        }
        old = [text for text in (await self._ask_old("metrics")).values() if isinstance(text, str)]
        return merge_metrics(texts, self.calls.slots(), old)


def _merge_fastpath(views: list[dict[str, Any]]) -> dict[str, Any]:
    """The workers' fastpath views as one: active when any is, counts summed."""
    merged = dict(views[0])
    merged["active"] = any(view.get("active") for view in views)
    for key, value in views[0].items():
        counted = isinstance(value, int | float) and not isinstance(value, bool)
        if counted and (key.startswith("relayed_") or key in _FASTPATH_SUMS):
            merged[key] = sum(view.get(key, 0) for view in views)
    return merged


def _sum_tree(trees: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Nested maps of counts summed key by key."""
    merged: dict[str, Any] = {}
    for tree in trees:
        for key, value in tree.items():
            if isinstance(value, Mapping):
                merged[key] = _sum_tree([merged.get(key, {}), value])
            else:
                merged[key] = merged.get(key, 0) + value
    return merged


class _Merged(Collector):
    """The families of a merged scrape, for :func:`generate_latest`."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def merge_metrics(
    texts: Mapping[int, str], workers: Iterable[WorkerInfo], old: Sequence[str] = ()
) -> str:
    """One exposition of the workers' scrapes (``texts``, by slot, and ``old``: the replaced
    workers still serving): each series summed across them (the largest value for a state
    such as turnd_fastpath_active), then turnd_worker_up, turnd_worker_restarts_total and
    turnd_worker_allocations by ``worker``, and turnd_workers_lingering."""
    order: list[str] = []
    kinds: dict[str, tuple[str, str]] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    allocations: dict[int, float] = {}
    scrapes = [*sorted(texts.items()), *((None, text) for text in old)]
    for slot, text in scrapes:
        for family in text_string_to_metric_families(text):
            if family.name not in kinds:
                order.append(family.name)
                kinds[family.name] = (family.type, family.documentation)
                values[family.name] = {}
            series = values[family.name]
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue  # per-process creation times: not a node's
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if family.name == "turnd_allocations" and slot is not None:
                    allocations[slot] = allocations.get(slot, 0.0) + sample.value
                if family.name in _MAX_FAMILIES:
                    series[key] = max(series.get(key, sample.value), sample.value)
                else:
                    series[key] = series.get(key, 0.0) + sample.value
    families: list[Metric] = []
    for name in order:
        kind, documentation = kinds[name]
        family = Metric(name, documentation, kind)
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
        families.append(family)
    up = GaugeMetricFamily(
        "turnd_worker_up", "1 for each worker that serves, 0 while it restarts.", labels=["worker"]
    )
    restarts = CounterMetricFamily(
        "turnd_worker_restarts",
        "Times each worker was started again after it exited.",
        labels=["worker"],
    )
    held = GaugeMetricFamily(
        "turnd_worker_allocations", "Live allocations held by each worker.", labels=["worker"]
    )
    for info in workers:
        label = [str(info.slot)]
        answered = info.slot in texts
        up.add_metric(label, int(info.up and answered))
        restarts.add_metric(label, info.restarts)
        if answered:
            held.add_metric(label, allocations.get(info.slot, 0.0))
    lingering = GaugeMetricFamily(
        "turnd_workers_lingering",
        "Workers an upgrade replaced that still serve their last TCP/TLS connections.",
        value=len(old),
    )
    families += [up, restarts, held, lingering]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(families))
    return generate_latest(registry).decode()
