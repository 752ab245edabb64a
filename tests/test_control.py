"""The control API (turnd/control.py) against an in-memory ControlOps, over real sockets.

The server runs in a thread with its own event loop (:class:`ControlServer`): the Unix socket door
without a token and the TCP door on 127.0.0.1:0 with one. Requests go through aiohttp's client.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import attrs
import pytest
from aiohttp import ClientSession, UnixConnector, web

from auth.credentials import mint_rest_credentials
from turnd.control import ControlOps, make_app, start_control, stop_control
from turnd.operations import parse_address

TOKEN = "a-control-token"
T = TypeVar("T")

ALICE_ALLOCATION: dict[str, Any] = {
    "id": "192.0.2.1:49152",
    "username": "alice",
    "rest_id": None,
    "client": "198.51.100.7:5000",
    "server": "192.0.2.1:3478",
    "transport": "udp",
    "relays": ["192.0.2.1:49152"],
    "tcp": False,
    "started": 1_700_000_000.0,
    "expires": 1_700_000_600.0,
    "permissions": 2,
    "channels": 1,
    "packets_to_peer": 10,
    "bytes_to_peer": 1_500,
    "packets_to_client": 12,
    "bytes_to_client": 3_000_000,
}
BOB_ALLOCATION: dict[str, Any] = {
    **ALICE_ALLOCATION,
    "id": "[2001:db8::1]:49153",
    "username": "1700000000:bob",
    "rest_id": "bob",
    "client": "[2001:db8::7]:6000",
    "transport": "tcp",
    "relays": ["[2001:db8::1]:49153"],
    "tcp": True,
    "permissions": 0,
    "channels": 0,
}
DETAIL = {
    "permission_list": ["203.0.113.5", "203.0.113.6"],
    "channel_list": [{"number": 0x4000, "peer": "203.0.113.5:7000"}],
}
#: Node 2 of four: 1 alive, 3 draining, 4 gone for two minutes.
CLUSTER_NODES: list[dict[str, Any]] = [
    {
        "node": 1,
        "self": False,
        "alive": True,
        "draining": False,
        "last_heard_ago": 0.31,
        "backbone": "10.77.1.2:7478",
        "relay_ports": 192,
    },
    {
        "node": 2,
        "self": True,
        "alive": True,
        "draining": False,
        "last_heard_ago": None,
        "backbone": "10.77.2.2:7478",
        "relay_ports": 64,
    },
    {
        "node": 3,
        "self": False,
        "alive": True,
        "draining": True,
        "last_heard_ago": 0.42,
        "backbone": "[fd77::3]:7478",
        "relay_ports": 192,
    },
    {
        "node": 4,
        "self": False,
        "alive": False,
        "draining": False,
        "last_heard_ago": 125.0,
        "backbone": "10.77.4.2:7478",
        "relay_ports": 64,
    },
]
CLUSTER_COUNTERS: dict[str, Any] = {
    "forwarded_client": 12,
    "forwarded_peer": 30,
    "second_chance": 1,
    "frames_sent": {"client": 12, "heartbeat": 900, "peer": 30},
    "frames_received": {"client": 7, "heartbeat": 899},
    "drops": {"auth": 1, "replay": 2},
}
NO_CLUSTER_COUNTERS: dict[str, Any] = {
    "forwarded_client": 0,
    "forwarded_peer": 0,
    "second_chance": 0,
    "frames_sent": {},
    "frames_received": {},
    "drops": {},
}
CLUSTER_TABLE: dict[str, Any] = {
    "slice_size": 64,
    "port_min": 49152,
    "port_max": 49663,
    "nodes": {
        "1": [[49152, 49279], [49408, 49471]],
        "2": [[49280, 49343]],
        "3": [[49344, 49407], [49472, 49599]],
        "4": [[49600, 49663]],
    },
    "catch_sockets": 448,
}
#: The first UDP listener of the fake node: the default server of an owner question.
SERVICE_ADDRESS = "10.77.255.1:3478"


class FakeOps:
    """An in-memory daemon: two allocations, two users, two secrets; records what it was asked."""

    def __init__(self) -> None:
        self.live = {a["id"]: dict(a) for a in (ALICE_ALLOCATION, BOB_ALLOCATION)}
        self.passwords = {"alice": "alice-pw", "carol": "carol-pw"}
        self.secret_list = [
            {"id": "1a2b3c4d", "source": "runtime", "fingerprint": "1a2b3c4d"},
            {"id": "9f8e7d6c", "source": "config", "fingerprint": "9f8e7d6c"},
        ]
        self.key_list = {"app1": "config"}
        self.draining = False
        self.reload_error: str | None = None
        self.mint_error: str | None = None
        #: False: a node whose [cluster] lists no nodes.
        self.in_cluster = True
        self.calls: list[tuple[Any, ...]] = []

    def status(self) -> dict[str, Any]:
        return {
            "version": "0.1.0",
            "started": 1_700_000_000.0,
            "uptime_s": 3_725.0,
            "realm": "example.org",
            "listeners": [
                {"transport": "udp", "address": "0.0.0.0", "port": 3478},
                {"transport": "tls", "address": "::", "port": 5349},
            ],
            "relay_addresses": ["192.0.2.1", "2001:db8::1"],
            "allocations": len(self.live),
            "connections": 1,
            "draining": self.draining,
            "fastpath": {
                "active": True,
                "mode": "auto",
                "interfaces": ["eth0", "lo"],
                "routes": 3,
                "relayed_packets_to_peer": 40,
                "relayed_packets_to_client": 2,
            },
        }

    def allocations(
        self, user: str | None, client: str | None, transport: str | None
    ) -> list[dict[str, Any]]:
        self.calls.append(("allocations", user, client, transport))
        return [
            a
            for a in self.live.values()
            if (user is None or a["username"] == user)
            and (client is None or a["client"] == client)
            and (transport is None or a["transport"] == transport)
        ]

    def allocation(self, allocation_id: str) -> dict[str, Any] | None:
        found = self.live.get(allocation_id)
        return None if found is None else {**found, **DETAIL}

    def kill(self, allocation_id: str) -> bool:
        return self.live.pop(allocation_id, None) is not None

    def users(self) -> list[str]:
        return sorted(self.passwords)

    def add_user(self, name: str, password: str) -> None:
        if ":" in name:
            raise ValueError("a username must be without ':'")
        if not password:
            raise ValueError("a password must be non-empty")
        self.passwords[name] = password

    def remove_user(self, name: str) -> bool:
        return self.passwords.pop(name, None) is not None

    def secrets(self) -> list[dict[str, Any]]:
        return list(self.secret_list)

    def add_secret(self, value: str | None) -> dict[str, Any]:
        if value is not None and " " in value:
            raise ValueError("a secret must be without spaces")
        secret = value or "generated-secret"
        entry = {"id": f"new{len(self.secret_list)}", "source": "runtime", "fingerprint": "x"}
        self.secret_list.insert(0, entry)
        return {"id": entry["id"], "secret": secret}

    def retire_secret(self, secret_id: str) -> bool:
        kept = [s for s in self.secret_list if s["id"] != secret_id]
        if len(kept) == len(self.secret_list):
            return False
        if not kept:
            raise ValueError("this is the last REST secret")
        self.secret_list = kept
        return True

    def keys(self) -> list[dict[str, Any]]:
        return [{"id": key, "source": source} for key, source in sorted(self.key_list.items())]

    def add_key(self, key_id: str, token: str | None) -> dict[str, Any]:
        if ":" in key_id:
            raise ValueError("a key id has no ':'")
        self.key_list[key_id] = "runtime"
        return {"id": key_id, "token": token or "generated-token"}

    def remove_key(self, key_id: str) -> bool:
        source = self.key_list.get(key_id)
        if source == "config":
            raise ValueError("this key comes from [api] keys in the configuration")
        return self.key_list.pop(key_id, None) is not None

    def reload(self) -> dict[str, Any]:
        return {"ok": self.reload_error is None, "error": self.reload_error}

    def drain(self, on: bool) -> dict[str, Any]:
        self.draining = on
        return {"draining": on, "allocations": len(self.live)}

    def revoke(self, username: str) -> int:
        ended = [k for k, a in self.live.items() if a["username"] == username]
        for key in ended:
            del self.live[key]
        return len(ended)

    def mint(self, ttl: int, ident: str) -> dict[str, Any]:
        self.calls.append(("mint", ttl, ident))
        if self.mint_error is not None:
            raise ValueError(self.mint_error)
        mint_rest_credentials(b"fake", 1_700_000_000, ttl, ident)  # the real username rules
        return {
            "iceServers": [
                {"urls": ["stun:192.0.2.1:3478"]},
                {
                    "urls": ["turn:192.0.2.1:3478?transport=udp", "turns:192.0.2.1:5349"],
                    "username": f"{1_700_000_000 + ttl}:{ident}",
                    "credential": "minted",
                },
            ]
        }

    def cluster_nodes(self) -> dict[str, Any]:
        if not self.in_cluster:
            return {"enabled": False, "node_id": 0, "nodes": [], "counters": NO_CLUSTER_COUNTERS}
        return {"enabled": True, "node_id": 2, "nodes": CLUSTER_NODES, "counters": CLUSTER_COUNTERS}

    def cluster_table(self) -> dict[str, Any] | None:
        return CLUSTER_TABLE if self.in_cluster else None

    def cluster_owner(
        self, transport: str, client: str, server: str | None
    ) -> dict[str, Any] | None:
        """Every flow belongs to node 3 (draining, so alive); alice's is here."""
        self.calls.append(("cluster_owner", transport, client, server))
        if not self.in_cluster:
            return None
        if transport not in ("udp", "tcp", "tls"):
            raise ValueError(f"not a transport: {transport!r}")
        source, destination = parse_address(client), parse_address(server or SERVICE_ADDRESS)
        here = str(source) == ALICE_ALLOCATION["client"]
        flow = f"{transport} {source} -> {destination}"
        return {"node": 3, "alive": True, "here": here, "flow": flow}


