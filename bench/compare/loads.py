"""The loads that share one server instance: each takes a running server, the echo peer and the
options, and returns a JSON-ready dict of figures.

* ``cpu``: server CPU per relayed packet, UDP channels and Send, TCP and TLS channels: the
  server process's, plus its BPF program's, and the host's less the generator's and the peer's
  (``procfs.Meter``); for UDP channels also the host's over the same load sent straight to the
  peer. The fast path relays UDP channels only: with it, only that path is measured.
* ``uclient``: the same figures with coturn's ``turnutils_uclient`` as the load.
* ``rate``: the highest paced rate at ≤ ``LOSS_TARGET_PERCENT`` loss, doubling then bisecting.
* ``rtt``: round trips through the relay against round trips straight to the echo peer.
* ``binding``: unauthenticated Binding answers per second.
* ``allocations``: authenticated allocations per second from fresh sockets.

The memory load needs a fresh server of its own and lives in ``rss``.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import time
from collections.abc import Callable
from typing import Any

from bench.compare.clients import (
    CLIENT_BUFFER,
    REQUEST_TIMEOUT,
    UdpLink,
    relay_sessions,
    wait_frames,
)
from bench.compare.options import Options
from bench.compare.procfs import Meter, udp_drops
from bench.compare.servers import LOOPBACK, EchoPeer, Server
from bench.compare.stats import per, percentile
from bench.compare.traffic import LOAD_DEADLINE, allocate_many, paced, pump
from stun.message import Message, MessageClass, Method, decode, encode
from testkit.daemon import PASSWORD, USER

#: The relay paths the cpu load measures, (transport, mode), in the table's order.
TRANSPORTS = (("udp", "channel"), ("udp", "send"), ("tcp", "channel"), ("tls", "channel"))
#: What the kernel fast path relays: the rest stays in userspace, as with the fast path off.
FASTPATH_TRANSPORTS = (("udp", "channel"),)
#: The loads measured for turnd+fastpath: those over UDP channels.
FASTPATH_METRICS = ("cpu", "uclient", "rate", "rtt")
#: The kernel counters of turnd's status that count relayed packets, each direction.
KERNEL_COUNTERS = ("packets_to_peer", "packets_to_client")
#: ≤ 0.1 % loss is what the issue calls a sustainable rate.
LOSS_TARGET_PERCENT = 0.1
#: A paced step below this share of its target rate measured the generator, not the server.
PACE_TOLERANCE = 0.95
#: Distinct Binding requests per socket (a server could cache answers by transaction id).
BINDING_TXIDS = 256
#: Pause between two latency samples: one packet in flight, never a queue.
RTT_GAP = 0.001
#: Highest rate the doubling search tries (packets/s); far above what either server does here.
RATE_CAP = 2_000_000


def measure_cpu(server: Server, peer: EchoPeer, options: Options) -> dict[str, Any]:
    """CPU per relayed packet over UDP channels and Send, TCP and TLS (channels); with the fast
    path, over UDP channels only."""
    results: dict[str, Any] = {}
    payload = os.urandom(options.size)
    for transport, mode in FASTPATH_TRANSPORTS if server.fastpath else TRANSPORTS:
        name = f"{transport}-{mode}"
        try:
            with relay_sessions(server, peer, transport, mode, options.clients) as sessions:
                frames = [[s.data_frame(peer.address, mode, payload)] for s in sessions]
                before = server.fastpath_counters()
                meter = Meter(server.pid, peer.pid, thorough=True)
                result = pump(
                    [s.link for s in sessions], frames, options.window, options.packets, 120.0
                )
                figures = meter.read()
                kernel = kernel_relayed(before, server.fastpath_counters())
            if (transport, mode) == FASTPATH_TRANSPORTS[0]:
                figures |= direct_baseline(peer, options, payload, result.received)
        except Exception as exc:
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        relayed = 2 * result.received  # each round trip crosses the relay twice
        results[name] = {
            "sent": result.sent,
            "received": result.received,
            "loss_percent": per(result.lost, result.sent, 100),
            "seconds": result.seconds,
            "round_trips_per_s": per(result.received, result.seconds),
            **figures,
            **kernel,
            **per_packet(figures, relayed),
        }
    return results


def per_packet(figures: dict[str, Any], relayed: int) -> dict[str, float | None]:
    """The CPU figures per relayed packet in µs: the process (as before the fast path), (a) the
    process and its BPF program, (b) the host less the generator and the peer, (b') that less
    other tenants' processes too, and, where a direct baseline ran, (c) the host's CPU (less
    other tenants') over the same load sent straight to the peer."""
    out = {
        "cpu_us_per_relayed_packet": per(figures["server_cpu_s"], relayed, 1e6),
        "cpu_bpf_us_per_relayed_packet": per(figures["server_bpf_cpu_s"], relayed, 1e6),
        "host_us_per_relayed_packet": per(figures["host_cpu_s"], relayed, 1e6),
    }
    if "tenants_cpu_s" in figures:
        own = figures["host_cpu_s"] - figures["tenants_cpu_s"]
        out["host_own_us_per_relayed_packet"] = per(own, relayed, 1e6)
    if "direct_host_own_cpu_s" in figures:
        extra = figures["host_own_cpu_s"] - figures["direct_host_own_cpu_s"]
        out["host_over_direct_us_per_relayed_packet"] = per(extra, relayed, 1e6)
    return out


def direct_baseline(
    peer: EchoPeer, options: Options, payload: bytes, round_trips: int
) -> dict[str, Any]:
    """The host's busy CPU for ``round_trips`` round trips sent straight to the echo peer, the
    same window over as many sockets: what a relayed load costs the host without any relay."""
    links = [UdpLink(peer.address, buffer=CLIENT_BUFFER) for _ in range(options.clients)]
    try:
        meter = Meter(os.getpid(), peer.pid, thorough=True)
        result = pump(links, [[payload]] * len(links), options.window, round_trips, 120.0)
        figures = meter.read()
    finally:
        for link in links:
            link.close()
    # Scaled to the relayed load's round trips, in case some were lost here.
    scale = round_trips / result.received if result.received else 0.0
    return {
        "direct_round_trips": result.received,
        "direct_host_own_cpu_s": figures["host_own_cpu_s"] * scale,
    }


def kernel_relayed(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any]:
    """What turnd's fast path relayed in the kernel between two status readings: its program's
    counters and the core's credited ones, each direction; nothing for a server without."""
    if not before or not after or not after.get("active"):
        return {}
    return {
        f"kernel_{key}": after.get(key, 0) - before.get(key, 0)
        for name in KERNEL_COUNTERS
        for key in (name, "relayed_" + name)
    }


def measure_uclient(server: Server, peer: EchoPeer, options: Options) -> dict[str, Any]:
    """turnutils_uclient over UDP channels; server CPU over its whole run per relayed packet."""
    from testkit.coturn import find_tool, run_uclient

    if not find_tool("turnutils_uclient"):
        return {"error": "turnutils_uclient is not installed"}
    before = server.fastpath_counters()
    meter = Meter(server.pid, peer.pid, thorough=True)
    report = run_uclient(
        server.udp[0],
        server.udp[1],
        peer.address[0],
        peer.address[1],
        user=USER,
        password=PASSWORD,
        clients=options.uclient_clients,
        messages=options.uclient_messages,
        length=options.size,
        rtcp=False,
        interval_ms=1,
    )
    figures = meter.read()
    return {
        "argv": list(report.argv),
        "sent": report.sent_packets,
        "received": report.received_packets,
        "loss_percent": report.lost_percent,
        "rtt_avg_ms": report.rtt_avg_ms,
        **figures,
        **kernel_relayed(before, server.fastpath_counters()),
        **per_packet(figures, 2 * report.received_packets),
    }


def measure_rate(server: Server, peer: EchoPeer, options: Options) -> dict[str, Any]:
    """Highest paced rate (client packets/s, UDP channels) at ≤ 0.1 % loss."""
    payload = os.urandom(options.size)
    with relay_sessions(server, peer, "udp", "channel", options.clients) as sessions:
        udp_links = [s.link for s in sessions if isinstance(s.link, UdpLink)]
        frames = [s.data_frame(peer.address, "channel", payload) for s in sessions]
        places = {
            "client": {link.port for link in udp_links},
            "server": {server.udp[1]} | {s.relay.port for s in sessions if s.relay},
            "peer": {peer.address[1]},
        }
        steps: list[dict[str, Any]] = []
        counters = server.fastpath_counters()

        def trial(rate: int) -> str:
            before = udp_drops()
            meter = Meter(server.pid, peer.pid)
            result = paced(udp_links, frames, rate, options.seconds)
            after = udp_drops()
            drops = {
                where: sum(after.get(p, 0) - before.get(p, 0) for p in ports)
                for where, ports in places.items()
            }
            loss = per(result.lost, result.sent, 100) or 0.0
            achieved = per(result.sent, result.seconds) or 0.0
            if achieved < PACE_TOLERANCE * rate:
                verdict = "generator"  # could not send that fast
            elif loss <= LOSS_TARGET_PERCENT:
                verdict = "ok"
            elif 2 * drops["client"] >= result.lost:
                verdict = "generator"  # most losses were the client's own full buffers
            else:
                verdict = "loss"
            steps.append(
                {
                    "target_pps": rate,
                    "achieved_pps": achieved,
                    "sent": result.sent,
                    "received": result.received,
                    "loss_percent": loss,
                    "socket_drops": drops,
                    **meter.read(),
                    "verdict": verdict,
                }
            )
            return verdict

        good, bad, stop = 0, 0, ""
        rate = options.rate_start
        while rate <= RATE_CAP:
            verdict = trial(rate)
            if verdict != "ok":
                bad, stop = (rate, "server") if verdict == "loss" else (0, "generator")
                break
            good, rate = rate, rate * 2
        else:
            stop = "search cap"
        for _ in range(options.bisect_steps if bad else 0):
            middle = (good + bad) // 2
            if bad - middle < max(bad // 50, 1):
                break
            verdict = trial(middle)
            if verdict == "ok":
                good = middle
            elif verdict == "loss":
                bad = middle
            else:
                stop = "generator"
                break
        kernel = kernel_relayed(counters, server.fastpath_counters())
    return {"best_pps": good or None, "limited_by": stop, "steps": steps, **kernel}


def measure_rtt(server: Server, peer: EchoPeer, options: Options) -> dict[str, Any]:
    """Round-trip times through the relay and straight to the peer, interleaved, in µs."""
    relay_us: list[float] = []
    direct_us: list[float] = []
    direct = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    direct.bind((LOOPBACK, 0))
    lost = {"relay": 0, "direct": 0}
    with contextlib.closing(direct), relay_sessions(server, peer, "udp", "channel", 1) as sessions:
        counters = server.fastpath_counters()
        session = sessions[0]
        sock = session.link.sock
        padding = os.urandom(max(options.size - 16, 0))
        deadline = time.perf_counter() + LOAD_DEADLINE
        for sequence in range(options.samples):
            if time.perf_counter() > deadline:
                break
            marker = sequence.to_bytes(8, "big") + os.urandom(8)
            through = session.data_frame(peer.address, "channel", marker + padding)
            for name, out, packet, to, samples in (
                ("relay", sock, through, server.udp, relay_us),
                ("direct", direct, marker + padding, peer.address, direct_us),
            ):
                sample = ping(out, packet, to, marker)
                if sample is None:
                    lost[name] += 1
                else:
                    samples.append(sample)
            time.sleep(RTT_GAP)
        kernel = kernel_relayed(counters, server.fastpath_counters())
    figures: dict[str, Any] = {"samples": options.samples, "lost": lost, **kernel}
    for q in (50, 99):
        through_q, direct_q = percentile(relay_us, q), percentile(direct_us, q)
        figures[f"relay_p{q}_us"] = through_q
        figures[f"direct_p{q}_us"] = direct_q
        figures[f"added_p{q}_us"] = (
            through_q - direct_q if through_q is not None and direct_q is not None else None
        )
    return figures


def ping(sock: socket.socket, packet: bytes, to: tuple[str, int], marker: bytes) -> float | None:
    """Microseconds until a datagram carrying ``marker`` comes back, or None after a second."""
    started = time.perf_counter_ns()
    sock.sendto(packet, to)
    deadline = time.perf_counter() + 1.0
    while (remaining := deadline - time.perf_counter()) > 0:
        if not select.select([sock], [], [], remaining)[0]:
            break
        try:
            data = sock.recv(65535)
        except BlockingIOError:
            continue
        if marker in data:
            return (time.perf_counter_ns() - started) / 1000
    return None


def measure_binding(server: Server, peer: EchoPeer, options: Options) -> dict[str, Any]:
    """Unauthenticated STUN Binding answers per second over UDP, windowed."""
    del peer
    links = [UdpLink(server.udp, buffer=CLIENT_BUFFER) for _ in range(options.clients)]
    try:
        requests = [
            [
                encode(Message(Method.BINDING, MessageClass.REQUEST, os.urandom(12)))
                for _ in range(BINDING_TXIDS)
            ]
            for _ in links
        ]
        links[0].send(requests[0][0])
        answer = wait_frames(links[0], REQUEST_TIMEOUT)
        if not answer or decode(answer[0]).cls != MessageClass.SUCCESS:
            raise RuntimeError("no Binding success answer")
        meter = Meter(server.pid)
        result = pump(links, requests, options.window, 1 << 62, options.seconds)
        figures = meter.read()
    finally:
        for link in links:
            link.close()
    return {
        "sent": result.sent,
        "answered": result.received,
        "seconds": result.seconds,
        "answers_per_s": per(result.received, result.seconds),
        **figures,
        "cpu_us_per_answer": per(figures["server_cpu_s"], result.received, 1e6),
    }


def measure_allocations(server: Server, peer: EchoPeer, options: Options) -> dict[str, Any]:
    """Authenticated allocations per second: fresh socket, 401, Allocate, Refresh(0)."""
    del peer
    meter = Meter(server.pid)
    run = allocate_many(
        server, window=options.window, count=None, seconds=options.seconds, delete=True
    )
    figures = meter.read()
    return {
        "completed": run.completed,
        "failures": dict(run.failures),
        "seconds": run.seconds,
        "allocations_per_s": per(run.completed, run.seconds),
        **figures,
        "cpu_us_per_allocation": per(figures["server_cpu_s"], run.completed, 1e6),
    }


MEASURES: dict[str, Callable[[Server, EchoPeer, Options], dict[str, Any]]] = {
    "cpu": measure_cpu,
    "uclient": measure_uclient,
    "rate": measure_rate,
    "rtt": measure_rtt,
    "binding": measure_binding,
    "allocations": measure_allocations,
}
