"""turnctl against the control API of an in-memory daemon (tests/test_control.py's FakeOps).

The control server runs in a background thread with its own loop; each command runs through
typer's CliRunner in the test's thread, talking HTTP over the temporary Unix socket (or TCP).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from auth.credentials import parse_rest_username, rest_password
from tests.test_control import (
    ALICE_ALLOCATION,
    BOB_ALLOCATION,
    CLUSTER_TABLE,
    TOKEN,
    ControlServer,
    FakeOps,
)
from turnd import turnctl, turnctl_credentials


@pytest.fixture(autouse=True)
def no_turnctl_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """TURNCTL_* variables of the machine running the tests must not steer the commands."""
    for name in ("TURNCTL_SOCKET", "TURNCTL_URL", "TURNCTL_TOKEN"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ControlServer]:
    running = ControlServer(FakeOps(), tmp_path / "control.sock")
    yield running
    running.stop()


def run(server: ControlServer, *args: str, input: str | None = None) -> Result:
    """``turnctl --socket <the server's socket> args...``."""
    socket_args = ["--socket", str(server.socket_path)]
    return CliRunner().invoke(turnctl.app, [*socket_args, *args], input=input)


def lines(text: str) -> list[list[str]]:
    """The words of each line (the columns of a table, as long as cells have no spaces)."""
    return [line.split() for line in text.splitlines()]


# --- reaching turnd -----------------------------------------------------------------------------


def test_a_missing_socket_says_turnd_cannot_be_reached(tmp_path: Path) -> None:
    """No socket file: exit 1, naming the socket and the reason, and pointing at --socket."""
    missing = tmp_path / "nowhere.sock"
    result = CliRunner().invoke(turnctl.app, ["--socket", str(missing), "status"])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"turnctl: cannot reach turnd at {missing}: No such file or directory"
        " (is it running? see --socket)\n"
    )


def test_a_socket_nobody_listens_on_is_connection_refused(tmp_path: Path) -> None:
    """A stale socket file (turnd died): exit 1 with "Connection refused"."""
    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(path))
    result = CliRunner().invoke(turnctl.app, ["--socket", str(path), "users", "list"])
    assert result.exit_code == 1
    assert f"cannot reach turnd at {path}: Connection refused (is it running?" in result.stderr


def test_the_socket_comes_from_turnctl_socket(
    server: ControlServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TURNCTL_SOCKET stands for --socket."""
    monkeypatch.setenv("TURNCTL_SOCKET", str(server.socket_path))
    result = CliRunner().invoke(turnctl.app, ["users", "list"])
    assert result.exit_code == 0, result.stderr


def test_the_tcp_listener_with_url_and_token(server: ControlServer) -> None:
    """--url and --token reach the TCP listener."""
    args = ["--url", server.url, "--token", TOKEN, "--json", "users", "list"]
    result = CliRunner().invoke(turnctl.app, args)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == ["alice", "carol"]


def test_url_and_token_come_from_the_environment(
    server: ControlServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TURNCTL_URL and TURNCTL_TOKEN stand for --url and --token."""
    monkeypatch.setenv("TURNCTL_URL", server.url)
    monkeypatch.setenv("TURNCTL_TOKEN", TOKEN)
    result = CliRunner().invoke(turnctl.app, ["--json", "status"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["realm"] == "example.org"


@pytest.mark.parametrize("token", [None, "wrong"], ids=["no-token", "wrong-token"])
def test_a_refused_token_exits_1_pointing_at_token(
    server: ControlServer, token: str | None
) -> None:
    """turnd's 401 becomes exit 1 with its message and a pointer to --token."""
    args = ["--url", server.url, *(["--token", token] if token else []), "status"]
    result = CliRunner().invoke(turnctl.app, args)
    assert result.exit_code == 1
    assert result.stderr == "turnctl: unauthorized (see --token)\n"


def test_an_unreachable_url_points_at_url() -> None:
    """Connection refused on TCP names the URL and --url."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    result = CliRunner().invoke(turnctl.app, ["--url", url, "status"])
    assert result.exit_code == 1
    assert result.stderr == (
        f"turnctl: cannot reach turnd at {url}: Connection refused (is it running? see --url)\n"
    )


@pytest.mark.parametrize(
    "url", ["https://127.0.0.1:8080", "http://127.0.0.1", "127.0.0.1:8080", "http://h:99999"]
)
def test_a_url_that_is_not_http_host_port_is_a_usage_error(url: str) -> None:
    """--url must be http://host:port: anything else exits 2 before any request."""
    result = CliRunner().invoke(turnctl.app, ["--url", url, "status"])
    assert result.exit_code == 2
    assert "expected http://host:port" in result.stderr


def _read_request(connection: socket.socket) -> bytes:
    """One whole HTTP request: headers, then Content-Length bytes of body."""
    connection.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = connection.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


class FakeTurnd:
    """A Unix socket server answering every connection with ``answer`` (None: never answers)."""

    def __init__(self, path: Path, answer: bytes | None) -> None:
        self.path = path
        self.answer = answer
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(path))
        self.listener.listen()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        connection, _ = self.listener.accept()
        with connection:
            _read_request(connection)  # all of it: closing early would break the client's send
            if self.answer is not None:
                connection.sendall(self.answer)
            else:
                self.done.wait(5)

    def close(self) -> None:
        self.done.set()
        self.thread.join(5)
        self.listener.close()


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (b"garbage\r\n", "not an HTTP answer (BadStatusLine)"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", "not a JSON answer (HTTP 200)"),
        (None, "timed out"),
    ],
    ids=["not-http", "not-json", "silent"],
)
def test_something_else_on_the_socket_is_unreachable_turnd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answer: bytes | None, expected: str
) -> None:
    """A socket that does not speak the control API (or hangs) is "cannot reach", exit 1."""
    monkeypatch.setattr(turnctl, "TIMEOUT", 0.2)
    path = tmp_path / "other.sock"
    other = FakeTurnd(path, answer)
    try:
        result = CliRunner().invoke(turnctl.app, ["--socket", str(path), "status"])
    finally:
        other.close()
    assert result.exit_code == 1
    assert f"cannot reach turnd at {path}: {expected} (is it running?" in result.stderr


