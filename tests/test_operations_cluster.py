"""The cluster's operator views and levers (turnd/operations.py) on real, unstarted services.

A :class:`TurnService` built from a ``[cluster]`` config has its ClusterLink and ClusterNode but
no sockets: what the control API answers comes from the real membership view, slice table and
router, and the frames a drain sends are opened by a second node's real codec.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stun.addresses import Address
from tests.test_control import ControlServer, call
from turnd.assembly import resolve_secrets
from turnd.cluster import ClusterLink
from turnd.config import Config, parse_config
from turnd.core.actions import FiveTuple, Transport
from turnd.operations import Operations, parse_address
from turnd.service import TurnService

SINGLE = """
[server]
realm = "turnd.test"
listen = ["udp:0"]
state_dir = "{state_dir}"

[auth]
users = {{ alice = "s3cret" }}

[relay]
port_min = 50000
port_max = 50999
"""
#: Three nodes on loopback backbone ports nothing binds (the services are never started).
CLUSTER = """
[cluster]
node_id = {node_id}
nodes = ["1=127.0.0.1:17471", "2=127.0.0.1:17472", "3=127.0.0.1:17473"]
service_ip = "127.0.0.1"
key = "0123456789abcdef0123456789abcdef"
setup_service_ip = false
"""
SERVICE = Address("127.0.0.1", 3478)
NOT_A_CLUSTER = {"error": "not a cluster: [cluster] lists no nodes"}


def make_service(state_dir: Path, node_id: int | None = 2) -> TurnService:
    """An unstarted service: cluster node ``node_id`` of three, or (None) a single node."""
    text = SINGLE.format(state_dir=state_dir)
    if node_id is not None:
        text += CLUSTER.format(node_id=node_id)
    config, _ = resolve_secrets(parse_config(text, {}))
    return TurnService(config, relay_ipv4="127.0.0.1")


def link_of(service: TurnService) -> ClusterLink:
    assert service.cluster is not None
    return service.cluster


@pytest.fixture
def node2(tmp_path: Path) -> TurnService:
    service = make_service(tmp_path / "node2")
    service.listeners.bound += [("tcp", Address("127.0.0.1", 3479)), ("udp", SERVICE)]
    return service


@pytest.fixture
def single(tmp_path: Path) -> TurnService:
    return make_service(tmp_path / "single", None)


# --- parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("203.0.113.5:5000", Address("203.0.113.5", 5000)),
        (" 203.0.113.5:0 ", Address("203.0.113.5", 0)),
        ("[2001:DB8:0::7]:6000", Address("2001:db8::7", 6000)),
        ("[fe80::1%eth0]:6000", Address("fe80::1", 6000)),
    ],
)
def test_addresses_parse_to_canonical_addresses(text: str, address: Address) -> None:
    """ip:port and [v6]:port, IPv6 in compressed lower case, scope ids dropped."""
    assert parse_address(text) == address


@pytest.mark.parametrize(
    "text",
    [
        "203.0.113.5",
        "203.0.113.5:",
        "203.0.113.5:65536",
        "203.0.113.5:-1",
        "203.0.113.5:\uff15",  # a fullwidth 5: a digit to str.isdigit, not to us
        "[203.0.113.5]:5000",
        "2001:db8::7:6000",
        "turn.example.org:3478",
        "",
    ],
)
def test_anything_else_is_a_valueerror_saying_what_is_expected(text: str) -> None:
    """No port, a port out of range, a bracketed IPv4, a bare IPv6, a name: refused."""
    with pytest.raises(ValueError, match=r"^not an address: .* \(expected ip:port, or \[ipv6\]"):
        parse_address(text)


# --- views --------------------------------------------------------------------------------------


def test_a_single_node_is_not_enabled_with_zero_counters(single: TurnService) -> None:
    """No [cluster] nodes: enabled false, node 0, no nodes, zero counters, empty breakdowns."""
    assert Operations(single).cluster_nodes() == {
        "enabled": False,
        "node_id": 0,
        "nodes": [],
        "counters": {
            "forwarded_client": 0,
            "forwarded_peer": 0,
            "second_chance": 0,
            "arrived_client": 0,
            "relayed_to_client": 0,
            "frames_sent": {},
            "frames_received": {},
            "drops": {},
        },
    }
    assert Operations(single).cluster_table() is None
    assert Operations(single).cluster_owner("udp", "203.0.113.5:5000", None) is None


def test_a_cluster_node_lists_every_configured_node_and_its_counters(node2: TurnService) -> None:
    """One row per configured node (this one marked, its slices' ports), counters from stats."""
    stats = node2.core.stats
    stats.update(
        {
            "cluster.forwarded.client": 5,
            "cluster.forwarded.peer": 4,
            "cluster.second_chance": 1,
            "cluster.arrived.client": 9,
            "backbone.sent.heartbeat": 30,
            "backbone.sent.client": 5,
            "backbone.received.peer": 7,
            "backbone.drop.replay": 2,
            "backbone.drop.auth": 3,
            "drop.peer_slice_owner_down": 6,
        }
    )
    found = Operations(node2).cluster_nodes()
    assert (found["enabled"], found["node_id"]) == (True, 2)
    assert [(n["node"], n["self"], n["alive"]) for n in found["nodes"]] == [
        (1, False, False),
        (2, True, True),
        (3, False, False),
    ]
    assert [n["backbone"] for n in found["nodes"]] == [f"127.0.0.1:1747{i}" for i in (1, 2, 3)]
    assert sum(n["relay_ports"] for n in found["nodes"]) == 1000
    assert found["counters"] == {
        "forwarded_client": 5,
        "forwarded_peer": 4,
        "second_chance": 1,
        "arrived_client": 9,
        "relayed_to_client": 0,
        "frames_sent": {"client": 5, "heartbeat": 30},
        "frames_received": {"peer": 7},
        "drops": {"auth": 3, "replay": 2},
    }


def test_the_table_covers_the_relay_range_once(node2: TurnService) -> None:
    """Every relay port belongs to exactly one node's ranges; this node's match its slices."""
    table = Operations(node2).cluster_table()
    assert table is not None
    assert (table["slice_size"], table["port_min"], table["port_max"]) == (64, 50000, 50999)
    spans = [span for node_spans in table["nodes"].values() for span in node_spans]
    ports = [port for low, high in spans for port in range(low, high + 1)]
    assert sorted(ports) == list(range(50000, 51000))
    own = link_of(node2).node.slices.ranges(2)
    assert table["nodes"]["2"] == [list(span) for span in own]


# --- owner --------------------------------------------------------------------------------------


def test_the_owner_is_the_routers_and_moves_when_nodes_are_heard(node2: TurnService) -> None:
    """Alone in its view this node owns every flow; once 1 and 3 are heard, flows spread."""
    ops = Operations(node2)
    clients = [f"203.0.113.{i}:5000" for i in range(1, 31)]
    alone = [ops.cluster_owner("udp", client, None) for client in clients]
    assert {(answer["node"], answer["alive"]) for answer in alone if answer} == {(2, True)}
    membership = link_of(node2).node.membership
    membership.heard(1, time.time())
    membership.heard(3, time.time())
    answers = [ops.cluster_owner("udp", client, None) for client in clients]
    owners = [answer["node"] for answer in answers if answer]
    assert set(owners) == {1, 2, 3}
    node = link_of(node2).node
    assert owners == [node.owner("udp", parse_address(client), SERVICE) for client in clients]


def test_here_says_whether_this_node_holds_the_allocation(
    node2: TurnService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ "here" is the 5-tuple's presence in the core's allocations, transport included."""
    ops = Operations(node2)
    before = ops.cluster_owner("udp", "203.0.113.5:5000", None)
    assert before is not None and before["here"] is False
    flow = FiveTuple(Transport.UDP, Address("203.0.113.5", 5000), SERVICE)
    monkeypatch.setitem(node2.core.allocations, flow, object())
    after = ops.cluster_owner("udp", "203.0.113.5:5000", None)
    assert after == {**before, "here": True}
    assert after["flow"] == "udp 203.0.113.5:5000 -> 127.0.0.1:3478"
    other = ops.cluster_owner("tcp", "203.0.113.5:5000", "127.0.0.1:3478")
    assert other is not None and other["here"] is False
    assert other["flow"] == "tcp 203.0.113.5:5000 -> 127.0.0.1:3478"


def test_the_server_defaults_to_the_first_udp_listener(tmp_path: Path) -> None:
    """No server given: the first ("udp", address) of service.bound; none bound: ValueError."""
    service = make_service(tmp_path)
    ops = Operations(service)
    with pytest.raises(ValueError, match="no UDP listener"):
        ops.cluster_owner("udp", "203.0.113.5:5000", None)
    bound = service.listeners.bound
    bound += [("tls", Address("127.0.0.1", 5349)), ("udp", Address("127.0.0.2", 3478))]
    service.listeners.bound += [("udp", SERVICE)]
    answer = ops.cluster_owner("udp", "203.0.113.5:5000", None)
    assert answer is not None and answer["flow"].endswith(" -> 127.0.0.2:3478")


def test_an_unknown_transport_is_a_valueerror(node2: TurnService) -> None:
    """Transports are the client transports of a 5-tuple: udp, tcp, tls."""
    with pytest.raises(ValueError, match=r"^not a transport: 'sctp' \(expected one of udp, tcp"):
        Operations(node2).cluster_owner("sctp", "203.0.113.5:5000", None)


# --- drain --------------------------------------------------------------------------------------


def test_drain_tells_the_other_nodes_at_once(
    tmp_path: Path, node2: TurnService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """drain sets the core's flag and this node's view, and sends a heartbeat with the flag to
    every other node at once; node 1's real codec opens it and node 1 sees node 2 draining."""
    sent: list[tuple[int, bytes]] = []
    monkeypatch.setattr(link_of(node2), "send", lambda node, data: sent.append((node, data)))
    link_of(node2).node.joining_until = None  # past its join window (a new node takes no flows)
    node1 = link_of(make_service(tmp_path / "node1", node_id=1)).node

    assert Operations(node2).drain(True) == {"draining": True, "allocations": 0}
    assert node2.core.draining
    assert link_of(node2).node.membership.draining
    assert sorted(node for node, _ in sent) == [1, 3]
    for node, data in sent:
        if node == 1:
            assert node1.backbone_frame(data, time.time()) == []
    assert node1.membership.draining_nodes == {2}
    assert 2 not in node1.membership.accepting

    sent.clear()
    Operations(node2).drain(False)
    assert not link_of(node2).node.membership.draining
    for node, data in sent:
        if node == 1:
            node1.backbone_frame(data, time.time())
    assert node1.membership.draining_nodes == frozenset()
    assert 2 in node1.membership.accepting


def test_drain_on_a_single_node_sends_nothing(single: TurnService) -> None:
    """No cluster: only the core's flag changes."""
    assert Operations(single).drain(True) == {"draining": True, "allocations": 0}
    assert single.core.draining
    assert not any(key.startswith("backbone.") for key in single.core.stats)


# --- through the control API --------------------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path, node2: TurnService, single: TurnService) -> Iterator[Any]:
    """The control API over the real Operations of node 2 and of the single node."""
    cluster = ControlServer(Operations(node2), tmp_path / "cluster.sock")  # type: ignore[arg-type]
    alone = ControlServer(Operations(single), tmp_path / "single.sock")  # type: ignore[arg-type]
    yield cluster, alone
    cluster.stop()
    alone.stop()


def test_the_control_api_serves_the_real_operations(served: Any) -> None:
    """Routes answer from the real views: 200s on a cluster node, 409s off one, 400 for bad
    addresses."""
    cluster, alone = served
    nodes = call(cluster, "GET", "/v1/cluster/nodes")
    assert (nodes.status, nodes.body["node_id"], len(nodes.body["nodes"])) == (200, 2, 3)
    table = call(cluster, "GET", "/v1/cluster/table")
    assert table.status == 200 and set(table.body["nodes"]) == {"1", "2", "3"}
    owner = call(cluster, "GET", "/v1/cluster/owner?client=%5B2001%3Adb8%3A%3A7%5D%3A6000")
    assert owner.status == 200
    assert owner.body == {
        "node": 2,
        "alive": True,
        "here": False,
        "flow": "udp [2001:db8::7]:6000 -> 127.0.0.1:3478",
    }
    bad = call(cluster, "GET", "/v1/cluster/owner?client=203.0.113.5:5000&server=localhost:3478")
    assert bad.status == 400
    assert bad.body == {
        "error": "not an address: 'localhost:3478' (expected ip:port, or [ipv6]:port)"
    }

    assert call(alone, "GET", "/v1/cluster/nodes").body["enabled"] is False
    for path in ("/v1/cluster/table", "/v1/cluster/owner?client=203.0.113.5:5000"):
        refused = call(alone, "GET", path)
        assert (refused.status, refused.body) == (409, NOT_A_CLUSTER)


# --- reload ---------------------------------------------------------------------------------------

OLD_KEY = "0123456789abcdef0123456789abcdef"
NEW_KEY = "fedcba9876543210fedcba9876543210-new"


def reloaded(tmp_path: Path, node_id: int, cluster: str) -> Config:
    text = SINGLE.format(state_dir=tmp_path / f"node{node_id}") + cluster
    config, _ = resolve_secrets(parse_config(text, {}))
    return config


def rotated(node_id: int, key: str, accept: str = "") -> str:
    text = CLUSTER.format(node_id=node_id).replace("0123456789abcdef0123456789abcdef", key)
    return text + (f'accept_keys = ["{accept}"]\n' if accept else "")


def test_reload_rotates_the_cluster_key_without_a_restart(tmp_path: Path) -> None:
    """Step 1 everywhere: the new key accepted; step 2: sealed with it; step 3: the old one
    dropped. Frames under either key open while both are held; an old-key frame fails after."""
    sender, receiver = make_service(tmp_path / "node1", 1), make_service(tmp_path / "node2", 2)
    old_frame = link_of(sender).node.heartbeats(time.time())[0].data
    sender.reload(reloaded(tmp_path, 1, rotated(1, NEW_KEY, OLD_KEY)))
    receiver.reload(reloaded(tmp_path, 2, rotated(2, OLD_KEY, NEW_KEY)))
    new_frame = next(f.data for f in link_of(sender).node.heartbeats(time.time()) if f.node == 2)
    receiving = link_of(receiver).node
    assert receiving.backbone_frame(new_frame, time.time()) == []
    assert receiving.backbone_frame(old_frame, time.time()) == []
    assert not any(k.startswith("backbone.drop") for k in receiver.core.stats)
    receiver.reload(reloaded(tmp_path, 2, rotated(2, NEW_KEY)))
    stale = make_service(tmp_path / "node3", 3)  # still on the old key only
    old_again = next(f.data for f in link_of(stale).node.heartbeats(time.time()) if f.node == 2)
    receiving.backbone_frame(old_again, time.time())
    assert receiver.core.stats["backbone.drop.key"] == 1


def test_reload_says_other_cluster_changes_need_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A changed heartbeat_interval is logged as not applied; the running view is untouched;
    turning the cluster off is refused."""
    service = make_service(tmp_path / "node2", 2)
    changed = CLUSTER.format(node_id=2) + "heartbeat_interval = 0.25\n"
    with caplog.at_level(logging.WARNING, logger="turnd"):
        service.reload(reloaded(tmp_path, 2, changed))
    assert "cluster.heartbeat_interval changed: restart to apply" in caplog.text
    assert service.config.cluster.heartbeat_interval == 0.5
    with pytest.raises(ValueError, match="restart turnd"):
        service.reload(reloaded(tmp_path, 2, ""))


def test_a_tcp_flow_is_owned_by_the_node_that_accepted_it(
    node2: TurnService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TCP/TLS flows are never hashed: this node owns one only when it holds its allocation."""
    ops = Operations(node2)
    elsewhere = ops.cluster_owner("tls", "203.0.113.5:5000", "127.0.0.1:3478")
    assert elsewhere is not None and (elsewhere["node"], elsewhere["here"]) == (None, False)
    flow = FiveTuple(Transport.TLS, Address("203.0.113.5", 5000), SERVICE)
    monkeypatch.setitem(node2.core.allocations, flow, object())
    here = ops.cluster_owner("tls", "203.0.113.5:5000", "127.0.0.1:3478")
    assert here is not None and (here["node"], here["alive"], here["here"]) == (2, True, True)


# --- operator actions between nodes (CONTROL frames through the real ClusterLink) -------------


def test_a_revocation_from_another_node_holds_here_and_is_not_announced_again(
    tmp_path: Path, node2: TurnService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Node 1's ``revoke`` reaches node 2's backbone socket: node 2 refuses the name, keeps it
    in its state file (a restart still refuses it), and tells nobody else."""
    sent: list[tuple[int, bytes]] = []
    monkeypatch.setattr(link_of(node2), "send", lambda node, data: sent.append((node, data)))
    node1 = link_of(make_service(tmp_path / "node1", node_id=1)).node
    [frame] = [f for f in node1.announce_revocation("alice") if f.node == 2]
    link_of(node2).frame_received(frame.data)
    assert "alice" in node2.revoked
    assert "alice" in node2.core.auth.authenticator.revoked
    assert sent == []
    assert "alice" in make_service(tmp_path / "node2").revoked


def test_a_node_that_asks_gets_every_revocation_held_here(
    tmp_path: Path, node2: TurnService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A revocation made on node 2 is announced to 1 and 3; node 1 asking later (it just saw
    node 2 join) gets it again, in a frame its real codec opens."""
    sent: list[tuple[int, bytes]] = []
    monkeypatch.setattr(link_of(node2), "send", lambda node, data: sent.append((node, data)))
    node2.revoke("bob")
    assert sorted(node for node, _ in sent) == [1, 3]
    sent.clear()
    node1 = link_of(make_service(tmp_path / "node1", node_id=1)).node
    [ask] = node1.joined([2])
    link_of(node2).frame_received(ask.data)
    assert [node for node, _ in sent] == [1]
    assert json.loads(node1.codec.open(sent[0][1]).payload) == {
        "op": "revoke",
        "usernames": ["bob"],
    }


def test_reload_says_a_changed_fastpath_section_needs_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """[fastpath] is read at start: a reload keeps the running one and says so."""
    service = make_service(tmp_path / "node2", 2)
    changed = CLUSTER.format(node_id=2) + '[fastpath]\nmode = "off"\n'
    with caplog.at_level(logging.WARNING, logger="turnd"):
        service.reload(reloaded(tmp_path, 2, changed))
    assert "[fastpath] changed: restart to apply" in caplog.text
    assert service.config.fastpath.mode.value == "auto"
