"""A 3-node anycast cluster in network namespaces, driven by coturn's turnutils_uclient.

The router namespace spreads flows to the service IP over the nodes by ECMP (L4 hash), which
knows nothing of turnd's owners: most datagrams reach a node that does not own their flow and
cross the backbone. uclient's counts must still add up exactly: 0 lost packets, while routes
change under it, a node joins, and (separately) a node dies — which may only cost that node's own
allocations.

One run uses uclient's RTP/RTCP pairs: the RTCP allocation redeems the RTP one's EVEN-PORT
reservation, so it lives on the node holding the reserved port whatever node its flow hashes to
(the flow is pinned there on every node). The other runs use ``-c`` (no RTCP).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.cluster_bed import TestBed
from testkit.cluster_nodes import (
    BACKBONE_PORT,
    CLUSTER_KEY,
    CONFIGURED,
    PASSWORD,
    USER,
    ClusterNodes,
    node_address,
)
from testkit.coturn import (
    PEER,
    UCLIENT,
    UclientReport,
    find_tool,
    needs_tools,
    parse_uclient_output,
)

pytestmark = needs_tools(UCLIENT, PEER)

REPO = Path(__file__).resolve().parents[2]

PEER_PORT = 3480
SESSIONS = 16


@pytest.fixture(scope="module")
def cluster(testbed: TestBed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterNodes]:
    """turnd on nodes 1-3 of the bed (4 configured), all seeing each other; an echo peer."""
    nodes = ClusterNodes(testbed, tmp_path_factory.mktemp("cluster"))
    peer_tool = find_tool(PEER)
    assert peer_tool is not None
    testbed.popen(
        testbed.peer_ns,
        [peer_tool, "-L", testbed.peer_address, "-p", str(PEER_PORT)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for index in (1, 2, 3):
            nodes.start(index)
        nodes.wait_for_view({1, 2, 3})
        yield nodes
    finally:
        nodes.stop_all()


def uclient_argv(
    bed: TestBed, messages: int, *, send_indications: bool = False, rtcp: bool = False
) -> list[str]:
    """uclient against the service IP; with ``rtcp``, RTP/RTCP pairs whose second allocation
    redeems the first one's EVEN-PORT reservation (often on another node than its flow's)."""
    tool = find_tool(UCLIENT)
    assert tool is not None
    argv = [tool, "-p", "3478", "-u", USER, "-w", PASSWORD, "-m", str(SESSIONS)]
    argv += ["-n", str(messages), "-l", "120", "-e", bed.peer_address, "-r", str(PEER_PORT)]
    argv += [] if rtcp else ["-c"]
    return argv + (["-s"] if send_indications else []) + [bed.service_ip]


def start_uclient(bed: TestBed, messages: int) -> subprocess.Popen[str]:
    """uclient (channels) in the background, its output collected for :func:`report`."""
    argv = uclient_argv(bed, messages)
    return bed.popen(
        bed.client_ns, argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def report(done: subprocess.CompletedProcess[str] | tuple[str, int]) -> UclientReport:
    output, code = (
        (done.stdout + done.stderr, done.returncode) if not isinstance(done, tuple) else done
    )
    return parse_uclient_output(output, returncode=code)


def totals(nodes: ClusterNodes) -> dict[str, int]:
    """Counters summed over the running nodes."""
    summed: dict[str, int] = {}
    for index in nodes.processes:
        found = nodes.control(index, "/v1/cluster/nodes")["counters"]
        names = ("forwarded_client", "forwarded_peer", "second_chance", "arrived_client")
        for name in (*names, "relayed_to_client"):
            summed[name] = summed.get(name, 0) + int(found[name])
        status = nodes.control(index, "/v1/status")
        summed["allocations"] = summed.get("allocations", 0) + int(status["allocations"])
    return summed


def lossless(result: UclientReport, messages: int) -> None:
    expected = SESSIONS * messages
    assert result.sent_packets == expected, result.describe()
    assert result.received_packets == expected, result.describe()
    assert result.lost_packets == 0, result.describe()


@pytest.mark.parametrize(
    ("send_indications", "rtcp"),
    [
        pytest.param(
            False,
            False,
            id="channels",
            # Known defect, tracked by issue 17 (its first section): this first run after the
            # cluster starts loses whole sessions in about half the runs on a 2-core machine
            # (120 of 640 here, 3 whole sessions), already on 8b24264. Not strict, so that a
            # pass shows as XPASS; issue 17 removes this mark with the root-cause fix.
            marks=pytest.mark.xfail(
                strict=False, reason="issue 17: whole-session losses on the first cluster run"
            ),
        ),
        pytest.param(True, False, id="send"),
        pytest.param(False, True, id="rtp-rtcp-reservations"),
    ],
)
def test_uclient_relays_through_the_cluster_without_loss(
    cluster: ClusterNodes, testbed: TestBed, send_indications: bool, rtcp: bool
) -> None:
    """Every packet comes back although most of them cross the backbone to their owner."""
    before = totals(cluster)
    messages = 40
    argv = uclient_argv(testbed, messages, send_indications=send_indications, rtcp=rtcp)
    result = report(
        testbed.run(testbed.client_ns, argv, timeout=120, capture_output=True, text=True)
    )
    lossless(result, messages)
    after = totals(cluster)
    grown = {name: after[name] - before[name] for name in after}
    # Client side: of the client datagrams the nodes got from the network, those sent on to
    # their owner. Peer side: every peer datagram relayed to a client either reached the owner
    # of its relay port first or was forwarded to it once.
    client_share = grown["forwarded_client"] / grown["arrived_client"]
    peer_share = grown["forwarded_peer"] / grown["relayed_to_client"]
    print(f"\nforwarded share: client side {client_share:.0%}, peer side {peer_share:.0%}")
    assert client_share > 0.2 and peer_share > 0.2, "ECMP sends most flows to another node"


def test_routes_change_and_a_node_joins_mid_run_without_loss(
    cluster: ClusterNodes, testbed: TestBed
) -> None:
    """While uclient runs: a next hop is removed and put back, then node 4 starts and becomes
    a next hop. Flows that move keep reaching their allocation (forwarding and second chance)."""
    messages = 600  # 12 s at uclient's 20 ms interval
    process = start_uclient(testbed, messages)
    time.sleep(2.5)  # choreography, not a measurement: let every session start sending
    testbed.set_next_hops([1, 2])
    time.sleep(1.0)
    testbed.set_next_hops([1, 2, 3])
    testbed.add_node()
    cluster.start(4)
    cluster.wait_for_view({1, 2, 3, 4})
    testbed.set_next_hops([1, 2, 3, 4])
    output, _ = process.communicate(timeout=120)
    result = report((output, process.returncode))
    lossless(result, messages)
    found = totals(cluster)
    print(f"\nsecond chance used {found['second_chance']} times")


FORGER = """
import socket, sys
from forwarding.frames import BackboneCodec, Frame, FrameType
from stun.addresses import Address
from turnd.cluster import cluster_keys
from turnd.config import Secret