def test_an_error_status_without_a_json_error_shows_the_reason(tmp_path: Path) -> None:
    """A 5xx with no {"error"} body (a proxy, a dying daemon) exits 1 with the HTTP reason."""
    path = tmp_path / "other.sock"
    other = FakeTurnd(path, b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
    try:
        result = CliRunner().invoke(turnctl.app, ["--socket", str(path), "status"])
    finally:
        other.close()
    assert (result.exit_code, result.stderr) == (1, "turnctl: Service Unavailable\n")


# --- status -------------------------------------------------------------------------------------


def test_status_is_a_table_of_facts_and_listeners(server: ControlServer) -> None:
    """People get aligned name/value lines and a listener table."""
    result = run(server, "status")
    assert result.exit_code == 0, result.stderr
    out = result.stdout.splitlines()
    assert out[0].split() == ["version", "0.1.0"]
    assert out[1].split() == ["started", "2023-11-14", "22:13:20Z", "(up", "1h", "02m)"]
    assert ["relay", "addresses", "192.0.2.1,", "2001:db8::1"] in lines(result.stdout)
    assert ["draining", "no"] in lines(result.stdout)
    assert ["allocations", "2"] in lines(result.stdout)
    assert ["realm", "example.org"] in lines(result.stdout)
    assert out[6].index("192.0.2.1") == out[0].index("0.1.0")
    assert " ".join(out[7].split()) == (
        "fast path active on eth0, lo: 3 channels, 42 packets relayed (mode auto)"
    )
    assert out[8:] == [
        "listeners",
        "  TRANSPORT  ADDRESS  PORT",
        "  udp        0.0.0.0  3478",
        "  tls        ::       5349",
    ]


def test_status_json_is_the_daemon_answer(server: ControlServer) -> None:
    """--json prints turnd's JSON as it is."""
    result = run(server, "--json", "status")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == server.ops.status()


def test_status_copes_with_a_sparse_answer(server: ControlServer) -> None:
    """Fields an older or newer turnd does not send are shown as placeholders, not a crash."""
    server.ops.status = lambda: {"started": "yesterday"}  # type: ignore[method-assign]
    result = run(server, "status")
    assert result.exit_code == 0, result.stderr
    assert ["started", "yesterday"] in lines(result.stdout)
    assert ["relay", "addresses", "-"] in lines(result.stdout)
    assert "listeners" not in result.stdout


# --- allocations --------------------------------------------------------------------------------


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """turnctl's clock reads 100 s after the fake allocations started."""
    frozen = SimpleNamespace(
        time=lambda: 1_700_000_100.0, gmtime=time.gmtime, strftime=time.strftime
    )
    monkeypatch.setattr(turnctl, "time", frozen)


@pytest.mark.usefixtures("clock")
def test_allocations_list_is_a_table(server: ControlServer) -> None:
    """One row per allocation under a header; ages, expiries and sizes made readable."""
    result = run(server, "allocations", "list")
    assert result.exit_code == 0, result.stderr
    header, alice, bob = result.stdout.splitlines()
    assert header.split() == [
        "ID", "USER", "CLIENT", "TRANSPORT", "RELAY", "PERMS", "CHANNELS", "AGE",
        "EXPIRES", "IN", "TO", "PEER", "TO", "CLIENT",
    ]  # fmt: skip
    assert alice.split() == [
        "192.0.2.1:49152", "alice", "198.51.100.7:5000", "udp", "udp", "2", "1", "1m", "40s",
        "8m", "20s", "1.5", "KiB", "2.9", "MiB",
    ]  # fmt: skip
    assert bob.split()[:5] == [
        "[2001:db8::1]:49153", "1700000000:bob", "[2001:db8::7]:6000", "tcp", "tcp",
    ]  # fmt: skip
    assert header.index("USER") == alice.index("alice") == bob.index("1700000000:bob")


def test_allocations_list_passes_the_filters(server: ControlServer) -> None:
    """--user, --client and --transport go to turnd as the query."""
    args = ["--user", "alice", "--client", "198.51.100.7:5000", "--transport", "udp"]
    result = run(server, "--json", "allocations", "list", *args)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == [ALICE_ALLOCATION]
    assert server.ops.calls[-1] == ("allocations", "alice", "198.51.100.7:5000", "udp")


def test_no_allocations_says_so(server: ControlServer) -> None:
    """An empty list is a sentence for people and [] for scripts."""
    assert run(server, "allocations", "list", "--user", "nobody").stdout == "no allocations\n"
    assert json.loads(run(server, "--json", "allocations", "list", "--user", "x").stdout) == []


@pytest.mark.usefixtures("clock")
def test_allocations_show_lists_permissions_and_channels(server: ControlServer) -> None:
    """show gives one allocation's facts, its permissions and a channel table."""
    result = run(server, "allocations", "show", "192.0.2.1:49152")
    assert result.exit_code == 0, result.stderr
    words = lines(result.stdout)
    assert ["client", "198.51.100.7:5000", "(udp)"] in words
    assert ["rest", "id", "-"] in words
    assert ["relays", "192.0.2.1:49152", "(udp)"] in words
    assert ["to", "peer", "10", "packets,", "1.5", "KiB"] in words
    assert ["to", "client", "12", "packets,", "2.9", "MiB"] in words
    assert ["expires", "2023-11-14", "22:23:20Z", "(in", "8m", "20s)"] in words
    assert ["permissions", "203.0.113.5,", "203.0.113.6"] in words
    assert result.stdout.endswith("channels\n  NUMBER  PEER\n  0x4000  203.0.113.5:7000\n")


def test_allocations_show_of_an_ipv6_relay(server: ControlServer) -> None:
    """An id "[v6]:port" reaches turnd intact; --json gives the daemon's answer."""
    result = run(server, "--json", "allocations", "show", "[2001:db8::1]:49153")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["rest_id"] == BOB_ALLOCATION["rest_id"]


def test_allocations_show_without_detail_lists(server: ControlServer) -> None:
    """An answer without permission and channel lists shows "-" and no channel table."""

    def without_lists(allocation_id: str) -> dict[str, Any] | None:
        return dict(BOB_ALLOCATION)

    server.ops.allocation = without_lists  # type: ignore[method-assign]
    result = run(server, "allocations", "show", "x")
    assert result.exit_code == 0, result.stderr
    assert ["permissions", "-"] in lines(result.stdout)
    assert ["rest", "id", "bob"] in lines(result.stdout)
    assert "channels" not in result.stdout


def test_allocations_show_says_what_the_kernel_relayed(server: ControlServer) -> None:
    """The kernel fast path's part of each direction follows the totals; an answer without it
    (an older turnd) shows the totals alone, as the test above."""
    kernel = {
        "kernel_packets_to_peer": 8,
        "kernel_bytes_to_peer": 1_024,
        "kernel_packets_to_client": 0,
        "kernel_bytes_to_client": 0,
    }

    def with_kernel(allocation_id: str) -> dict[str, Any] | None:
        return {**ALICE_ALLOCATION, **kernel}

    server.ops.allocation = with_kernel  # type: ignore[method-assign]
    words = lines(run(server, "allocations", "show", "x").stdout)
    peer = ["to", "peer", "10", "packets,", "1.5", "KiB", "(8", "packets,", "1.0", "KiB"]
    assert [*peer, "in", "the", "kernel)"] in words
    client = ["to", "client", "12", "packets,", "2.9", "MiB", "(0", "packets,", "0", "B"]
    assert [*client, "in", "the", "kernel)"] in words


def test_an_unknown_allocation_exits_1_with_turnds_message(server: ControlServer) -> None:
    """turnd's 404 is exit 1 with its message, for show and kill alike."""
    for command in ("show", "kill"):
        result = run(server, "allocations", command, "192.0.2.9:1")
        assert result.exit_code == 1
        assert result.stderr == "turnctl: no allocation 192.0.2.9:1\n"


def test_allocations_kill(server: ControlServer) -> None:
    """kill ends the allocation and says so; with --json it prints nothing."""
    result = run(server, "allocations", "kill", "192.0.2.1:49152")
    assert (result.exit_code, result.stdout) == (0, "killed 192.0.2.1:49152\n")
    assert "192.0.2.1:49152" not in server.ops.live
    quiet = run(server, "--json", "allocations", "kill", "[2001:db8::1]:49153")
    assert (quiet.exit_code, quiet.stdout) == (0, "")
    assert not server.ops.live


# --- users --------------------------------------------------------------------------------------


def test_users_list(server: ControlServer) -> None:
    """A one-column table for people, a JSON list for scripts, a sentence when empty."""
    assert run(server, "users", "list").stdout == "USERNAME\nalice\ncarol\n"
    assert json.loads(run(server, "--json", "users", "list").stdout) == ["alice", "carol"]
    server.ops.passwords.clear()
    assert run(server, "users", "list").stdout == "no users\n"


def test_users_add_with_the_password_option(server: ControlServer) -> None:
    """--password P sets the password; --json is quiet."""
    result = run(server, "users", "add", "dave", "--password", "dave-pw")
    assert (result.exit_code, result.stdout) == (0, "user dave: password set\n")
    assert server.ops.passwords["dave"] == "dave-pw"
    quiet = run(server, "--json", "users", "add", "erin", "--password", "x")
    assert (quiet.exit_code, quiet.stdout) == (0, "")


def test_users_add_prompts_for_the_password_twice_hidden(server: ControlServer) -> None:
    """Without --password it asks (hidden, with confirmation): nothing lands in the history."""
    result = run(server, "users", "add", "dave", input="secret-pw\nsecret-pw\n")
    assert result.exit_code == 0, result.stderr
    assert "secret-pw" not in result.stdout
    assert server.ops.passwords["dave"] == "secret-pw"


def test_users_add_reads_the_password_from_stdin(server: ControlServer) -> None:
    """--password - takes one line of stdin, without its line ending."""
    result = run(server, "users", "add", "dave", "--password", "-", input="from-stdin\r\nmore\n")
    assert result.exit_code == 0, result.stderr
    assert server.ops.passwords["dave"] == "from-stdin"


def test_a_user_turnd_refuses_is_a_usage_error(server: ControlServer) -> None:
    """turnd's 400 (bad name or password) exits 2 with its message."""
    result = run(server, "users", "add", "a:b", "--password", "pw")
    assert (result.exit_code, result.stderr) == (2, "turnctl: a username must be without ':'\n")
    empty = run(server, "users", "add", "dave", "--password", "-", input="")
    assert (empty.exit_code, empty.stderr) == (2, "turnctl: a password must be non-empty\n")


def test_users_remove(server: ControlServer) -> None:
    """remove says so; an unknown user exits 1 with turnd's message."""
    result = run(server, "users", "remove", "carol")
    assert (result.exit_code, result.stdout) == (0, "removed user carol\n")
    again = run(server, "users", "remove", "carol")
    assert (again.exit_code, again.stderr) == (1, "turnctl: no user carol\n")
    assert run(server, "--json", "users", "remove", "alice").stdout == ""


# --- secrets ------------------------------------------------------------------------------------


def test_secrets_list(server: ControlServer) -> None:
    """id, source and fingerprint, newest first; a sentence when there are none."""
    result = run(server, "secrets", "list")
    assert result.stdout.splitlines() == [
        "ID        SOURCE   FINGERPRINT",
        "1a2b3c4d  runtime  1a2b3c4d",
        "9f8e7d6c  config   9f8e7d6c",
    ]
    assert json.loads(run(server, "--json", "secrets", "list").stdout) == server.ops.secret_list
    server.ops.secret_list.clear()
    assert run(server, "secrets", "list").stdout == "no secrets\n"


def test_secrets_add_prints_the_secret_once(server: ControlServer) -> None:
    """The new id and secret on stdout, the warning to keep it on stderr; --json for scripts."""
    result = run(server, "secrets", "add", "--value", "s3cret")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "id      new2\nsecret  s3cret\n"
    assert "shown only this once" in result.stderr
    generated = run(server, "--json", "secrets", "add")
    assert json.loads(generated.stdout) == {"id": "new3", "secret": "generated-secret"}


def test_a_secret_turnd_refuses_is_a_usage_error(server: ControlServer) -> None:
    """turnd's 400 for a bad secret value exits 2."""
    result = run(server, "secrets", "add", "--value", "a b")
    assert (result.exit_code, result.stderr) == (2, "turnctl: a secret must be without spaces\n")


def test_secrets_retire(server: ControlServer) -> None:
    """retire says so; unknown (404) and the last one (409) exit 1 with turnd's message."""
    result = run(server, "secrets", "retire", "1a2b3c4d")
    assert (result.exit_code, result.stdout) == (0, "retired secret 1a2b3c4d\n")
    unknown = run(server, "secrets", "retire", "1a2b3c4d")
    assert (unknown.exit_code, unknown.stderr) == (1, "turnctl: no secret 1a2b3c4d\n")
    last = run(server, "--json", "secrets", "retire", "9f8e7d6c")
    assert (last.exit_code, last.stderr) == (1, "turnctl: this is the last REST secret\n")
    server.ops.secret_list.append({"id": "x", "source": "runtime", "fingerprint": "x"})
    assert run(server, "--json", "secrets", "retire", "x").stdout == ""


# --- levers -------------------------------------------------------------------------------------


def test_revoke(server: ControlServer) -> None:
    """revoke reports how many allocations ended."""
    result = run(server, "revoke", "alice")
    assert (result.exit_code, result.stdout) == (0, "revoked alice: 1 allocations ended\n")
    assert json.loads(run(server, "--json", "revoke", "alice").stdout) == {"ended": 0}


def test_drain_and_drain_off(server: ControlServer) -> None:
    """drain turns draining on, --off turns it off; both report the live allocations."""
    on = run(server, "drain")
    assert (on.exit_code, on.stdout) == (0, "draining: 2 allocations left\n")
    assert server.ops.draining
    off = run(server, "drain", "--off")
    assert (off.exit_code, off.stdout) == (0, "not draining: 2 allocations\n")
    assert not server.ops.draining
    assert json.loads(run(server, "--json", "drain").stdout) == {"draining": True, "allocations": 2}


# --- cluster ------------------------------------------------------------------------------------


def test_cluster_nodes_is_a_table_of_states_and_a_line_of_counters(server: ControlServer) -> None:
    """One row per configured node (alive, draining, dead; this node marked), then counters."""
    result = run(server, "cluster", "nodes")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        "NODE  BACKBONE        STATE     LAST HEARD  RELAY PORTS",
        "   1  10.77.1.2:7478  alive     0.3s ago            192",
        "   2  10.77.2.2:7478  alive     -                    64  (this node)",
        "   3  [fd77::3]:7478  draining  0.4s ago            192",
        "   4  10.77.4.2:7478  dead      2m 05s ago           64",
        "forwarded: 12 client, 30 peer; second chance: 1; backbone drops: auth 1, replay 2",
    ]


