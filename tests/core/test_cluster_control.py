"""The CONTROL operations between cluster nodes (turnd/core/cluster_control.py), row by row.

Every row of ``CONTROL_OPS`` is run with a body that fits and with bodies that break its schema
(dropped, counted ``backbone.drop.malformed``, nothing done); an op no row names is counted
``backbone.drop.unknown_control``. The frames go through the receiving node's real codec.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from forwarding.frames import Frame, FrameType
from stun.addresses import Address
from tests.core.cluster_world import MemoryCluster
from tests.core.harness import SERVER
from turnd.core.actions import Action, FiveTuple, ForwardToNode, RevokeUser, Transport
from turnd.core.cluster import NOWHERE, ClusterNode
from turnd.core.cluster_control import CONTROL_OPS, flow_text

FLOW = FiveTuple(Transport.UDP, Address("203.0.113.5", 40000), SERVER)
OTHER_FLOW = FiveTuple(Transport.UDP, Address("203.0.113.6", 40000), SERVER)


def control(cluster: MemoryCluster, body: Any, sender: int = 2, to: int = 1) -> list[Action]:
    """``body`` (JSON) in a CONTROL frame from ``sender``, opened by node ``to``."""
    frame = cluster.nodes[sender].tell(to, body)
    return cluster.nodes[to].backbone_frame(frame.data, cluster.now)


def raw_control(cluster: MemoryCluster, payload: bytes, to: int = 1) -> list[Action]:
    """A CONTROL frame from node 2 whose payload is ``payload`` as is."""
    sender = cluster.nodes[2]
    frame = Frame(FrameType.CONTROL, 2, 0, "udp", NOWHERE, NOWHERE, payload)
    return cluster.nodes[to].backbone_frame(sender.codec.seal(frame), cluster.now)


def opened(cluster: MemoryCluster, frames: list[Action], at: int) -> list[dict[str, Any]]:
    """The JSON bodies of CONTROL frames (ForwardToNode to ``at``), opened by node ``at``."""
    codec = cluster.nodes[at].codec
    bodies = []
    for frame in frames:
        assert isinstance(frame, ForwardToNode) and frame.node == at
        bodies.append(json.loads(codec.open(frame.data).payload))
    return bodies


def check_pin(cluster: MemoryCluster, actions: list[Action]) -> None:
    assert actions == []
    assert cluster.nodes[1].pins == {FLOW: 2, OTHER_FLOW: 3}


def check_unpin(cluster: MemoryCluster, actions: list[Action]) -> None:
    assert actions == []
    assert cluster.nodes[1].pins == {OTHER_FLOW: 3}


def check_revoke(cluster: MemoryCluster, actions: list[Action]) -> None:
    assert actions == [RevokeUser("carol"), RevokeUser("dave")]  # once each, not the held ones


def check_revocations(cluster: MemoryCluster, actions: list[Action]) -> None:
    assert opened(cluster, actions, at=2) == [
        {"op": "revoke", "usernames": ["alice", "bob"]},
        {"op": "pin", "flow": flow_text(FLOW)},
    ]


def prepare(node: ClusterNode) -> None:
    """Node 1 knows two pins, holds one flow pinned to itself and two revocations."""
    node.pins.update({FLOW: 3, OTHER_FLOW: 3})
    node.pinned_here.add(FLOW)
    node.revoked = lambda: {"bob", "alice"}


#: Per row: a body that fits, what it must do, and bodies that break the row's schema.
ROWS: dict[str, tuple[dict[str, Any], Callable[[MemoryCluster, list[Action]], None], list[Any]]] = {
    "pin": (
        {"op": "pin", "flow": flow_text(FLOW)},
        check_pin,
        [
            {"op": "pin"},
            {"op": "pin", "flow": "udp 203.0.113.5:40000"},
            {"op": "pin", "flow": ["udp", "203.0.113.5", "40000", SERVER.host, SERVER.port]},
            {"op": "pin", "flow": ["sctp", "203.0.113.5", 40000, SERVER.host, SERVER.port]},
            {"op": "pin", "flow": ["udp", "203.0.113.5", 40000, SERVER.host]},
        ],
    ),
    "unpin": (
        {"op": "unpin", "flow": flow_text(FLOW)},
        check_unpin,
        [{"op": "unpin"}, {"op": "unpin", "flow": [1, 2, 3, 4, 5]}],
    ),
    "revoke": (
        {"op": "revoke", "usernames": ["alice", "carol", "bob", "dave", "carol"]},
        check_revoke,
        [
            {"op": "revoke"},
            {"op": "revoke", "username": 7},
            {"op": "revoke", "usernames": "alice"},
            {"op": "revoke", "usernames": ["alice", None]},
        ],
    ),
    "revocations?": ({"op": "revocations?"}, check_revocations, []),
}


def test_every_control_op_has_a_row_here() -> None:
    """A new operation needs its cases below: the rows tested are the rows of the table."""
    assert set(ROWS) == set(CONTROL_OPS)


@pytest.mark.parametrize("op", sorted(ROWS))
def test_a_body_that_fits_its_row_runs_its_handler(op: str) -> None:
    """Each op, with a body of its schema, does what its row says; nothing is dropped."""
    cluster = MemoryCluster(3)
    node = cluster.nodes[1]
    prepare(node)
    body, check, _ = ROWS[op]
    check(cluster, control(cluster, body))
    assert not any(key.startswith("backbone.drop.") for key in node.stats)


@pytest.mark.parametrize(
    ("op", "index"), [(op, i) for op in sorted(ROWS) for i in range(len(ROWS[op][2]))]
)
def test_a_body_that_breaks_its_rows_schema_is_dropped_and_counted(op: str, index: int) -> None:
    """A missing field or a field of the wrong JSON type: backbone.drop.malformed, no effect."""
    cluster = MemoryCluster(3)
    node = cluster.nodes[1]
    prepare(node)
    pins = dict(node.pins)
    assert control(cluster, ROWS[op][2][index]) == []
    assert node.stats["backbone.drop.malformed"] == 1
    assert node.pins == pins


def test_one_name_revokes_as_a_list_of_one() -> None:
    """``username`` (an operator's revocation, broadcast) is the other shape of ``revoke``."""
    cluster = MemoryCluster(3)
    assert control(cluster, {"op": "revoke", "username": "alice"}) == [RevokeUser("alice")]
    assert control(cluster, {"op": "revoke", "username": ""}) == [RevokeUser("")]


@pytest.mark.parametrize(
    "body", [{"op": "rekey"}, {"op": "Pin", "flow": flow_text(FLOW)}, {}, {"op": 3}, {"op": None}]
)
def test_an_op_no_row_names_is_dropped_and_counted(body: dict[str, Any]) -> None:
    """An unknown, missing or non-string op: backbone.drop.unknown_control."""
    cluster = MemoryCluster(3)
    node = cluster.nodes[1]
    assert control(cluster, body) == []
    assert node.stats["backbone.drop.unknown_control"] == 1
    assert node.stats["backbone.drop.malformed"] == 0


@pytest.mark.parametrize("payload", [b"", b"not json", b"\xff\xfe", b"[1, 2]", b'"pin"', b"null"])
def test_a_body_that_is_not_a_json_object_is_malformed(payload: bytes) -> None:
    """Not JSON, not UTF-8, or JSON but not an object: backbone.drop.malformed."""
    cluster = MemoryCluster(3)
    assert raw_control(cluster, payload) == []
    assert cluster.nodes[1].stats["backbone.drop.malformed"] == 1


def test_a_node_that_joins_is_asked_for_its_revocations() -> None:
    """``joined`` asks every node that joined the view but this one (``revocations?``)."""
    cluster = MemoryCluster(3)
    frames = cluster.nodes[1].joined([1, 3])
    assert [frame.node for frame in frames] == [3]
    assert opened(cluster, list(frames), at=3) == [{"op": "revocations?"}]


def test_a_revocation_here_is_announced_to_every_other_node() -> None:
    """``announce_revocation`` is a ``revoke`` of one name for each other node."""
    cluster = MemoryCluster(3)
    frames = cluster.nodes[2].announce_revocation("alice")
    assert sorted(frame.node for frame in frames) == [1, 3]
    for frame in frames:
        assert cluster.nodes[frame.node].backbone_frame(frame.data, cluster.now) == [
            RevokeUser("alice")
        ]