def _typed(ops: FakeOps) -> ControlOps:
    """FakeOps is a ControlOps (checked by mypy if tests are ever type-checked)."""
    return ops


class ControlServer:
    """The control API of ``ops`` served from a thread with its own event loop."""

    def __init__(self, ops: FakeOps, socket_path: Path) -> None:
        self.ops = ops
        self.socket_path = socket_path
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runners = self.run(start_control(make_app(_typed(ops), None), str(socket_path), None))
        self.runners += self.run(
            start_control(make_app(_typed(ops), TOKEN), None, ("127.0.0.1", 0))
        )
        host, port = self.runners[1].addresses[0][:2]
        self.url = f"http://{host}:{port}"

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the server's loop and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10)

    def stop(self) -> None:
        self.run(stop_control(self.runners))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture
def ops() -> FakeOps:
    return FakeOps()


@pytest.fixture
def server(ops: FakeOps, tmp_path: Path) -> Iterator[ControlServer]:
    running = ControlServer(ops, tmp_path / "run" / "control.sock")
    yield running
    running.stop()


@attrs.frozen
class Reply:
    status: int
    headers: dict[str, str]
    body: Any


def call(
    server: ControlServer,
    method: str,
    path: str,
    body: Any = None,
    *,
    door: str = "unix",
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
) -> Reply:
    """One request through the Unix socket (``door="unix"``) or TCP ("tcp"), where ``headers``
    default to the right token."""
    sent = dict(headers or {})
    if door == "tcp" and headers is None:
        sent["Authorization"] = f"Bearer {TOKEN}"

    async def go() -> Reply:
        connector = UnixConnector(path=str(server.socket_path)) if door == "unix" else None
        base = "http://turnd" if door == "unix" else server.url
        async with (
            ClientSession(connector=connector) as session,
            session.request(method, base + path, json=body, data=data, headers=sent) as response,
        ):
            raw = await response.read()
            payload = json.loads(raw) if raw else None
            return Reply(response.status, dict(response.headers), payload)

    return asyncio.run(go())


