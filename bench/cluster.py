"""What a forwarded packet costs: round trips through a 3-node cluster in network namespaces.

    sudo python -m bench.cluster [--flows 24] [--pings 200]

Builds the test bed (testkit/cluster_bed.py: router with an ECMP route to the service IP, three
node namespaces, a client and a peer namespace), starts turnd on each node, then runs two phases
from the client namespace, each with ``--flows`` allocations pinging an echo peer over ChannelData:

1. *one entry node*: the router's only next hop is node 1, so every datagram enters at node 1.
   Flows node 1 owns are answered without the backbone; the others cross it on the way in (the
   client's datagram to its owner) and on the way back (the peer's echo, caught by node 1 on the
   relay port of the owner's slice). The median round trip of each group, and the difference —
   the extra latency of a forwarded packet, both directions together — are printed.
2. *ECMP over all nodes*: the forwarded share, read from every node's counters: of the client
   datagrams the nodes got from the network, those sent on to their owner; of the peer datagrams
   relayed to clients, those that reached another node first.

Figures are medians over flows of each flow's median round trip; the machine's noise shows in
the spread (p90). Needs root (network namespaces) and prints what it could not do.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ECHO_PORT = 3490
CHANNEL = 0x4000


def inner(server: str, peer: str, flows: int, pings: int, bind: str) -> None:
    """Inside the client namespace: allocate, bind a channel, ping; print one JSON line."""
    from forwarding.hashing import Rendezvous, flow_key
    from stun.addresses import Address
    from testkit.cluster_nodes import PASSWORD, USER
    from testkit.sync import ChannelData, TurnClient, error_code

    host, port = server.rsplit(":", 1)
    peer_host, peer_port = peer.rsplit(":", 1)
    peer_address = Address(peer_host, int(peer_port))
    ring = Rendezvous([1, 2, 3])
    results = []
    for _ in range(flows):
        client = TurnClient((host, int(port)), USER, PASSWORD, bind=bind)
        reply = client.allocate()
        if error_code(reply) is not None:
            raise SystemExit(f"allocate failed: {reply}")
        if error_code(client.channel_bind(CHANNEL, peer_address)) is not None:
            raise SystemExit("channel bind failed")
        times = []
        for index in range(pings):
            payload = b"ping-%d" % index
            start = time.perf_counter()
            client.send_channel_data(CHANNEL, payload)
            while True:
                got = client.receive(2.0)
                if got is None or (isinstance(got, ChannelData) and payload in got.data):
                    break
            if got is not None:
                times.append((time.perf_counter() - start) * 1e6)
        owner = ring.owner(flow_key("udp", client.address, Address(host, int(port))))
        results.append(
            {"owner": owner, "rtt_us": statistics.median(times), "lost": pings - len(times)}
        )
        # Delete it: the kernel may give the next client this one's port again, and an Allocate
        # on a 5-tuple that has an allocation is 437 (RFC 8656 §7.2), as it should be.
        client.refresh(0)
        client.close()
    print(json.dumps(results))


def outer(flows: int, pings: int) -> int:
    from testkit.cluster_bed import TestBed
    from testkit.cluster_nodes import ClusterNodes

    if os.geteuid() != 0:
        print("bench.cluster needs root (network namespaces); nothing measured")
        return 2
    directory = Path(tempfile.mkdtemp(prefix="turnd-bench-cluster-"))
    with TestBed() as bed:
        nodes = ClusterNodes(bed, directory)
        try:
            for index in (1, 2, 3):
                nodes.start(index)
            nodes.wait_for_view({1, 2, 3})
            bed.udp_echo(bed.peer_ns, bed.peer_address, ECHO_PORT, "echo")
            bed.set_next_hops([1])
            found = _run_inner(bed, flows, pings)
            direct = [r["rtt_us"] for r in found if r["owner"] == 1]
            forwarded = [r["rtt_us"] for r in found if r["owner"] != 1]
            lost = sum(r["lost"] for r in found)
            print(f"phase 1, every datagram enters at node 1: {flows} flows x {pings} pings")
            print(f"  owned by node 1 (no backbone):   {_summary(direct)}")
            print(f"  owned by node 2/3 (forwarded):   {_summary(forwarded)}")
            if direct and forwarded:
                extra = statistics.median(forwarded) - statistics.median(direct)
                print(f"  extra round-trip latency of forwarding: {extra:.0f} us")
                print(f"  (= one backbone crossing each way; about {extra / 2:.0f} us per packet)")
            print(f"  lost: {lost}")
            bed.set_next_hops([1, 2, 3])
            before = _counters(nodes)
            found = _run_inner(bed, flows, pings)
            grown = {name: n - before[name] for name, n in _counters(nodes).items()}
            client_share = grown["forwarded_client"] / max(grown["arrived_client"], 1)
            peer_share = grown["forwarded_peer"] / max(grown["relayed_to_client"], 1)
            print(f"phase 2, ECMP over nodes 1-3: {flows} flows x {pings} pings")
            print(f"  forwarded share: client side {client_share:.0%}, peer side {peer_share:.0%}")
            print(f"  lost: {sum(r['lost'] for r in found)}")
        finally:
            nodes.stop_all()
    return 0


def _run_inner(bed: Any, flows: int, pings: int) -> list[dict[str, Any]]:
    argv = [sys.executable, "-m", "bench.cluster", "--inner", f"{bed.service_ip}:3478"]
    argv += [f"{bed.peer_address}:{ECHO_PORT}", "--flows", str(flows), "--pings", str(pings)]
    argv += ["--bind", bed.client_address]
    done = bed.run(bed.client_ns, argv, timeout=600, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"client failed: {done.stdout}{done.stderr}")
    result: list[dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _counters(nodes: Any) -> dict[str, int]:
    """Forwarding counters summed over the nodes."""
    names = ("forwarded_client", "forwarded_peer", "arrived_client", "relayed_to_client")
    total = dict.fromkeys(names, 0)
    for index in nodes.processes:
        counters = nodes.control(index, "/v1/cluster/nodes")["counters"]
        for name in names:
            total[name] += int(counters[name])
    return total


def _summary(values: list[float]) -> str:
    if not values:
        return "no flows"
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
    return f"{len(values)} flows, median {statistics.median(values):.0f} us, p90 {p90:.0f} us"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__)
    parser.add_argument("--flows", type=int, default=24)
    parser.add_argument("--pings", type=int, default=200)
    parser.add_argument("--inner", nargs=2, metavar=("SERVER", "PEER"), help=argparse.SUPPRESS)
    parser.add_argument("--bind", default="0.0.0.0", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inner:
        inner(args.inner[0], args.inner[1], args.flows, args.pings, args.bind)
        return 0
    return outer(args.flows, args.pings)


if __name__ == "__main__":
    raise SystemExit(main())
