"""Garbage-collector pauses of the core with many allocations: Python's default against turnd's.

    python -m bench.gcpause [--allocations 20000] [--churn 10000]

Theory of operation: an in-memory core (testkit.memory, no sockets) gets ``--allocations``
allocations, each with a channel, then ``--churn`` more are made and deleted one after the other
(allocate, bind a channel, Refresh 0), as a busy server's clients come and go. gc.callbacks time
every collection. It runs twice, each in its own process: once with the interpreter's default
collector, once with turnd's policy (turnd.gc_policy.settle: start-up frozen, no full
collection on the interpreter's schedule). It prints, for the churn phase: full collections,
the longest pause of any collection, and all pauses added up. A pause stops the whole event
loop: nothing is relayed meanwhile. Figures only, no thresholds.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from typing import Any

from stun.addresses import Address
from testkit.memory import PEER, REALM, SERVER, CoreWorld
from turnd import gc_policy
from turnd.core.settings import CoreSettings

POLICIES = ("default", "turnd")


class Pauses:
    """Every collection's duration, by generation, from gc.callbacks."""

    def __init__(self) -> None:
        self.started = 0.0
        self.reset()

    def reset(self) -> None:
        self.runs = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self.longest = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
            return
        took = time.perf_counter() - self.started
        generation = info["generation"]
        self.runs[generation] += 1
        self.seconds[generation] += took
        self.longest = max(self.longest, took)


def client_address(phase: int, n: int) -> Address:
    return Address(f"10.{phase}.{n // 250 % 250}.{n % 250 + 1}", 1024 + n // 62500)


def run_policy(policy: str, allocations: int, churn: int) -> dict[str, Any]:
    """One policy's figures (call in a fresh process: the collector's state is global)."""
    settings = CoreSettings(
        realm=REALM,
        relay_ipv4=SERVER.host,
        max_allocations_per_user=allocations + churn,
        max_allocations_per_ip=allocations + churn,
        unauthenticated_rate=1e9,
        unauthenticated_burst=1e9,
        port_min=1024,
    )
    world = CoreWorld(settings, allow=["198.51.100.0/24"])
    if policy == "turnd":
        gc_policy.settle()
    pauses = Pauses()
    gc.callbacks.append(pauses)
    for n in range(allocations):
        client = world.client(address=client_address(0, n))
        client.allocate()
        client.channel_bind(0x4000, PEER)
    held = len(world.server.allocations)
    pauses.reset()
    started = time.perf_counter()
    for n in range(churn):
        client = world.client(address=client_address(1, n))
        client.allocate()
        client.channel_bind(0x4000, PEER)
        client.refresh(0)
    return {
        "policy": policy,
        "allocations": held,
        "churn": churn,
        "churn_seconds": time.perf_counter() - started,
        "tracked_objects": len(gc.get_objects()),
        "full_collections": pauses.runs[2],
        "young_collections": pauses.runs[0] + pauses.runs[1],
        "longest_pause_ms": pauses.longest * 1e3,
        "total_pause_ms": sum(pauses.seconds) * 1e3,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--allocations", type=int, default=20_000, help="held throughout")
    parser.add_argument("--churn", type=int, default=10_000, help="made and deleted after")
    parser.add_argument("--policy", choices=POLICIES, help=argparse.SUPPRESS)  # one child run
    args = parser.parse_args(argv)
    if args.policy:
        print(json.dumps(run_policy(args.policy, args.allocations, args.churn)))
        return 0
    print(
        f"bench.gcpause: {args.allocations:,} allocations held, {args.churn:,} made and deleted;"
        " collector pauses during the churn"
    )
    children = [
        subprocess.Popen(
            [
                *(sys.executable, "-m", "bench.gcpause", "--policy", policy),
                *("--allocations", str(args.allocations), "--churn", str(args.churn)),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for policy in POLICIES
    ]
    results = []
    for child in children:
        out, _ = child.communicate()
        if child.returncode != 0:
            print(f"a run failed with exit code {child.returncode}")
            return 1
        results.append(json.loads(out.strip().splitlines()[-1]))
    print(
        f"{'collector':12}{'held':>8}{'objects':>10}{'full runs':>11}{'longest ms':>12}"
        f"{'total ms':>10}"
    )
    for r in results:
        print(
            f"{r['policy']:12}{r['allocations']:>8,}{r['tracked_objects']:>10,}"
            f"{r['full_collections']:>11}{r['longest_pause_ms']:>12.1f}{r['total_pause_ms']:>10.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