def test_cluster_nodes_json_is_the_daemon_answer(server: ControlServer) -> None:
    """--json prints turnd's view and counters as they are."""
    result = run(server, "--json", "cluster", "nodes")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == server.ops.cluster_nodes()


def test_cluster_nodes_on_a_single_node_says_so_and_exits_0(server: ControlServer) -> None:
    """Not being in a cluster is a fact about the node, not a failure."""
    server.ops.in_cluster = False
    result = run(server, "cluster", "nodes")
    assert (result.exit_code, result.stdout) == (0, "not a cluster: [cluster] lists no nodes\n")
    as_json = json.loads(run(server, "--json", "cluster", "nodes").stdout)
    assert (as_json["enabled"], as_json["nodes"]) == (False, [])


def test_cluster_table_lists_each_nodes_port_ranges(server: ControlServer) -> None:
    """The range and slice size, then per node its port count and merged ranges."""
    result = run(server, "cluster", "table")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        "relay ports 49152-49663 in slices of 64; 448 catch sockets on this node",
        "NODE  PORTS  RANGES",
        "   1    192  49152-49279 49408-49471",
        "   2     64  49280-49343",
        "   3    192  49344-49407 49472-49599",
        "   4     64  49600-49663",
    ]
    assert json.loads(run(server, "--json", "cluster", "table").stdout) == CLUSTER_TABLE


