"""The service IP on lo (forwarding/netsetup.py) and the namespace test bed the cluster runs on.

The bed is real kernel routing: an ECMP route hashing on the 5-tuple spreads client flows over
the nodes, each node answers from the service IP straight back to the client (direct server
return), and next hops change under a running bed. Every wait has a timeout; no test times
itself.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import attrs
import pytest

from forwarding.netsetup import ensure_service_ip_on_lo
from testkit.cluster_bed import TestBed

pytestmark = pytest.mark.root

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SERVICE_PORT = 3478
BACKBONE_PORT = 4000
PEER_PORT = 5000

#: Client flows per ECMP check: enough that a node missing from the answers is not chance
#: ((2/3)^200 for one of three nodes).
FLOWS = 200

#: Seconds to wait for answers to one round of probes, and rounds per flow (a first datagram can
#: be dropped while the router resolves a neighbour).
PROBE_WAIT = 3.0
PROBE_ROUNDS = 3

#: Seconds any helper process may take before it is killed and the test fails.
RUN_TIMEOUT = 30.0

#: Sends ``flows`` datagrams, each from its own socket (own source port), to each target; prints
#: per target a list with, per flow, [reply source ip, reply source port, reply text, rounds]
#: or null when nothing came back.
PROBE_SCRIPT = """
import json, select, socket, sys, time
spec = json.loads(sys.argv[1])
jobs = []
for host, port in spec["targets"]:
    for flow in range(spec["flows"]):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("0.0.0.0", 0))
        jobs.append({"sock": sock, "to": (host, port), "flow": flow, "answer": None, "rounds": 0})
for _ in range(spec["rounds"]):
    pending = [job for job in jobs if job["answer"] is None]
    if not pending:
        break
    for job in pending:
        job["rounds"] += 1
        job["sock"].sendto(b"probe-%d" % job["flow"], job["to"])
    deadline = time.monotonic() + spec["wait"]
    waiting = {job["sock"]: job for job in pending}
    while waiting and time.monotonic() < deadline:
        readable, _, _ = select.select(list(waiting), [], [], deadline - time.monotonic())
        for sock in readable:
            data, source = sock.recvfrom(65535)
            job = waiting.pop(sock)
            job["answer"] = [source[0], source[1], data.decode(), job["rounds"]]
out = []
for index in range(len(spec["targets"])):
    out.append([job["answer"] for job in jobs[index * spec["flows"]:(index + 1) * spec["flows"]]])
print(json.dumps(out))
"""


@attrs.frozen
class Answer:
    """One reply: where it came from, the echo's tag, whom the echo saw, what it echoed."""

    source: str
    source_port: int
    tag: str
    seen_from: str
    payload: str
    rounds: int


