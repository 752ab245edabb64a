"""Prometheus metrics: the core's live counters and state, read at scrape time.

Nothing on the packet path changes for metrics. The core already counts everything in
``TurnServer.stats`` (drops by reason, auth failures by reason, error responses by code, ...) and
per relay; this collector turns those into metric families when Prometheus asks, so counters move
live, between scrapes, not at allocation end. On a cluster node it also reads the membership view
and the slice table (``MetricsSource.cluster``).

Served by aiohttp on ``[metrics] listen`` (GET /metrics).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

if TYPE_CHECKING:
    from turnd.cluster import ClusterLink
    from turnd.core.server import TurnServer
    from turnd.fastpath import FastPath


class MetricsSource(Protocol):
    """What a scrape reads of the service."""

    @property
    def core(self) -> TurnServer:
        """The core, its stats and state."""

    @property
    def cluster(self) -> ClusterLink | None:
        """This node's cluster link (membership view, slice table), if any."""

    def stream_counts(self) -> Counter[str]:
        """Open TCP/TLS client connections by transport."""

    @property
    def fastpath(self) -> FastPath | None:
        """The kernel data path, when it runs."""


#: stats key prefix -> (metric name, help, label name). Every counter in ``TurnServer.stats`` with
#: one of these prefixes becomes one labelled series; the rest go to turnd_events_total.
_LABELLED = {
    "drop.": ("turnd_drops_total", "Packets dropped, by reason.", "reason"),
    "auth_failure.": (
        "turnd_auth_failures_total",
        "Requests refused with 401 after a credential check, by reason.",
        "reason",
    ),
    "error.": ("turnd_error_responses_total", "Error responses sent, by code.", "code"),
    "allocations.ended.": (
        "turnd_allocations_ended_total",
        "Ended allocations, by reason.",
        "reason",
    ),
    "quota.": ("turnd_quota_refusals_total", "Requests refused by a quota, by quota.", "quota"),
    "backbone.sent.": (
        "turnd_backbone_frames_sent_total",
        "Frames sealed for other cluster nodes, by frame type.",
        "type",
    ),
    "backbone.received.": (
        "turnd_backbone_frames_received_total",
        "Backbone frames opened (authentic, not replayed), by frame type.",
        "type",
    ),
    "backbone.drop.": (
        "turnd_backbone_drops_total",
        "Backbone frames dropped (forged, replayed, malformed, ...), by reason.",
        "reason",
    ),
    "cluster.forwarded.": (
        "turnd_cluster_forwarded_total",
        "Datagrams forwarded over the backbone to the node owning them, by side (client, peer).",
        "side",
    ),
}
#: Summed into turnd_relayed_*_total, or a family of its own, instead.
_SKIP = ("relayed.", "cluster.second_chance", "fastpath.packets_", "fastpath.bytes_")