def test_cluster_owner_names_the_node_and_whether_the_allocation_is_here(
    server: ControlServer,
) -> None:
    """The flow asked about (server defaulted by turnd), its owner's state and "here"."""
    result = run(server, "cluster", "owner", "198.51.100.7:5000")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        "udp 198.51.100.7:5000 -> 10.77.255.1:3478",
        "node 3 (alive) — allocation here: yes",
    ]
    args = ["[2001:db8::7]:6000", "--server", "[2001:db8::1]:3478", "--transport", "tcp"]
    other = run(server, "cluster", "owner", *args)
    assert other.stdout.splitlines()[1] == "node 3 (alive) — allocation here: no"
    assert server.ops.calls[-2:] == [
        ("cluster_owner", "udp", "198.51.100.7:5000", None),
        ("cluster_owner", "tcp", "[2001:db8::7]:6000", "[2001:db8::1]:3478"),
    ]
    as_json = json.loads(run(server, "--json", "cluster", "owner", "198.51.100.7:5000").stdout)
    assert as_json == {
        "node": 3,
        "alive": True,
        "here": True,
        "flow": "udp 198.51.100.7:5000 -> 10.77.255.1:3478",
    }


def test_cluster_owner_of_a_dead_node_says_dead(server: ControlServer) -> None:
    """An owner outside the live view shows as dead."""
    answer = {"node": 4, "alive": False, "here": False, "flow": "udp 1.2.3.4:5 -> 10.0.0.1:3478"}
    server.ops.cluster_owner = lambda *_: answer  # type: ignore[method-assign]
    result = run(server, "cluster", "owner", "1.2.3.4:5")
    assert result.stdout.splitlines()[1] == "node 4 (dead) — allocation here: no"