@pytest.fixture(params=["unix", "tcp"])
def door(request: pytest.FixtureRequest) -> str:
    """Each route answers the same through both doors."""
    return str(request.param)


# --- reading ------------------------------------------------------------------------------------


def test_status_is_the_ops_status_as_json(server: ControlServer, door: str) -> None:
    """GET /v1/status returns what ops.status() returns."""
    reply = call(server, "GET", "/v1/status", door=door)
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("application/json")
    assert reply.body == server.ops.status()


def test_allocations_are_listed_and_filtered_by_the_query(server: ControlServer, door: str) -> None:
    """GET /v1/allocations passes user, client and transport; empty values mean no filter."""
    everything = call(server, "GET", "/v1/allocations?user=&transport=", door=door)
    assert everything.status == 200
    assert [a["id"] for a in everything.body] == ["192.0.2.1:49152", "[2001:db8::1]:49153"]
    query = "/v1/allocations?user=alice&client=198.51.100.7:5000&transport=udp"
    filtered = call(server, "GET", query, door=door)
    assert filtered.body == [ALICE_ALLOCATION]
    assert server.ops.calls[-2:] == [
        ("allocations", None, None, None),
        ("allocations", "alice", "198.51.100.7:5000", "udp"),
    ]


def test_one_allocation_by_its_id_including_an_ipv6_one(server: ControlServer, door: str) -> None:
    """GET /v1/allocations/{id} decodes the id ("[v6]:port" arrives percent-encoded)."""
    reply = call(server, "GET", "/v1/allocations/%5B2001%3Adb8%3A%3A1%5D%3A49153", door=door)
    assert reply.status == 200
    assert reply.body == {**BOB_ALLOCATION, **DETAIL}