class TurndCollector(Collector):
    """Reads one service's core on every scrape."""

    def __init__(self, service: MetricsSource) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        core = self.service.core
        core.collect_routes(time.time())  # the kernel's counters, up to this scrape
        allocations = GaugeMetricFamily(
            "turnd_allocations",
            "Live allocations, by client transport and relay protocol.",
            labels=["transport", "relay"],
        )
        by_kind: Counter[tuple[str, str]] = Counter(
            (alloc.five_tuple.transport.value, "tcp" if alloc.tcp else "udp")
            for alloc in core.allocations.values()
        )
        for (transport, relay), count in sorted(by_kind.items()):
            allocations.add_metric([transport, relay], count)
        yield allocations

        connections = GaugeMetricFamily(
            "turnd_client_connections", "Open TCP and TLS client connections.", labels=["transport"]
        )
        for transport, count in sorted(self.service.stream_counts().items()):
            connections.add_metric([transport], count)
        yield connections

        yield GaugeMetricFamily(
            "turnd_tasks",
            "asyncio tasks alive in turnd (a fixed few plus short-lived work; a leak shows here).",
            value=len(asyncio.all_tasks()),
        )

        traffic = core.traffic()
        packets = CounterMetricFamily(
            "turnd_relayed_packets", "Packets relayed, by direction.", labels=["direction"]
        )
        octets = CounterMetricFamily(
            "turnd_relayed_bytes", "Payload bytes relayed, by direction.", labels=["direction"]
        )
        for direction in ("to_peer", "to_client"):
            packets.add_metric([direction], traffic["packets_" + direction])
            octets.add_metric([direction], traffic["bytes_" + direction])
        yield packets
        yield octets

        yield CounterMetricFamily(
            "turnd_binding_requests",
            "STUN Binding requests answered.",
            value=core.stats["stun.binding_requests"],
        )

        families = {
            prefix: CounterMetricFamily(name.removesuffix("_total"), text, labels=[label])
            for prefix, (name, text, label) in _LABELLED.items()
        }
        events = CounterMetricFamily(
            "turnd_events", "Other counted events of the core.", labels=["event"]
        )
        for key, value in sorted(core.stats.items()):
            if key.startswith(_SKIP):
                continue
            prefix = next((p for p in _LABELLED if key.startswith(p)), None)
            if prefix is None:
                events.add_metric([key], value)
            else:
                families[prefix].add_metric([key[len(prefix) :]], value)
        yield from families.values()
        yield events
        yield from self._fastpath()
        yield from self._cluster()

    def _fastpath(self) -> Iterator[Metric]:
        """The kernel data path: whether it runs, what it holds, what it relayed (already in
        turnd_relayed_*_total too) and its program's own events."""
        stats = self.service.core.stats
        fastpath = self.service.fastpath
        yield GaugeMetricFamily(
            "turnd_fastpath_active",
            "1 when established UDP channels relay in the kernel ([fastpath]), else 0.",
            value=int(fastpath is not None),
        )
        status = fastpath.status() if fastpath is not None else {}
        yield GaugeMetricFamily(
            "turnd_fastpath_routes",
            "Channels the kernel relays now.",
            value=status.get("routes", 0),
        )
        packets = CounterMetricFamily(
            "turnd_fastpath_relayed_packets",
            "Packets the kernel relayed, by direction (part of turnd_relayed_packets_total).",
            labels=["direction"],
        )
        octets = CounterMetricFamily(
            "turnd_fastpath_relayed_bytes",
            "Payload bytes the kernel relayed, by direction (part of turnd_relayed_bytes_total).",
            labels=["direction"],
        )
        for direction in ("to_peer", "to_client"):
            packets.add_metric([direction], stats["fastpath.packets_" + direction])
            octets.add_metric([direction], stats["fastpath.bytes_" + direction])
        yield packets
        yield octets
        program = CounterMetricFamily(
            "turnd_fastpath_program_events",
            "The kernel program's own counters: errors (packets dropped half rewritten), "
            "passed_mtu (left to userspace: too big for the egress MTU once framed).",
            labels=["event"],
        )
        for name in ("errors", "passed_mtu"):
            program.add_metric([name], status.get(name, 0))
        yield program

    def _cluster(self) -> Iterator[Metric]:
        """The cluster's own families; its gauges only on a cluster node."""
        yield CounterMetricFamily(
            "turnd_cluster_second_chance",
            "Client datagrams a new owner did not know, sent on to the flow's previous owner.",
            value=self.service.core.stats["cluster.second_chance"],
        )
        link = self.service.cluster
        if link is None:
            return
        states: Counter[str] = Counter({"alive": 0, "dead": 0, "draining": 0})
        for node in link.nodes():
            states[node_state(node)] += 1
        nodes = GaugeMetricFamily(
            "turnd_cluster_nodes",
            "Configured cluster nodes as this node sees them, by state (alive, dead, draining).",
            labels=["state"],
        )
        for state, count in sorted(states.items()):
            nodes.add_metric([state], count)
        yield nodes
        yield GaugeMetricFamily(
            "turnd_cluster_relay_ports",
            "Relay ports of this node's slices (the ports it may allocate).",
            value=link.node.slices.share(link.node.node_id),
        )


def node_state(node: Mapping[str, Any]) -> str:
    """One state of a row of ``ClusterLink.nodes()``: dead, draining (alive) or alive."""
    if not node["alive"]:
        return "dead"
    return "draining" if node["draining"] else "alive"


def registry_for(service: MetricsSource) -> CollectorRegistry:
    """A registry holding only turnd's collector (no process-wide default metrics)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TurndCollector(service))
    return registry