def test_cluster_owner_of_a_connection_accepted_elsewhere(server: ControlServer) -> None:
    """A TCP/TLS flow this node does not hold: owned by the node that accepted it."""
    answer = {"node": None, "alive": False, "here": False, "flow": "tls 1.2.3.4:5 -> 10.0.0.1:443"}
    server.ops.cluster_owner = lambda *_: answer  # type: ignore[method-assign]
    result = run(server, "cluster", "owner", "1.2.3.4:5", "--transport", "tls")
    assert result.stdout.splitlines() == [
        "tls 1.2.3.4:5 -> 10.0.0.1:443",
        "the node that accepted the connection (not this one) — allocation here: no",
    ]


def test_cluster_owner_of_an_address_turnd_cannot_parse_is_a_usage_error(
    server: ControlServer,
) -> None:
    """turnd's 400 becomes exit 2 with its reason."""
    result = run(server, "cluster", "owner", "203.0.113.5")
    assert result.exit_code == 2
    expected = "not an address: '203.0.113.5' (expected ip:port, or [ipv6]:port)"
    assert result.stderr == f"turnctl: {expected}\n"


@pytest.mark.parametrize(
    "args", [["cluster", "table"], ["cluster", "owner", "203.0.113.5:5000"]], ids=["table", "owner"]
)
def test_cluster_questions_to_a_single_node_exit_1(server: ControlServer, args: list[str]) -> None:
    """table and owner have no answer off a cluster: turnd's 409 message, exit 1."""
    server.ops.in_cluster = False
    result = run(server, *args)
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == "turnctl: not a cluster: [cluster] lists no nodes\n"


