"""Prometheus metrics move live while traffic flows; usage lines match the traffic sent."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.daemon import USER, Daemon, start_turnd
from tests.service.client import EchoPeer, TurnClient, error_code, wait_until

PAYLOAD = b"m" * 100


@pytest.fixture(scope="module")
def usage_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("usage") / "usage.jsonl"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, usage_path: Path) -> Iterator[Daemon]:
    running = start_turnd(tmp_path_factory.mktemp("turnd"), f'[usage]\nfile = "{usage_path}"\n')
    yield running
    assert running.stop() == 0


def scrape(daemon: Daemon) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of GET /metrics, keyed by (name, sorted labels)."""
    url = f"http://127.0.0.1:{daemon.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def test_counters_move_while_traffic_flows(daemon: Daemon) -> None:
    """Allocations, relayed packets/bytes and Binding requests are visible between scrapes."""
    with TurnClient(("127.0.0.1", daemon.port), USER, "s3cret") as client, EchoPeer() as peer:
        assert error_code(client.allocate()) is None
        assert error_code(client.create_permission(peer.address)) is None
        before = scrape(daemon)
        assert before["turnd_allocations", (("relay", "udp"), ("transport", "udp"))] == 1
        for _ in range(10):
            client.send_indication(peer.address, PAYLOAD)
        assert wait_until(lambda: len(peer.received) >= 10)
        client.binding()
        after = scrape(daemon)
        to_peer = ("turnd_relayed_packets_total", (("direction", "to_peer"),))
        bytes_to_peer = ("turnd_relayed_bytes_total", (("direction", "to_peer"),))
        assert after[to_peer] - before.get(to_peer, 0) == 10
        assert after[bytes_to_peer] - before.get(bytes_to_peer, 0) == 10 * len(PAYLOAD)
        binding = ("turnd_binding_requests_total", ())
        assert after[binding] == before.get(binding, 0) + 1


def test_auth_failures_are_counted_by_reason(daemon: Daemon) -> None:
    """A wrong password shows up as turnd_auth_failures_total{reason="bad_integrity"}."""
    key = ("turnd_auth_failures_total", (("reason", "bad_integrity"),))
    before = scrape(daemon).get(key, 0)
    with TurnClient(("127.0.0.1", daemon.port), USER, "wrong") as client:
        assert error_code(client.allocate()) == 401
    assert scrape(daemon)[key] == before + 1


def test_usage_line_matches_the_traffic(daemon: Daemon, usage_path: Path) -> None:
    """Deleting an allocation writes one JSON line with exactly the packets and bytes relayed."""
    with TurnClient(("127.0.0.1", daemon.port), USER, "s3cret") as client, EchoPeer() as peer:
        assert error_code(client.allocate()) is None
        relay = client.relay
        assert error_code(client.create_permission(peer.address)) is None
        for _ in range(7):
            client.send_indication(peer.address, PAYLOAD)
        assert wait_until(lambda: len(peer.received) >= 7)
        echoed: list[object] = []
        assert wait_until(lambda: len(echoed.extend(_drain(client)) or echoed) >= 7)
        assert error_code(client.refresh(0)) is None

    def mine() -> list[dict[str, object]]:
        if not usage_path.exists():
            return []
        lines = [json.loads(line) for line in usage_path.read_text().splitlines()]
        return [line for line in lines if line["relay"] == str(relay)]

    assert wait_until(lambda: len(mine()) == 1)
    [line] = mine()
    assert line["username"] == USER and line["reason"] == "deleted"
    assert line["transport"] == "udp"
    assert line["packets_to_peer"] == 7
    assert line["bytes_to_peer"] == 7 * len(PAYLOAD)
    assert line["packets_to_client"] == 7  # the echo peer answered every packet
    assert line["bytes_to_client"] == 7 * len(PAYLOAD)


def _drain(client: TurnClient) -> list[object]:
    out = []
    while (item := client.receive(0.05)) is not None:
        out.append(item)
    return out


def test_task_count_is_exported_and_settles_back_after_allocations_end(daemon: Daemon) -> None:
    """``turnd_tasks`` is what bench/soak watches for task leaks."""
    tasks = ("turnd_tasks", ())
    idle = scrape(daemon)[tasks]
    assert idle >= 1  # at least the task answering this scrape
    for _ in range(3):
        with TurnClient(("127.0.0.1", daemon.port), USER, "s3cret") as client:
            assert error_code(client.allocate()) is None
            assert error_code(client.refresh(0)) is None
    assert wait_until(lambda: scrape(daemon)[tasks] == idle)
