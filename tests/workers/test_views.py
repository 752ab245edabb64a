"""The fan-out of the control API and the metrics over workers, in memory: each worker is a
table of answers, and the supervisor's calls are recorded."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from auth.credentials import MintRefused
from turnd.control import OpsUnavailable
from turnd.workers.views import (
    FanOutOps,
    WorkerInfo,
    WorkerUnavailable,
    merge_metrics,
    raise_remote,
)

Answerer = Callable[[dict[str, Any]], Any]


class Workers:
    """WorkerCalls over in-memory workers: ``answers[slot][op](args)``; every call recorded."""

    def __init__(self, count: int) -> None:
        self.answers: list[dict[str, Answerer]] = [{} for _ in range(count)]
        self.up = [True] * count
        self.calls: list[tuple[int, str, dict[str, Any]]] = []

    def slots(self) -> list[WorkerInfo]:
        return [
            WorkerInfo(slot, 1000 + slot, up, restarts=slot, started=1.0)
            for slot, up in enumerate(self.up)
        ]

    async def call(self, slot: int, op: str, args: dict[str, Any]) -> Any:
        if not self.up[slot]:
            raise WorkerUnavailable(slot, "restarting")
        self.calls.append((slot, op, args))
        return self.answers[slot][op](args)

    def old_workers(self) -> list[WorkerInfo]:
        return []

    async def call_old(self, pid: int, op: str, args: dict[str, Any]) -> Any:
        raise WorkerUnavailable(-1, "no old worker here")

    def on_all(self, op: str, answer: Answerer) -> None:
        for table in self.answers:
            table[op] = answer

    def ops(self, op: str) -> list[int]:
        """The slots asked ``op``, in order."""
        return [slot for slot, name, _ in self.calls if name == op]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def _status(slot: int) -> dict[str, Any]:
    return {
        "realm": "r",
        "listeners": [{"transport": "udp", "address": "127.0.0.1", "port": 3478}],
        "relay_addresses": ["127.0.0.1"],
        "allocations": slot + 2,
        "connections": 1,
        "draining": False,
        "fastpath": {
            "active": slot == 1,
            "mode": "auto",
            "routes": 3,
            "relayed_packets_to_peer": 5,
        },
    }


def test_status_sums_the_workers_and_lists_each() -> None:
    workers = Workers(3)
    for slot in range(3):
        workers.answers[slot]["status"] = lambda _, slot=slot: _status(slot)
    status = run(FanOutOps(workers, 1.0).status())
    assert status["allocations"] == 2 + 3 + 4
    assert status["connections"] == 3
    assert status["fastpath"]["active"] is True
    assert status["fastpath"]["routes"] == 9 and status["fastpath"]["relayed_packets_to_peer"] == 15
    assert [w["slot"] for w in status["workers"]] == [0, 1, 2]
    assert [w["allocations"] for w in status["workers"]] == [2, 3, 4]


def test_status_of_a_node_with_a_worker_down_says_so() -> None:
    workers = Workers(2)
    workers.on_all("status", lambda _: _status(0))
    workers.up[1] = False
    status = run(FanOutOps(workers, 1.0).status())
    assert status["allocations"] == 2
    assert [(w["up"], w["allocations"]) for w in status["workers"]] == [(True, 2), (False, None)]


def test_every_worker_down_is_unavailable() -> None:
    workers = Workers(2)
    workers.up = [False, False]
    with pytest.raises(OpsUnavailable):
        run(FanOutOps(workers, 1.0).status())


def test_allocations_merge_oldest_first_naming_their_worker() -> None:
    workers = Workers(2)
    workers.answers[0]["allocations"] = lambda _: [{"id": "a", "started": 3.0}]
    workers.answers[1]["allocations"] = lambda _: [{"id": "b", "started": 1.0}]
    found = run(FanOutOps(workers, 1.0).allocations("alice", None, "udp"))
    assert found == [
        {"id": "b", "started": 1.0, "worker": 1},
        {"id": "a", "started": 3.0, "worker": 0},
    ]
    assert all(
        args == {"user": "alice", "client": None, "transport": "udp"} for *_, args in workers.calls
    )


def test_show_and_kill_find_the_worker_that_holds_it() -> None:
    workers = Workers(2)
    workers.answers[0]["allocation"] = lambda _: None
    workers.answers[1]["allocation"] = lambda args: {"id": args["allocation_id"]}
    workers.answers[0]["kill"] = lambda _: False
    workers.answers[1]["kill"] = lambda _: True
    ops = FanOutOps(workers, 1.0)
    assert run(ops.allocation("127.0.0.1:50600")) == {"id": "127.0.0.1:50600", "worker": 1}
    assert run(ops.kill("127.0.0.1:50600")) is True
    workers.answers[1]["kill"] = lambda _: False
    assert run(ops.kill("127.0.0.1:50600")) is False


def test_a_user_added_on_one_worker_is_read_again_by_the_others() -> None:
    workers = Workers(3)
    workers.answers[0]["add_user"] = lambda _: None
    workers.on_all("rebuild_credentials", lambda _: None)
    run(FanOutOps(workers, 1.0).add_user("carol", "pw"))
    assert workers.calls[0] == (0, "add_user", {"name": "carol", "password": "pw"})
    assert sorted(workers.ops("rebuild_credentials")) == [1, 2]
    assert all(args == {"unrevoke": "carol"} for _, op, args in workers.calls[1:])


def test_a_shared_change_with_a_worker_down_is_refused_before_it_is_made() -> None:
    workers = Workers(2)
    workers.up[1] = False
    with pytest.raises(WorkerUnavailable):
        run(FanOutOps(workers, 1.0).add_secret(None))
    assert workers.calls == []


def test_a_revocation_is_written_once_and_applied_everywhere() -> None:
    workers = Workers(3)
    workers.on_all("revoke", lambda args: 1)
    assert run(FanOutOps(workers, 1.0).revoke("mallory")) == 3
    persisted = [slot for slot, op, args in workers.calls if args.get("persist")]
    assert persisted == [0] and sorted(workers.ops("revoke")) == [0, 1, 2]


def test_reload_names_each_worker_that_refused() -> None:
    workers = Workers(2)
    workers.answers[0]["reload"] = lambda _: {"ok": True, "error": None}
    workers.answers[1]["reload"] = lambda _: {"ok": False, "error": "bad port"}
    result = run(FanOutOps(workers, 1.0).reload())
    assert result == {"ok": False, "error": "bad port", "failed": {"1": "bad port"}}


def test_drain_needs_every_worker() -> None:
    workers = Workers(2)
    workers.on_all("drain", lambda args: {"draining": args["on"], "allocations": 2})
    assert run(FanOutOps(workers, 1.0).drain(True)) == {"draining": True, "allocations": 4}
    workers.up[0] = False
    with pytest.raises(WorkerUnavailable):
        run(FanOutOps(workers, 1.0).drain(False))


def test_remote_errors_keep_their_kind() -> None:
    with pytest.raises(MintRefused, match="ttl too long"):
        raise_remote(0, "MintRefused: ttl too long")
    with pytest.raises(ValueError, match="the last REST secret"):
        raise_remote(0, "ValueError: this is the last REST secret")
    with pytest.raises(RuntimeError, match="worker 2: KeyError"):
        raise_remote(2, "KeyError: 'x'")


SCRAPE = """\
# HELP turnd_allocations Live allocations.
# TYPE turnd_allocations gauge
turnd_allocations{{transport="udp",relay="udp"}} {allocations}
# HELP turnd_drops_total Packets dropped, by reason.
# TYPE turnd_drops_total counter
turnd_drops_total{{reason="malformed"}} {drops}
turnd_drops_created{{reason="malformed"}} 1.7e9
# HELP turnd_fastpath_active 1 when the kernel relays.
# TYPE turnd_fastpath_active gauge
turnd_fastpath_active {active}
"""


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_one_scrape_sums_the_workers_and_labels_their_state() -> None:
    texts = {
        0: SCRAPE.format(allocations=2, drops=5, active=1),
        1: SCRAPE.format(allocations=3, drops=7, active=0),
    }
    infos = [WorkerInfo(0, 10, True, 0, 1.0), WorkerInfo(1, 11, True, 2, 1.0)]
    merged = _samples(merge_metrics(texts, infos))
    assert merged[("turnd_allocations", (("relay", "udp"), ("transport", "udp")))] == 5
    assert merged[("turnd_drops_total", (("reason", "malformed"),))] == 12
    assert merged[("turnd_fastpath_active", ())] == 1
    assert not any(name.endswith("_created") for name, _ in merged)
    assert merged[("turnd_worker_up", (("worker", "1"),))] == 1
    assert merged[("turnd_worker_restarts_total", (("worker", "1"),))] == 2
    assert merged[("turnd_worker_allocations", (("worker", "0"),))] == 2
    assert merged[("turnd_worker_allocations", (("worker", "1"),))] == 3


def test_a_worker_that_did_not_answer_the_scrape_is_down_in_it() -> None:
    texts = {0: SCRAPE.format(allocations=2, drops=5, active=0)}
    infos = [WorkerInfo(0, 10, True, 0, 1.0), WorkerInfo(1, None, False, 1, None)]
    merged = _samples(merge_metrics(texts, infos))
    assert merged[("turnd_worker_up", (("worker", "1"),))] == 0
    assert ("turnd_worker_allocations", (("worker", "1"),)) not in merged
    assert merged[("turnd_allocations", (("relay", "udp"), ("transport", "udp")))] == 2