key, target = sys.argv[1], (sys.argv[2], int(sys.argv[3]))
keys, send = cluster_keys(Secret(key), ())
nowhere = Address("0.0.0.0", 0)

def frame(origin, payload=b"\\x00"):
    return Frame(FrameType.HEARTBEAT, origin, 0, "udp", nowhere, nowhere, payload)

sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
old = BackboneCodec(keys, send, 2, 1, [1, 2, 3, 4])  # node 2's key, an epoch long gone
stranger = BackboneCodec(keys, send, 9, 2**62, [1, 2, 3, 4, 9])  # right key, unknown node id
wrong = BackboneCodec({send: bytes(32)}, send, 3, 2**62, [1, 2, 3, 4])  # right id, wrong key
right = BackboneCodec(keys, send, 3, 2**62, [1, 2, 3, 4])  # node 3's key: tampered below
tampered = bytearray(right.seal(frame(3)))
tampered[-5] ^= 0x20
for data in (b"\\x01", b"\\x07" + bytes(40), old.seal(frame(2)), stranger.seal(frame(9)),
             wrong.seal(frame(3)), bytes(tampered)):
    sock.sendto(data, target)
"""


def test_forged_and_replayed_frames_are_dropped_and_counted_by_a_node(
    cluster: ClusterNodes, testbed: TestBed
) -> None:
    """From the client namespace, frames aimed at node 1's backbone socket: too short, another
    version, an old epoch of node 2 (replay), an unknown node id, one under a wrong key and one
    sealed right but altered on the way. Each
    is dropped and counted by reason; node 1 keeps seeing the real node 2."""
    before = cluster.control(1, "/v1/cluster/nodes")["counters"]["drops"]
    argv = [sys.executable, "-c", FORGER, CLUSTER_KEY, node_address(1), str(BACKBONE_PORT)]
    testbed.run(testbed.client_ns, argv, timeout=60, check=True, cwd=REPO)
    expected = {"short": 1, "version": 1, "replay": 1, "unknown_node": 1, "auth": 2}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        drops = cluster.control(1, "/v1/cluster/nodes")["counters"]["drops"]
        grown = {reason: drops.get(reason, 0) - before.get(reason, 0) for reason in expected}
        if grown == expected:
            break
        time.sleep(0.05)
    assert grown == expected
    cluster.wait_for_view(set(cluster.processes))


def test_killing_a_node_costs_only_its_own_allocations(
    cluster: ClusterNodes, testbed: TestBed, tmp_path: Path
) -> None:
    """SIGKILL one node while uclient runs: the sessions on other nodes lose nothing; the lost
    packets are at most those of the sessions with an allocation on the dead node."""
    messages = 300

    def allocations() -> dict[int, int]:
        return {i: int(cluster.control(i, "/v1/status")["allocations"]) for i in cluster.processes}

    baseline = allocations()  # earlier runs' allocations live on until they expire
    process = start_uclient(testbed, messages)
    # uclient makes more than one allocation per session: wait until the count stops growing.
    deadline = time.monotonic() + 60
    held: dict[int, int] = {}
    steady_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = {i: n - baseline[i] for i, n in allocations().items()}
        if now != held:
            held, steady_since = now, time.monotonic()
        elif sum(held.values()) >= SESSIONS and time.monotonic() - steady_since > 1.0:
            break
    victim = max(held, key=lambda i: held[i])
    on_victim = held[victim]
    assert on_victim > 0, "the victim holds some sessions"
    cluster.kill(victim)
    testbed.set_next_hops([i for i in testbed.next_hops if i != victim])
    output, _ = process.communicate(timeout=120)
    result = report((output, process.returncode))
    assert result.sent_packets == SESSIONS * messages, result.describe()
    # Only the victim's sessions lose packets, and at most all of theirs.
    assert 0 < result.lost_packets <= on_victim * messages, result.describe()
    survivors = set(cluster.processes)
    cluster.wait_for_view(survivors)
    print(
        f"\nkilled node {victim} holding {on_victim} of {sum(held.values())} allocations:",
        f"lost {result.lost_packets} packets",
    )


def test_a_revocation_reaches_every_node_and_one_that_was_down_catches_up(
    cluster: ClusterNodes,
) -> None:
    """turnctl revoke on one node: every running node logs the revocation; the node killed
    earlier, started again, asks the others when it sees them and revokes it too."""
    first, *others = sorted(cluster.processes)
    down = [index for index in range(1, CONFIGURED + 1) if index not in cluster.processes]
    cluster.control(first, f"/v1/revoke/{USER}", method="POST")
    wait_for_revocation(cluster, others)
    for index in down:
        cluster.start(index)
    wait_for_revocation(cluster, down)


def wait_for_revocation(cluster: ClusterNodes, indices: list[int]) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if all(f'"username": "{USER}"' in _revoked_lines(cluster, i) for i in indices):
            return
        time.sleep(0.05)
    assert {i: _revoked_lines(cluster, i) for i in indices} == "every node logs auth.revoked"


def _revoked_lines(cluster: ClusterNodes, index: int) -> str:
    return "".join(line for line in cluster.log(index).splitlines() if '"auth.revoked"' in line)