def test_an_unknown_allocation_is_404(server: ControlServer, door: str) -> None:
    """GET and DELETE of an allocation that does not exist answer 404 with a message."""
    for method in ("GET", "DELETE"):
        reply = call(server, method, "/v1/allocations/192.0.2.9:1", door=door)
        assert reply.status == 404
        assert reply.body == {"error": "no allocation 192.0.2.9:1"}


def test_deleting_an_allocation_kills_it_with_204(server: ControlServer, door: str) -> None:
    """DELETE /v1/allocations/{id} answers 204 with no body and the allocation is gone."""
    reply = call(server, "DELETE", "/v1/allocations/192.0.2.1:49152", door=door)
    assert (reply.status, reply.body) == (204, None)
    assert "192.0.2.1:49152" not in server.ops.live


# --- users --------------------------------------------------------------------------------------


def test_users_are_listed_added_and_removed(server: ControlServer, door: str) -> None:
    """GET lists, PUT with a password adds (204), DELETE removes (204), then 404."""
    assert call(server, "GET", "/v1/users", door=door).body == ["alice", "carol"]
    added = call(server, "PUT", "/v1/users/dave", {"password": "pw"}, door=door)
    assert (added.status, added.body) == (204, None)
    assert server.ops.passwords["dave"] == "pw"
    assert call(server, "DELETE", "/v1/users/dave", door=door).status == 204
    gone = call(server, "DELETE", "/v1/users/dave", door=door)
    assert (gone.status, gone.body) == (404, {"error": "no user dave"})


def test_a_user_the_daemon_refuses_is_400_with_its_message(server: ControlServer) -> None:
    """ops.add_user's ValueError becomes 400 with the message."""
    reply = call(server, "PUT", "/v1/users/a%3Ab", {"password": "pw"})
    assert (reply.status, reply.body) == (400, {"error": "a username must be without ':'"})


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", '"password" must be str'),
        (b"{not json", "the request body is not JSON"),
        (b"\xff\xfe", "the request body is not JSON"),
        (b'["pw"]', "the request body must be a JSON object"),
        (b'{"password": 7}', '"password" must be str'),
    ],
    ids=["no-body", "not-json", "not-utf8", "not-object", "wrong-type"],
)
def test_a_malformed_body_is_400(server: ControlServer, data: bytes, error: str) -> None:
    """A body that is missing, not JSON, not an object or of the wrong type is 400, named."""
    reply = call(server, "PUT", "/v1/users/dave", data=data)
    assert (reply.status, reply.body) == (400, {"error": error})
    assert "dave" not in server.ops.passwords


def test_a_body_beyond_the_limit_is_413_as_json(server: ControlServer) -> None:
    """Bodies are small JSON objects; a huge one is refused by size, still as JSON."""
    reply = call(server, "PUT", "/v1/users/dave", {"password": "x" * 100_000})
    assert reply.status == 413
    assert reply.body == {"error": "request entity too large"}


# --- secrets ------------------------------------------------------------------------------------


def test_secrets_are_listed_without_their_values(server: ControlServer, door: str) -> None:
    """GET /v1/secrets gives id, source and fingerprint."""
    reply = call(server, "GET", "/v1/secrets", door=door)
    assert reply.status == 200
    assert reply.body == server.ops.secret_list


def test_adding_a_secret_is_201_with_the_secret_once(server: ControlServer, door: str) -> None:
    """POST /v1/secrets with a value adds it; with none (or no body) one is generated."""
    given = call(server, "POST", "/v1/secrets", {"secret": "s3cret"}, door=door)
    assert (given.status, given.body) == (201, {"id": "new2", "secret": "s3cret"})
    generated = call(server, "POST", "/v1/secrets", {"secret": None}, door=door)
    assert generated.body["secret"] == "generated-secret"
    bodiless = call(server, "POST", "/v1/secrets", door=door)
    assert (bodiless.status, bodiless.body["secret"]) == (201, "generated-secret")


def test_a_secret_the_daemon_refuses_is_400(server: ControlServer) -> None:
    """ops.add_secret's ValueError becomes 400; a non-string secret too."""
    spaced = call(server, "POST", "/v1/secrets", {"secret": "a b"})
    assert (spaced.status, spaced.body) == (400, {"error": "a secret must be without spaces"})
    typed = call(server, "POST", "/v1/secrets", {"secret": 5})
    assert (typed.status, typed.body) == (400, {"error": '"secret" must be str'})