def test_reload(server: ControlServer) -> None:
    """reload says so; a failed reload exits 1 with turnd's reason."""
    assert run(server, "reload").stdout == "reloaded\n"
    assert json.loads(run(server, "--json", "reload").stdout) == {"ok": True, "error": None}
    server.ops.reload_error = "turnd.toml: relay.port_min: must be an integer"
    failed = run(server, "reload")
    assert failed.exit_code == 1
    assert failed.stderr == f"turnctl: reload failed: {server.ops.reload_error}\n"


def test_no_command_shows_help() -> None:
    """turnctl alone (or a group alone) prints usage rather than doing anything."""
    result = CliRunner().invoke(turnctl.app, [])
    assert "Usage" in result.stdout + result.stderr
    assert "allocations" in result.stdout + result.stderr


# --- credentials generate -----------------------------------------------------------------------

SECRET = "a-rest-secret-for-turnctl"


def test_generate_asks_turnd_when_it_runs(server: ControlServer) -> None:
    """With turnd reachable, the credential is turnd's (all its URLs), for --ttl and --id."""
    result = run(server, "credentials", "generate", "--ttl", "600", "--id", "app-7")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == server.ops.mint(600, "app-7")
    assert server.ops.calls[-2] == ("mint", 600, "app-7")


def test_generate_through_turnd_puts_host_in_every_url(server: ControlServer) -> None:
    """--host replaces the host of turnd's URLs and keeps their ports and transports."""
    result = run(server, "credentials", "generate", "--host", "2001:db8::5")
    stun, turn = json.loads(result.stdout)["iceServers"]
    assert stun == {"urls": ["stun:[2001:db8::5]:3478"]}
    assert turn["urls"] == ["turn:[2001:db8::5]:3478?transport=udp", "turns:[2001:db8::5]:5349"]
    assert turn["credential"] == "minted"


