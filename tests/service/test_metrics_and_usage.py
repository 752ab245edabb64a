"""Prometheus metrics move live while traffic flows; usage lines match the traffic sent."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from auth.credentials import mint_rest_credentials
from testkit.daemon import REST_SECRET, USER, Daemon, start_turnd, wait_for_event
from testkit.sync import EchoPeer, TurnClient, error_code, wait_until
from tests.test_operations_cluster import link_of, make_service
from turnd.metrics import registry_for
from turnd.runtime import KEYS_FILE
from turnd.service import TurnService

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

PAYLOAD = b"m" * 100


@pytest.fixture(scope="module")
def usage_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("usage") / "usage.jsonl"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, usage_path: Path) -> Iterator[Daemon]:
    running = start_turnd(tmp_path_factory.mktemp("turnd"), f'[usage]\nfile = "{usage_path}"\n')
    yield running
    assert running.stop() == 0


def scrape(daemon: Daemon) -> Samples:
    """Every sample of GET /metrics, keyed by (name, sorted labels)."""
    url = f"http://127.0.0.1:{daemon.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        return samples_of(response.read().decode())


def samples_of(text: str) -> Samples:
    """Every sample of an exposition text, keyed by (name, sorted labels)."""
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
    # Send and Data indications are never the kernel fast path's.
    kernel = ("packets_to_peer", "bytes_to_peer", "packets_to_client", "bytes_to_client")
    assert [line["kernel_" + counter] for counter in kernel] == [0, 0, 0, 0]


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


# --- the cluster, on unstarted services whose stats are set by hand ------------------------------


def collect(service: TurnService) -> Samples:
    """What a scrape of ``service`` shows (inside a loop: the collector counts its tasks)."""

    async def exposition() -> bytes:
        return generate_latest(registry_for(service))

    return samples_of(asyncio.run(exposition()).decode())


def test_backbone_and_forwarding_stats_become_labelled_families(tmp_path: Path) -> None:
    """backbone.sent/received/drop.* and cluster.forwarded.* are labelled families, and
    cluster.second_chance one of its own; none of them is left in turnd_events_total."""
    service = make_service(tmp_path)
    service.core.stats.update(
        {
            "backbone.sent.heartbeat": 40,
            "backbone.sent.client": 3,
            "backbone.received.peer": 9,
            "backbone.drop.replay": 2,
            "backbone.drop.auth": 1,
            "cluster.forwarded.client": 3,
            "cluster.forwarded.peer": 8,
            "cluster.second_chance": 4,
            "drop.peer_slice_owner_down": 5,
        }
    )
    samples = collect(service)
    assert samples["turnd_backbone_frames_sent_total", (("type", "heartbeat"),)] == 40
    assert samples["turnd_backbone_frames_sent_total", (("type", "client"),)] == 3
    assert samples["turnd_backbone_frames_received_total", (("type", "peer"),)] == 9
    assert samples["turnd_backbone_drops_total", (("reason", "replay"),)] == 2
    assert samples["turnd_backbone_drops_total", (("reason", "auth"),)] == 1
    assert samples["turnd_cluster_forwarded_total", (("side", "client"),)] == 3
    assert samples["turnd_cluster_forwarded_total", (("side", "peer"),)] == 8
    assert samples["turnd_cluster_second_chance_total", ()] == 4
    assert samples["turnd_drops_total", (("reason", "peer_slice_owner_down"),)] == 5
    events = [labels for name, labels in samples if name == "turnd_events_total"]
    leaked = [label for label in events if label[0][1].startswith(("backbone.", "cluster."))]
    assert leaked == []


def by_state(samples: Samples) -> dict[str, float]:
    """turnd_cluster_nodes by its state label."""
    return {
        dict(labels)["state"]: value
        for (name, labels), value in samples.items()
        if name == "turnd_cluster_nodes"
    }


def test_cluster_gauges_count_nodes_by_state_and_this_nodes_ports(tmp_path: Path) -> None:
    """turnd_cluster_nodes{state} partitions the configured nodes; turnd_cluster_relay_ports is
    the size of this node's slices."""
    service = make_service(tmp_path)
    link = link_of(service)
    samples = collect(service)
    assert by_state(samples) == {"alive": 1, "dead": 2, "draining": 0}
    ports = link.node.slices.share(2)
    assert samples["turnd_cluster_relay_ports", ()] == ports
    assert 0 < ports < 1000

    link.node.membership.heard(1, time.time(), draining=True)
    link.node.membership.heard(3, time.time())
    assert by_state(collect(service)) == {"alive": 2, "dead": 0, "draining": 1}


def test_a_single_node_has_no_cluster_gauges(tmp_path: Path) -> None:
    """Off a cluster: no node or port gauges, no backbone samples, second chances at zero."""
    samples = collect(make_service(tmp_path, None))
    names = {name for name, _ in samples}
    assert not names & {"turnd_cluster_nodes", "turnd_cluster_relay_ports"}
    assert not any(name.startswith("turnd_backbone_") for name in names)
    assert samples["turnd_cluster_second_chance_total", ()] == 0


def test_usage_line_is_written_when_the_endpoint_keys_are_unreadable(tmp_path: Path) -> None:
    """A damaged api-keys.runtime does not stop accounting: the ended allocation's line is
    written (without a key_id), the failure is counted and logged, and turnd logs no fault."""
    usage = tmp_path / "usage.jsonl"
    running = start_turnd(tmp_path, f'[usage]\nfile = "{usage}"\n')
    try:
        (tmp_path / "state" / KEYS_FILE).write_text("not a key line\n")
        username, password = mint_rest_credentials(REST_SECRET, time.time(), 600, "k1:tag")
        with TurnClient(("127.0.0.1", running.port), username, password) as client:
            assert error_code(client.allocate()) is None
            assert error_code(client.refresh(0)) is None

        def lines() -> list[dict[str, object]]:
            text = usage.read_text() if usage.exists() else ""
            return [json.loads(line) for line in text.splitlines()]

        assert wait_until(lambda: len(lines()) == 1)
        [line] = lines()
        assert line["username"] == username and line["reason"] == "deleted"
        assert line["key_id"] is None and line["customIdentifier"] == "k1:tag"
        unreadable = ("turnd_events_total", (("event", "usage.keys_unreadable"),))
        assert scrape(running)[unreadable] == 1
        assert len(wait_for_event(running, "usage.keys_unreadable")) == 1
    finally:
        assert running.stop() == 0