def test_retiring_secrets_204_then_404_then_409_for_the_last(
    server: ControlServer, door: str
) -> None:
    """DELETE /v1/secrets/{id}: 204 when retired, 404 when unknown, 409 for the last one."""
    assert call(server, "DELETE", "/v1/secrets/1a2b3c4d", door=door).status == 204
    unknown = call(server, "DELETE", "/v1/secrets/1a2b3c4d", door=door)
    assert (unknown.status, unknown.body) == (404, {"error": "no secret 1a2b3c4d"})
    last = call(server, "DELETE", "/v1/secrets/9f8e7d6c", door=door)
    assert (last.status, last.body) == (409, {"error": "this is the last REST secret"})


# --- levers -------------------------------------------------------------------------------------


def test_reload_is_200_when_it_worked_and_409_when_not(server: ControlServer, door: str) -> None:
    """POST /v1/reload answers {ok, error}; a failed reload is 409 with the reason in "error"."""
    done = call(server, "POST", "/v1/reload", door=door)
    assert (done.status, done.body) == (200, {"ok": True, "error": None})
    server.ops.reload_error = "turnd.toml: relay.port_min: must be an integer"
    failed = call(server, "POST", "/v1/reload", door=door)
    assert failed.status == 409
    assert failed.body == {"ok": False, "error": server.ops.reload_error}


def test_drain_turns_on_and_off(server: ControlServer, door: str) -> None:
    """POST /v1/drain {"on": bool} answers {draining, allocations}; "on" must be a boolean."""
    on = call(server, "POST", "/v1/drain", {"on": True}, door=door)
    assert (on.status, on.body) == (200, {"draining": True, "allocations": 2})
    assert call(server, "POST", "/v1/drain", {"on": False}, door=door).body["draining"] is False
    bad = call(server, "POST", "/v1/drain", {"on": 1}, door=door)
    assert (bad.status, bad.body) == (400, {"error": '"on" must be a boolean'})


def test_revoke_answers_how_many_allocations_ended(server: ControlServer, door: str) -> None:
    """POST /v1/revoke/{username} ends that user's allocations and counts them."""
    reply = call(server, "POST", "/v1/revoke/1700000000%3Abob", door=door)
    assert (reply.status, reply.body) == (200, {"ended": 1})
    assert call(server, "POST", "/v1/revoke/nobody", door=door).body == {"ended": 0}


def test_credentials_are_minted_with_201(server: ControlServer, door: str) -> None:
    """POST /v1/credentials {"ttl", "id"} answers 201 with the iceServers; id defaults to ""."""
    reply = call(server, "POST", "/v1/credentials", {"ttl": 600, "id": "app-7"}, door=door)
    assert reply.status == 201
    assert reply.body["iceServers"][1]["username"] == "1700000600:app-7"
    call(server, "POST", "/v1/credentials", {"ttl": 60}, door=door)
    assert server.ops.calls[-2:] == [("mint", 600, "app-7"), ("mint", 60, "")]


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"ttl": 10**13}, "digits"),
        ({"ttl": 60, "id": "a\nb"}, "not a valid STUN username"),
        ({"ttl": 60, "id": "x" * 600}, "exceed 508 bytes"),
    ],
)
def test_credentials_turnd_would_refuse_are_not_minted_400(
    server: ControlServer, door: str, body: dict[str, Any], error: str
) -> None:
    """A ttl or id whose username the authenticator would refuse is a 400 naming why."""
    reply = call(server, "POST", "/v1/credentials", body, door=door)
    assert reply.status == 400
    assert error in reply.body["error"]


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"ttl": 0}, '"ttl" must be positive'),
        ({"ttl": "600"}, '"ttl" must be int'),
        ({"ttl": True}, '"ttl" must be int'),
        ({}, '"ttl" must be int'),
        ({"ttl": 60, "id": 5}, '"id" must be str'),
    ],
)
def test_a_bad_credential_request_is_400(
    server: ControlServer, body: dict[str, Any], error: str
) -> None:
    """ttl must be a positive integer (not a boolean) and id a string."""
    reply = call(server, "POST", "/v1/credentials", body)
    assert (reply.status, reply.body) == (400, {"error": error})
    assert not [c for c in server.ops.calls if c[0] == "mint"]