def test_generate_reports_turnds_refusal(server: ControlServer) -> None:
    """turnd cannot mint (no secret): exit 1 with its message, no fallback to a file."""
    server.ops.mint_error = "no REST secret is configured"
    result = run(server, "credentials", "generate")
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == "turnctl: no REST secret is configured\n"


def test_generate_refuses_a_ttl_that_is_not_positive(server: ControlServer) -> None:
    """--ttl 0 is a usage error, caught before asking anyone."""
    result = run(server, "credentials", "generate", "--ttl", "0")
    assert (result.exit_code, result.stderr) == (2, "turnctl: --ttl must be positive\n")
    assert not [call for call in server.ops.calls if call[0] == "mint"]


def test_generate_with_a_request_turnd_finds_malformed_is_a_usage_error(tmp_path: Path) -> None:
    """turnd's 400 to the mint request (say, a ttl beyond its limit) exits 2 with its message."""
    path = tmp_path / "turnd.sock"
    body = b'{"error": "\\"ttl\\" is beyond 172800"}'
    head = b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n" % len(body)
    other = FakeTurnd(path, head + body)
    try:
        args = ["--socket", str(path), "credentials", "generate", "--ttl", "999999"]
        result = CliRunner().invoke(turnctl.app, args)
    finally:
        other.close()
    assert (result.exit_code, result.stderr) == (2, 'turnctl: "ttl" is beyond 172800\n')


def test_generate_with_a_state_dir_mints_from_the_file(
    server: ControlServer, tmp_path: Path
) -> None:
    """Naming a secret source (--state-dir, --secret-file) skips turnd."""
    (tmp_path / "rest-secret").write_text(SECRET + "\n")
    args = ["--host", "192.0.2.1", "--state-dir", str(tmp_path)]
    result = run(server, "credentials", "generate", *args)
    assert result.exit_code == 0, result.stderr
    stun, turn = json.loads(result.stdout)["iceServers"]
    assert stun == {"urls": ["stun:192.0.2.1:3478"]}
    assert turn["credential"] == rest_password(SECRET, turn["username"])
    assert not [call for call in server.ops.calls if call[0] == "mint"]


def test_generate_from_the_file_refuses_an_id_turnd_would_reject(
    server: ControlServer, tmp_path: Path
) -> None:
    """An id with a control character mints nothing from the secret file: exit 2, say why."""
    (tmp_path / "rest-secret").write_text(SECRET + "\n")
    args = ["--host", "192.0.2.1", "--state-dir", str(tmp_path), "--id", "a\tb"]
    result = run(server, "credentials", "generate", *args)
    assert result.exit_code == 2
    assert "cannot mint: the id is not a valid STUN username" in result.stderr
    assert result.stdout == ""


def test_generate_falls_back_to_the_default_secret_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """turnd unreachable: say so on stderr and mint from <default state dir>/rest-secret."""
    monkeypatch.setattr(turnctl_credentials, "DEFAULT_STATE_DIR", str(tmp_path))
    (tmp_path / "rest-secret").write_text(SECRET)
    missing = tmp_path / "no.sock"
    args = ["--socket", str(missing), "credentials", "generate", "--host", "h", "--id", "x"]
    result = CliRunner().invoke(turnctl.app, args)
    assert result.exit_code == 0, result.stderr
    assert result.stderr == (
        f"turnctl: cannot reach turnd at {missing}: No such file or directory"
        f" (is it running? see --socket); minting from {tmp_path / 'rest-secret'}\n"
    )
    turn = json.loads(result.stdout)["iceServers"][1]
    parsed = parse_rest_username(turn["username"])
    assert parsed is not None and parsed.ident == "x"