def run_probe(
    bed: TestBed,
    netns: str,
    targets: Sequence[Sequence[object]],
    flows: int,
    *,
    wait: float = PROBE_WAIT,
    rounds: int = PROBE_ROUNDS,
    script: str = PROBE_SCRIPT,
) -> Any:
    """Run the probe ``script`` in ``netns``; what it prints: per target, per flow, the raw
    answer or None."""
    spec = {"targets": targets, "flows": flows, "wait": wait, "rounds": rounds}
    done = bed.run(
        netns,
        [sys.executable, "-c", script, json.dumps(spec)],
        timeout=RUN_TIMEOUT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


def probe(
    bed: TestBed, netns: str, targets: list[tuple[str, int]], flows: int
) -> list[list[Answer | None]]:
    """Send ``flows`` one-datagram flows from ``netns`` to each target; the answers per target."""
    results: list[list[Answer | None]] = []
    for per_target in run_probe(bed, netns, targets, flows):
        answers: list[Answer | None] = []
        for raw in per_target:
            if raw is None:
                answers.append(None)
                continue
            tag, seen_ip, _seen_port, payload = raw[2].split(" ", 3)
            answers.append(Answer(raw[0], raw[1], tag, seen_ip, payload, raw[3]))
        results.append(answers)
    return results


def ask_service(bed: TestBed) -> list[Answer]:
    """FLOWS flows from the client to the service IP; fails unless every one is answered."""
    (answers,) = probe(bed, bed.client_ns, [(bed.service_ip, SERVICE_PORT)], FLOWS)
    lost = [flow for flow, answer in enumerate(answers) if answer is None]
    assert not lost, f"{len(lost)} of {FLOWS} client flows got no answer (flows {lost[:10]}...)"
    return [answer for answer in answers if answer is not None]


def shares(answers: list[Answer]) -> Counter[int]:
    """Flows answered per node index; printed so a run shows how ECMP spread them."""
    counts = Counter(int(answer.tag) for answer in answers)
    spread = ", ".join(
        f"node {i}: {n} ({100 * n / len(answers):.0f} %)" for i, n in sorted(counts.items())
    )
    retried = sum(1 for answer in answers if answer.rounds > 1)
    print(f"ECMP share of {len(answers)} flows: {spread}; flows needing a resend: {retried}")
    return counts


@pytest.fixture(scope="module")
def service_echoes(testbed: TestBed) -> Iterator[dict[int, subprocess.Popen[str]]]:
    """An echo bound to service_ip:3478 in every node, tagged with the node's index; tests that
    add nodes add their echo here."""
    echoes = {
        node.index: testbed.udp_echo(node.netns, testbed.service_ip, SERVICE_PORT, str(node.index))
        for node in testbed.nodes
    }
    yield echoes
    for proc in echoes.values():
        testbed.stop(proc)


# --- forwarding.netsetup -------------------------------------------------------------------


def show_lo(netns: str, what: str) -> str:
    """What ``ip -o <what> show dev lo`` prints inside ``netns`` (``addr`` or ``link``)."""
    return subprocess.run(
        ["ip", "-n", netns, "-o", what, "show", "dev", "lo"],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=True,
    ).stdout


def lo_addresses(netns: str) -> str:
    """What ``ip -o addr show dev lo`` prints inside ``netns``."""
    return show_lo(netns, "addr")


@pytest.mark.parametrize("address", ["10.77.255.1", "fd77::1"])
def test_service_ip_is_added_once_in_a_namespace(scratch_netns: str, address: str) -> None:
    """ensure_service_ip_on_lo adds the host address once, then reports it is there already
    (in a throwaway namespace, never the host's lo)."""
    assert f" {address}/" not in lo_addresses(scratch_netns)
    assert ensure_service_ip_on_lo(address, netns=scratch_netns) is True
    assert f" {address}/" in lo_addresses(scratch_netns)
    assert ensure_service_ip_on_lo(address, netns=scratch_netns) is False
    assert lo_addresses(scratch_netns).count(f" {address}/") == 1


def test_service_ip_is_a_host_route_on_lo(scratch_netns: str) -> None:
    """The address lands on lo with a /32, and lo is up so it delivers."""
    ensure_service_ip_on_lo("10.77.255.1", netns=scratch_netns)
    assert "10.77.255.1/32" in lo_addresses(scratch_netns)
    assert ",UP" in show_lo(scratch_netns, "link")


def test_without_cap_net_admin_is_permission_error_naming_it(scratch_netns: str) -> None:
    """As an unprivileged user (inside a throwaway namespace) adding is refused with
    PermissionError that names CAP_NET_ADMIN."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    code = (
        "from forwarding.netsetup import ensure_service_ip_on_lo\n"
        "try:\n"
        "    ensure_service_ip_on_lo('10.77.255.1')\n"
        "except PermissionError as error:\n"
        "    print('PermissionError', error)\n"
    )
    unprivileged = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    done = subprocess.run(
        ["ip", "netns", "exec", scratch_netns, *unprivileged, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )
    assert done.stdout.startswith("PermissionError"), done.stdout + done.stderr
    assert "CAP_NET_ADMIN" in done.stdout
    assert " 10.77.255.1/" not in lo_addresses(scratch_netns)


def test_bad_address_is_value_error() -> None:
    """Anything but one IP address is refused before netlink is touched."""
    with pytest.raises(ValueError, match="not an IP address"):
        ensure_service_ip_on_lo("10.77.255.1/32")


# --- the bed ---------------------------------------------------------------------------------


def test_ecmp_spreads_client_flows_and_nodes_answer_from_the_service_ip(
    testbed: TestBed, service_echoes: dict[int, subprocess.Popen[str]]
) -> None:
    """Every client flow is answered, from service_ip:3478 (direct return past rp_filter), by a
    node that saw the client's own address; the flows land on more than one node."""
    answers = ask_service(testbed)
    assert {(a.source, a.source_port) for a in answers} == {(testbed.service_ip, SERVICE_PORT)}
    assert {a.seen_from for a in answers} == {testbed.client_address}
    assert all(a.payload.startswith("probe-") for a in answers)
    counts = shares(answers)
    assert set(counts) <= {node.index for node in testbed.nodes}
    assert len(counts) > 1, f"all {FLOWS} flows went to one node: {dict(counts)}"


def test_a_flow_stays_on_its_node(
    testbed: TestBed, service_echoes: dict[int, subprocess.Popen[str]]
) -> None:
    """Resending on one 5-tuple reaches the same node (the hash is per flow, not per packet)."""
    target = [(testbed.service_ip, SERVICE_PORT)]
    script = PROBE_SCRIPT.replace(
        'sock.bind(("0.0.0.0", 0))', 'sock.bind(("0.0.0.0", 40000 + flow))'
    )
    tags = set()
    for _ in range(5):
        (answer,) = run_probe(testbed, testbed.client_ns, target, 1, rounds=1, script=script)[0]
        assert answer is not None
        tags.add(answer[2].split(" ", 1)[0])
    assert len(tags) == 1, tags


def test_next_hops_limit_which_nodes_answer(
    testbed: TestBed, service_echoes: dict[int, subprocess.Popen[str]]
) -> None:
    """With next hops 1 and 2 only, nodes 1 and 2 answer all flows; restoring brings the rest
    back."""
    everyone = [node.index for node in testbed.nodes]
    try:
        testbed.set_next_hops([1, 2])
        assert testbed.next_hops == (1, 2)
        assert set(shares(ask_service(testbed))) == {1, 2}
    finally:
        testbed.set_next_hops(everyone)
    assert set(shares(ask_service(testbed))) == set(everyone)


def test_no_next_hops_means_no_answer_then_back(
    testbed: TestBed, service_echoes: dict[int, subprocess.Popen[str]]
) -> None:
    """An empty next-hop set removes the route (nothing answers); setting hops again restores."""
    everyone = [node.index for node in testbed.nodes]
    try:
        testbed.set_next_hops([])
        testbed.set_next_hops([])  # removing an absent route is fine
        target = [(testbed.service_ip, SERVICE_PORT)]
        answers = run_probe(testbed, testbed.client_ns, target, 3, wait=0.5, rounds=1)
        assert answers == [[None, None, None]]
    finally:
        testbed.set_next_hops(everyone)
    assert len(ask_service(testbed)) == FLOWS


def test_added_node_takes_flows_once_it_is_a_next_hop(
    testbed: TestBed, service_echoes: dict[int, subprocess.Popen[str]]
) -> None:
    """add_node makes a linked node outside the route; named in set_next_hops, it answers some
    flows."""
    before = [node.index for node in testbed.nodes]
    node = testbed.add_node()
    assert node.index == len(before) + 1
    assert testbed.next_hops == tuple(before)
    service_echoes[node.index] = testbed.udp_echo(
        node.netns, testbed.service_ip, SERVICE_PORT, str(node.index)
    )
    assert node.index not in shares(ask_service(testbed))
    testbed.set_next_hops([*before, node.index])
    counts = shares(ask_service(testbed))
    assert node.index in counts
    assert set(counts) <= {*before, node.index}


def test_nodes_reach_each_other_and_the_peer(testbed: TestBed) -> None:
    """Over UDP every node reaches every other node's address (the backbone) and the peer, and
    is seen there by its own address."""
    started = [testbed.udp_echo(testbed.peer_ns, testbed.peer_address, PEER_PORT, "peer")]
    try:
        for node in testbed.nodes:
            started.append(
                testbed.udp_echo(node.netns, node.address, BACKBONE_PORT, f"node{node.index}")
            )
        for node in testbed.nodes:
            others = [other for other in testbed.nodes if other != node]
            targets = [(other.address, BACKBONE_PORT) for other in others]
            targets.append((testbed.peer_address, PEER_PORT))
            results = probe(testbed, node.netns, targets, flows=1)
            for (host, port), (answer,) in zip(targets, results, strict=True):
                assert answer is not None, f"node {node.index} got no answer from {host}:{port}"
                assert (answer.source, answer.source_port) == (host, port)
                assert answer.seen_from == node.address
            assert [r[0].tag for r in results if r[0]] == [f"node{o.index}" for o in others] + [
                "peer"
            ]
    finally:
        for proc in started:
            testbed.stop(proc)


def test_popen_refuses_namespaces_outside_the_bed(testbed: TestBed) -> None:
    """Processes only start inside the bed's own namespaces."""
    with pytest.raises(ValueError, match="not a namespace of this bed"):
        testbed.popen("some-other-netns", ["true"])


def test_destroy_removes_every_namespace_and_process() -> None:
    """A second, small bed: destroy kills its processes by PID and removes its namespaces; a
    second destroy is harmless."""
    from testkit.cluster_bed import list_namespaces
    from tests.cluster.conftest import require_namespaces

    require_namespaces()
    with TestBed(nodes=1, prefix="turnd-tbd") as bed:
        names = bed.namespaces
        assert set(names) <= set(list_namespaces())
        sleeper = bed.popen(bed.nodes[0].netns, ["sleep", "600"])
    assert sleeper.returncode is not None
    assert not set(names) & set(list_namespaces())
    bed.destroy()


def test_stale_namespaces_of_dead_runs_are_removed() -> None:
    """A namespace named for a creating PID that no longer exists is removed; one of a live
    PID (this process) is kept."""
    from testkit.cluster_bed import (
        _create_namespace,
        _remove_namespace,
        list_namespaces,
        remove_stale_namespaces,
    )
    from tests.cluster.conftest import require_namespaces

    require_namespaces()
    dead_pid = subprocess.Popen(["true"])
    dead_pid.wait(timeout=RUN_TIMEOUT)
    stale = f"turnd-tbs-{dead_pid.pid}-abcdef-x"
    live = f"turnd-tbs-{os.getpid()}-abcdef-x"
    _create_namespace(stale)
    _create_namespace(live)
    try:
        assert remove_stale_namespaces("turnd-tbs") == [stale]
        assert live in list_namespaces()
        assert stale not in list_namespaces()
    finally:
        _remove_namespace(stale)
        _remove_namespace(live)