def test_credentials_turnd_cannot_mint_are_409(server: ControlServer) -> None:
    """ops.mint's ValueError (no secret) is a conflict with the daemon's state: 409."""
    server.ops.mint_error = "no REST secret is configured"
    reply = call(server, "POST", "/v1/credentials", {"ttl": 60})
    assert (reply.status, reply.body) == (409, {"error": "no REST secret is configured"})


# --- cluster ------------------------------------------------------------------------------------


def test_cluster_nodes_is_the_view_and_the_counters(server: ControlServer, door: str) -> None:
    """GET /v1/cluster/nodes answers {enabled, node_id, nodes, counters} as ops gives them."""
    reply = call(server, "GET", "/v1/cluster/nodes", door=door)
    assert reply.status == 200
    assert reply.body == {
        "enabled": True,
        "node_id": 2,
        "nodes": CLUSTER_NODES,
        "counters": CLUSTER_COUNTERS,
    }


def test_cluster_nodes_of_a_single_node_is_200_not_enabled(server: ControlServer) -> None:
    """Not a cluster is an answer here, not a refusal: enabled false, no nodes, zero counters."""
    server.ops.in_cluster = False
    reply = call(server, "GET", "/v1/cluster/nodes")
    assert reply.status == 200
    assert reply.body == {
        "enabled": False,
        "node_id": 0,
        "nodes": [],
        "counters": NO_CLUSTER_COUNTERS,
    }


def test_cluster_table_is_the_slice_table(server: ControlServer, door: str) -> None:
    """GET /v1/cluster/table answers the ranges per node."""
    reply = call(server, "GET", "/v1/cluster/table", door=door)
    assert (reply.status, reply.body) == (200, CLUSTER_TABLE)


def test_cluster_questions_to_a_single_node_are_409(server: ControlServer) -> None:
    """The table and owner routes refuse with 409 and say why on a node not in a cluster."""
    server.ops.in_cluster = False
    not_a_cluster = {"error": "not a cluster: [cluster] lists no nodes"}
    table = call(server, "GET", "/v1/cluster/table")
    assert (table.status, table.body) == (409, not_a_cluster)
    owner = call(server, "GET", "/v1/cluster/owner?client=203.0.113.5:5000")
    assert (owner.status, owner.body) == (409, not_a_cluster)


def test_cluster_owner_passes_the_query_with_udp_and_no_server_by_default(
    server: ControlServer, door: str
) -> None:
    """client is required; transport defaults to udp, server to None (the daemon's listener)."""
    reply = call(server, "GET", "/v1/cluster/owner?client=198.51.100.7:5000", door=door)
    assert reply.status == 200
    assert reply.body == {
        "node": 3,
        "alive": True,
        "here": True,
        "flow": "udp 198.51.100.7:5000 -> 10.77.255.1:3478",
    }
    query = "client=%5B2001%3Adb8%3A%3A7%5D%3A6000&server=%5B2001%3Adb8%3A%3A1%5D%3A3478"
    v6 = call(server, "GET", f"/v1/cluster/owner?{query}&transport=tcp", door=door)
    assert v6.body["flow"] == "tcp [2001:db8::7]:6000 -> [2001:db8::1]:3478"
    assert server.ops.calls[-2:] == [
        ("cluster_owner", "udp", "198.51.100.7:5000", None),
        ("cluster_owner", "tcp", "[2001:db8::7]:6000", "[2001:db8::1]:3478"),
    ]


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("", '"client" is required: the client address, ip:port'),
        ("client=", '"client" is required: the client address, ip:port'),
        (
            "client=203.0.113.5",
            "not an address: '203.0.113.5' (expected ip:port, or [ipv6]:port)",
        ),
        (
            "client=203.0.113.5:5000&server=turn.example.org:3478",
            "not an address: 'turn.example.org:3478' (expected ip:port, or [ipv6]:port)",
        ),
        ("client=203.0.113.5:5000&transport=sctp", "not a transport: 'sctp'"),
    ],
    ids=["no-client", "empty-client", "no-port", "a-name", "bad-transport"],
)
def test_a_cluster_owner_question_that_does_not_parse_is_400(
    server: ControlServer, query: str, error: str
) -> None:
    """A missing client, an address or a transport ops cannot parse: 400 with the reason."""
    reply = call(server, "GET", f"/v1/cluster/owner?{query}")
    assert (reply.status, reply.body) == (400, {"error": error})


# --- HTTP errors --------------------------------------------------------------------------------


def test_an_unknown_route_is_404_as_json(server: ControlServer, door: str) -> None:
    """Paths outside the API answer 404 {"error": "not found"}."""
    for path in ("/", "/v1/nothing", "/v2/status"):
        reply = call(server, "GET", path, door=door)
        assert (reply.status, reply.body) == (404, {"error": "not found"})