def test_generate_from_the_file_needs_a_host(tmp_path: Path) -> None:
    """Without turnd nothing knows the public address: --host is then required (exit 2)."""
    (tmp_path / "rest-secret").write_text(SECRET)
    result = CliRunner().invoke(
        turnctl.app, ["credentials", "generate", "--state-dir", str(tmp_path)]
    )
    assert (result.exit_code, result.stderr) == (
        2,
        "turnctl: --host is needed to mint from the secret file\n",
    )


def test_generate_from_a_secret_file_that_cannot_be_used(tmp_path: Path) -> None:
    """--secret-file: missing or empty exits 1 naming the file."""
    missing = tmp_path / "missing"
    result = CliRunner().invoke(
        turnctl.app, ["credentials", "generate", "--host", "h", "--secret-file", str(missing)]
    )
    assert result.exit_code == 1
    assert f"cannot read the REST secret {missing}: No such file or directory" in result.stderr
    empty = tmp_path / "empty"
    empty.write_text("\n")
    result = CliRunner().invoke(
        turnctl.app, ["credentials", "generate", "--host", "h", "--secret-file", str(empty)]
    )
    assert (result.exit_code, result.stderr) == (1, f"turnctl: {empty} is empty\n")


def test_version_and_the_console_entry_point(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``turnctl version`` prints the package version, also through main()."""
    from turnd import __version__

    monkeypatch.setattr("sys.argv", ["turnctl", "version"])
    with pytest.raises(SystemExit) as exited:
        turnctl.main()
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"{__version__}\n"


# --- the small formatters -----------------------------------------------------------------------


def test_table_aligns_columns_and_right_aligns_numbers() -> None:
    """Two spaces between columns, numbers flush right, no trailing spaces."""
    text = turnctl.table([("a", 1, "x"), ("bbb", 100, "")], ("NAME", "N", "NOTE"))
    assert text.splitlines() == ["NAME    N  NOTE", "a       1  x", "bbb   100"]
    assert turnctl.table([]) == ""
    assert turnctl.table([], ("ONLY", "HEADERS")) == "ONLY  HEADERS"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(-3, "0s"), (7.4, "7s"), (249, "4m 09s"), (7_500, "2h 05m"), (273_600, "3d 4h")],
)
def test_duration(seconds: float, text: str) -> None:
    """Two units at most; the past clamps to 0s."""
    assert turnctl.duration(seconds) == text


@pytest.mark.parametrize(
    ("octets", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.5 KiB"),
        (3 << 30, "3.0 GiB"),
        (5 << 50, "5120.0 TiB"),
    ],
)
def test_size(octets: int, text: str) -> None:
    """Binary units, one decimal; TiB is the largest."""
    assert turnctl.size(octets) == text


def test_with_host_rewrites_only_the_host() -> None:
    """Ports, queries and URLs it does not understand are kept."""
    ice = {
        "iceServers": [
            {"urls": ["stun:[2001:db8::1]:3478", "turn:relay.example?transport=tcp"]},
            {"urls": ["not a url"], "username": "u"},
            {"credential": "no urls"},
            {"urls": "turns:192.0.2.1:5349?transport=tcp"},
        ],
        "ttl": 5,
    }
    assert turnctl.with_host(ice, "turn.example.org") == {
        "iceServers": [
            {"urls": ["stun:turn.example.org:3478", "turn:turn.example.org?transport=tcp"]},
            {"urls": ["not a url"], "username": "u"},
            {"credential": "no urls"},
            {"urls": "turns:turn.example.org:5349?transport=tcp"},
        ],
        "ttl": 5,
    }


def test_keys_list_add_remove(server: ControlServer) -> None:
    """keys list (table, --json, none), add (token once, on stdout), remove."""
    assert run(server, "keys", "list").stdout.splitlines() == ["ID    SOURCE", "app1  config"]
    added = run(server, "keys", "add", "app2", "--token", "t0ken")
    assert (added.exit_code, added.stdout) == (0, "id     app2\ntoken  t0ken\n")
    assert "shown only this once" in added.stderr
    generated = run(server, "--json", "keys", "add", "app3")
    assert json.loads(generated.stdout) == {"id": "app3", "token": "generated-token"}
    assert json.loads(run(server, "--json", "keys", "list").stdout)[1] == {
        "id": "app2",
        "source": "runtime",
    }
    assert run(server, "keys", "remove", "app2").stdout == "removed key app2\n"
    assert run(server, "--json", "keys", "remove", "app3").stdout == ""
    refused = run(server, "keys", "remove", "app1")
    assert refused.exit_code == 1 and "configuration" in refused.stderr
    server.ops.key_list.clear()
    assert run(server, "keys", "list").stdout == "no keys\n"