def test_a_wrong_method_is_405_with_allow(server: ControlServer, door: str) -> None:
    """A known path with the wrong method answers 405 and says which methods exist."""
    reply = call(server, "POST", "/v1/status", door=door)
    assert (reply.status, reply.body) == (405, {"error": "method not allowed"})
    assert set(reply.headers["Allow"].split(",")) == {"GET", "HEAD"}


def test_a_failing_operation_is_500_and_logged(
    server: ControlServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug in the daemon's ops is a 500 with a pointer to the log, and logged with its trace."""

    def broken() -> dict[str, Any]:
        raise RuntimeError("core exploded")

    server.ops.status = broken  # type: ignore[method-assign]
    reply = call(server, "GET", "/v1/status")
    assert reply.status == 500
    assert reply.body == {"error": "internal error (RuntimeError): see turnd's log"}
    [record] = [r for r in caplog.records if getattr(r, "event", "") == "control.failed"]
    assert record.exc_info is not None and "core exploded" in str(record.exc_info[1])


# --- the token ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer wrong-token", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer é"],
    ids=["absent", "empty", "no-token", "wrong", "not-bearer", "longer", "non-ascii"],
)
def test_tcp_without_the_token_is_401_without_detail(
    server: ControlServer, authorization: str | None
) -> None:
    """Every failure of the token gets the same 401 body, whatever the route (even unknown)."""
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, path in (("GET", "/v1/status"), ("DELETE", "/v1/users/alice"), ("GET", "/x")):
        reply = call(server, method, path, door="tcp", headers=headers)
        assert (reply.status, reply.body) == (401, {"error": "unauthorized"})
        assert reply.headers["WWW-Authenticate"] == "Bearer"
    assert "alice" in server.ops.passwords


def test_the_bearer_scheme_is_case_insensitive(server: ControlServer) -> None:
    """RFC 7235: the auth scheme name is case-insensitive."""
    reply = call(
        server, "GET", "/v1/users", door="tcp", headers={"Authorization": f"bearer {TOKEN}"}
    )
    assert reply.status == 200


def test_the_unix_socket_needs_no_token(server: ControlServer) -> None:
    """The socket's mode is the access control; a stray Authorization header is ignored."""
    reply = call(server, "GET", "/v1/users", headers={"Authorization": "Bearer nonsense"})
    assert reply.status == 200


def test_tcp_refuses_an_application_without_a_token() -> None:
    """start_control will not put a token-less control API on TCP."""
    app = make_app(_typed(FakeOps()), None)
    with pytest.raises(ValueError, match=r"control\.token"):
        asyncio.run(start_control(app, None, ("127.0.0.1", 0)))


# --- the socket ---------------------------------------------------------------------------------


def test_the_socket_is_mode_0600_in_a_created_0755_directory(server: ControlServer) -> None:
    """Only turnd's user may connect; a missing parent directory is created 0755."""
    mode = server.socket_path.stat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    assert stat.S_IMODE(server.socket_path.parent.stat().st_mode) == 0o755


def test_the_socket_directory_is_0755_whatever_the_umask(ops: FakeOps, tmp_path: Path) -> None:
    """A strict umask (077) does not make the created directory 0700."""
    old = os.umask(0o077)
    try:
        running = ControlServer(ops, tmp_path / "run" / "control.sock")
    finally:
        os.umask(old)
    running.stop()
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o755


def test_stopping_removes_the_socket_file(ops: FakeOps, tmp_path: Path) -> None:
    """stop_control closes the listeners and removes the socket file."""
    running = ControlServer(ops, tmp_path / "control.sock")
    running.stop()
    assert not (tmp_path / "control.sock").exists()


def test_stopping_leaves_a_socket_file_that_is_no_longer_ours(ops: FakeOps, tmp_path: Path) -> None:
    """If something replaced the socket file meanwhile, stopping does not remove theirs."""
    path = tmp_path / "control.sock"
    running = ControlServer(ops, path)
    path.unlink()
    with socket.socket(socket.AF_UNIX) as other:
        other.bind(str(path))
        running.stop()
        assert path.exists()


def test_stopping_copes_with_a_socket_file_already_gone(ops: FakeOps, tmp_path: Path) -> None:
    """A socket file removed by someone else is not an error at shutdown."""
    running = ControlServer(ops, tmp_path / "control.sock")
    (tmp_path / "control.sock").unlink()
    running.stop()


def test_a_stale_socket_file_is_replaced(ops: FakeOps, tmp_path: Path) -> None:
    """A socket file left by a crashed turnd (nobody listening) is removed and bound again."""
    path = tmp_path / "control.sock"
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(path))
    path.chmod(0o666)
    running = ControlServer(ops, path)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert call(running, "GET", "/v1/users").status == 200
    finally:
        running.stop()


def test_a_live_socket_is_not_stolen(ops: FakeOps, tmp_path: Path) -> None:
    """When another process answers on the socket, starting fails instead of replacing it."""
    path = tmp_path / "control.sock"
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(str(path))
        live.listen()
        app = make_app(_typed(ops), None)
        with pytest.raises(OSError, match="another process answers"):
            asyncio.run(start_control(app, str(path), None))
        assert path.exists()


def test_a_file_that_is_not_a_socket_is_left_alone(ops: FakeOps, tmp_path: Path) -> None:
    """A regular file at the socket path is an error, never deleted."""
    path = tmp_path / "control.sock"
    path.write_text("precious")
    with pytest.raises(FileExistsError):
        asyncio.run(start_control(make_app(_typed(ops), None), str(path), None))
    assert path.read_text() == "precious"


def test_a_socket_path_that_cannot_be_bound_is_an_oserror(ops: FakeOps, tmp_path: Path) -> None:
    """A path too long for a Unix socket fails with OSError, and nothing is left behind."""
    path = tmp_path / ("x" * 120)
    with pytest.raises(OSError):
        asyncio.run(start_control(make_app(_typed(ops), None), str(path), None))
    assert not path.exists()


@pytest.mark.parametrize("with_socket", [True, False], ids=["socket-and-tcp", "tcp-only"])
def test_a_tcp_port_in_use_fails_and_closes_the_socket_door(
    ops: FakeOps, tmp_path: Path, with_socket: bool
) -> None:
    """When TCP cannot bind, start_control raises, and an already-bound Unix socket is closed
    and removed too."""
    path = tmp_path / "control.sock"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        app = make_app(_typed(ops), TOKEN)
        with pytest.raises(OSError):
            asyncio.run(start_control(app, str(path) if with_socket else None, taken.getsockname()))
    assert not path.exists()


def test_nothing_to_serve_starts_nothing() -> None:
    """No socket (None or "", the config's "off") and no TCP: no runner."""
    app = make_app(_typed(FakeOps()), None)
    assert asyncio.run(start_control(app, None, None)) == []
    assert asyncio.run(start_control(app, "", None)) == []


def test_both_doors_of_one_app_share_a_runner(ops: FakeOps, tmp_path: Path) -> None:
    """One application can take the socket and TCP at once (one runner to stop)."""

    async def scenario() -> list[Any]:
        app = make_app(_typed(ops), TOKEN)
        runners = await start_control(app, str(tmp_path / "c.sock"), ("127.0.0.1", 0))
        addresses = list(runners[0].addresses)
        await stop_control(runners)
        return addresses

    addresses = asyncio.run(scenario())
    assert str(tmp_path / "c.sock") in addresses and len(addresses) == 2


def test_the_app_is_an_aiohttp_application() -> None:
    """make_app gives a plain aiohttp application the daemon can serve as it likes."""
    assert isinstance(make_app(_typed(FakeOps()), TOKEN), web.Application)


# --- credential endpoint keys ---------------------------------------------------------------------


def test_keys_are_listed_added_and_removed(server: ControlServer, door: str) -> None:
    """GET /v1/keys lists ids and sources; PUT adds (201, token once); DELETE removes (204)."""
    assert call(server, "GET", "/v1/keys", door=door).body == [{"id": "app1", "source": "config"}]
    added = call(server, "PUT", "/v1/keys/app2", {"token": "t0ken"}, door=door)
    assert (added.status, added.body) == (201, {"id": "app2", "token": "t0ken"})
    generated = call(server, "PUT", "/v1/keys/app3", door=door)
    assert generated.body["token"] == "generated-token"
    assert call(server, "DELETE", "/v1/keys/app2", door=door).status == 204


def test_key_refusals(server: ControlServer) -> None:
    """A bad id is 400; an unknown key 404; a configured key 409 (remove it from the file)."""
    assert call(server, "PUT", "/v1/keys/a:b", {"token": "t"}).status == 400
    assert call(server, "DELETE", "/v1/keys/nope").status == 404
    refused = call(server, "DELETE", "/v1/keys/app1")
    assert refused.status == 409 and "configuration" in refused.body["error"]
