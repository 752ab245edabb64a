"""Every public TURN advisory of 2023-2026 as a regression test (issue 20).

Each test names the advisory it replays in its docstring. Core advisories run on the in-memory
harness (tests/core/harness.py); those about what reaches logs, files, metrics or a socket run
against the real pieces (the log formatters, a turnd process on loopback, turnctl).
"""

from __future__ import annotations

import ast
import inspect
import json
import logging
import os
import socket
import ssl
import struct
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from prometheus_client.parser import text_string_to_metric_families

from auth.credentials import rest_password
from stun import attributes as at
from stun.addresses import Address, AddressFamily
from stun.message import HEADER_SIZE, Integrity, Message, MessageClass, Method, encode, fingerprint
from testkit.daemon import PASSWORD, REALM, REST_SECRET, USER, Daemon, start_turnd, write_config
from testkit.sync import TurnClient, wait_until
from tests.core.harness import PEER, PEER2, Client, World, core_settings, error_code, replies
from turnd.core.actions import FiveTuple, Transport
from turnd.core.server import TurnServer

ROOT = Path(__file__).resolve().parent.parent
#: The packages that ship (bench/ and tests/ may use ``random`` for workloads).
LIBRARY_PACKAGES = ("turnd", "auth", "stun", "forwarding")

# --- CVE-2025-69217: predictable randomness ---------------------------------------------------


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_cve_2025_69217_no_library_module_imports_random() -> None:
    """CVE-2025-69217: no shipped module imports ``random`` (nonces, ports, ids, tokens)."""
    offenders = [
        str(path.relative_to(ROOT))
        for package in LIBRARY_PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if "random" in _imports(path)
    ]
    assert offenders == []


def test_cve_2025_69217_service_injects_os_urandom_into_the_core(tmp_path: Path) -> None:
    """CVE-2025-69217: the daemon's core, and its relay-port pools, draw from os.urandom (never
    from ``random``), and build_core has no default rng to fall back to."""
    from turnd.assembly import build_core, resolve_secrets
    from turnd.config import load_config
    from turnd.service import TurnService

    config, _ = resolve_secrets(load_config(str(write_config(tmp_path)), {}))
    core = TurnService(config, relay_ipv4="127.0.0.1").core
    assert core.rng is os.urandom
    assert all(pool.rng is os.urandom for pool in core.ports.pools.values())
    assert inspect.signature(build_core).parameters["rng"].default is inspect.Parameter.empty


def test_cve_2025_69217_ports_txids_and_tokens_all_come_from_the_injected_rng() -> None:
    """CVE-2025-69217: relay ports, reservation tokens and the transaction id of every
    server-originated indication are bytes the injected rng (os.urandom in the daemon) gave:
    no id is a counter or derived from another (RFC 8489 §6)."""
    drawn: list[bytes] = []

    def rng(n: int) -> bytes:
        drawn.append(os.urandom(n))
        return drawn[-1]

    world = World()
    world.server = TurnServer(
        world.settings, world.server.auth.authenticator, world.server.auth.nonces,
        world.server.policy, rng,
    )  # fmt: skip
    alice = world.client()
    reply = alice.allocate(at.RequestedTransport(17), at.EvenPort(reserve=True))
    token = reply.get(at.ReservationToken)
    assert token is not None and token.token in drawn
    picks = [int.from_bytes(b, "big") for b in drawn if len(b) == 4]
    pool = world.server.ports.pools[AddressFamily.IPV4]
    probed = {pool.port_at(p % pool.size) for p in picks}
    assert probed & {alice.relayed.port, alice.relayed.port + 1}  # an even pair starts at the even
    assert error_code(alice.create_permission(PEER)) is None
    txids = []
    for _ in range(3):
        [frame] = replies(world.peer_packet(alice.relayed, PEER, b"x"), alice.five_tuple)
        txids.append(frame[8:20])
    pool_bytes = b"".join(drawn)
    assert all(txid in pool_bytes for txid in txids)
    assert len(set(txids)) == 3
    assert len({int.from_bytes(t, "big") - int.from_bytes(txids[0], "big") for t in txids}) == 3


def test_cve_2025_69217_nonces_are_keyed_by_a_secret_from_the_secrets_module() -> None:
    """CVE-2025-69217: the nonce key (and every generated secret) comes from ``secrets``."""
    from turnd import runtime, state

    for module in (state, runtime):
        assert "secrets.token_urlsafe" in inspect.getsource(module)
    assert "random" not in _imports(Path(state.__file__)) | _imports(Path(runtime.__file__))


# --- coturn ab762f33: attributes after MESSAGE-INTEGRITY ---------------------------------------


def _append_after_integrity(signed: bytes, extra: Any, txid: bytes) -> bytes:
    """``signed`` (integrity, no FINGERPRINT) with ``extra`` appended, then a fresh FINGERPRINT:
    the message still verifies, and ``extra`` sits after the integrity attribute."""
    value = extra.pack(b"\x21\x12\xa4\x42" + txid)
    buf = bytearray(signed)
    buf += struct.pack("!HH", extra.TYPE, len(value)) + value + b"\x00" * (-len(value) % 4)
    struct.pack_into("!H", buf, 2, len(buf) - HEADER_SIZE + 8)
    buf += struct.pack("!HHI", 0x8028, 4, fingerprint(bytes(buf)))
    return bytes(buf)


def _signed_with_extra(client: Client, method: Method, attributes: list[Any], extra: Any) -> bytes:
    txid = client.new_txid()
    message = Message(
        method,
        MessageClass.REQUEST,
        txid,
        (*attributes, *client.credential_attributes()),
    )
    integrity = Integrity.SHA256 if client.sha256 else Integrity.SHA1
    signed = encode(message, key=client.key(), integrity=integrity, fingerprint=False)
    return _append_after_integrity(signed, extra, txid)


@pytest.mark.parametrize("sha256", [False, True], ids=["mi-sha1", "mi-sha256"])
def test_coturn_ab762f33_lifetime_after_integrity_is_not_acted_on(sha256: bool) -> None:
    """coturn ab762f33: a LIFETIME 0 appended after a valid MESSAGE-INTEGRITY(-SHA256), with
    FINGERPRINT recomputed, does not delete the allocation: the Refresh keeps the default."""
    world = World()
    alice = world.client(sha256=sha256)
    assert error_code(alice.allocate()) is None
    data = _signed_with_extra(alice, Method.REFRESH, [], at.Lifetime(0))
    [reply] = alice.raw(data)
    assert error_code(reply) is None, reply
    lifetime = reply.get(at.Lifetime)
    assert lifetime is not None and lifetime.seconds == world.settings.allocation_lifetime
    assert alice.five_tuple in world.server.allocations
    assert error_code(alice.refresh()) is None  # still there


@pytest.mark.parametrize("sha256", [False, True], ids=["mi-sha1", "mi-sha256"])
def test_coturn_ab762f33_peer_address_after_integrity_gets_no_permission(sha256: bool) -> None:
    """coturn ab762f33: an XOR-PEER-ADDRESS appended after the integrity of a CreatePermission
    gets no permission; only the signed peer does."""
    world = World()
    alice = world.client(sha256=sha256)
    assert error_code(alice.allocate()) is None
    data = _signed_with_extra(
        alice, Method.CREATE_PERMISSION, [at.XorPeerAddress(PEER)], at.XorPeerAddress(PEER2)
    )
    [reply] = alice.raw(data)
    assert error_code(reply) is None, reply
    alloc = world.server.allocations[alice.five_tuple]
    assert set(alloc.permissions) == {PEER.host}
    assert alice.send(PEER2, b"x") == []


def test_coturn_ab762f33_lifetime_after_integrity_of_an_allocate_is_ignored() -> None:
    """coturn ab762f33: an Allocate whose LIFETIME 3600 follows the integrity gets the default
    lifetime, not the appended one."""
    world = World()
    alice = world.client()
    alice.fetch_nonce()
    data = _signed_with_extra(
        alice, Method.ALLOCATE, [at.RequestedTransport(17)], at.Lifetime(3600)
    )
    [reply] = alice.raw(data)
    assert error_code(reply) is None, reply
    lifetime = reply.get(at.Lifetime)
    assert lifetime is not None and lifetime.seconds == world.settings.allocation_lifetime


def test_coturn_ab762f33_channel_number_after_integrity_binds_nothing() -> None:
    """coturn ab762f33: a ChannelBind whose CHANNEL-NUMBER follows the integrity is answered as
    if it had none (400): no channel, no permission."""
    world = World()
    alice = world.client()
    assert error_code(alice.allocate()) is None
    signed = [at.XorPeerAddress(PEER)]
    data = _signed_with_extra(alice, Method.CHANNEL_BIND, signed, at.ChannelNumber(0x4000))
    [reply] = alice.raw(data)
    assert error_code(reply) == 400
    alloc = world.server.allocations[alice.five_tuple]
    assert alloc.channels == {} and alloc.permissions == {}


def test_coturn_ab762f33_lone_appended_peer_address_is_a_400() -> None:
    """coturn ab762f33: a CreatePermission whose only XOR-PEER-ADDRESS follows the integrity is
    answered as if it had none (400) and installs nothing."""
    world = World()
    alice = world.client()
    assert error_code(alice.allocate()) is None
    data = _signed_with_extra(alice, Method.CREATE_PERMISSION, [], at.XorPeerAddress(PEER))
    [reply] = alice.raw(data)
    assert error_code(reply) == 400
    assert world.server.allocations[alice.five_tuple].permissions == {}


# --- GHSA-847g-qmc6-6m4r: EVEN-PORT port leaks -------------------------------------------------

EVEN_PORT_ROUNDS = 10_000


def test_ghsa_847g_qmc6_6m4r_even_port_then_refresh_0_leaks_no_port() -> None:
    """GHSA-847g-qmc6-6m4r: 10,000 rounds of Allocate EVEN-PORT R=0 then Refresh 0 leave the
    free-port count where it was."""
    world = World()
    alice = world.client()
    assert world.taken_ports() == set()
    for _ in range(EVEN_PORT_ROUNDS):
        reply = alice.allocate(at.RequestedTransport(17), at.EvenPort(reserve=False))
        assert error_code(reply) is None, reply
        assert alice.relayed.port % 2 == 0
        assert error_code(alice.refresh(0)) is None
        assert world.taken_ports() == set()
    assert world.client_state()["reservations"] == {}
    assert world.client_state()["per_user"] == {}


def test_ghsa_847g_qmc6_6m4r_unredeemed_reservation_tokens_expire() -> None:
    """GHSA-847g-qmc6-6m4r: a reservation (EVEN-PORT R=1) never redeemed gives its port back
    when its lifetime passes, and the token no longer works."""
    world = World()
    alice = world.client()
    reply = alice.allocate(at.RequestedTransport(17), at.EvenPort(reserve=True))
    token = reply.get(at.ReservationToken)
    assert token is not None
    reserved = alice.relayed.port + 1
    assert error_code(alice.refresh(0)) is None
    assert world.taken_ports() == {reserved}
    world.advance(world.settings.reservation_lifetime + 1)
    assert world.taken_ports() == set()
    assert world.client_state()["reservations"] == {}
    bob = world.client("bob", "bob-pw", address=Address("203.0.113.9", 5000))
    assert error_code(bob.allocate(at.RequestedTransport(17), token)) == 508
    assert world.taken_ports() == set()


# --- GHSA-f6hc-79w3-p8pq: quotas over every teardown path --------------------------------------


def _counters(world: World) -> dict[str, Any]:
    state = world.client_state()
    return {
        "per_user": state["per_user"],
        "per_ip": state["per_ip"],
        "node": len(state["allocations"]) + len(state["pending_tuples"]),
        "ports": state["taken_ports"],
    }


def _assert_never_negative(world: World) -> None:
    server = world.server
    quotas = server.quotas
    assert all(v > 0 for v in quotas.per_user.values()), quotas.per_user
    assert all(v > 0 for v in quotas.per_ip.values()), quotas.per_ip


EMPTY = {"per_user": {}, "per_ip": {}, "node": 0, "ports": {AddressFamily.IPV4: set()}}


def _tcp_client(world: World, port: int = 50000) -> Client:
    return world.client(transport=Transport.TCP, address=Address("203.0.113.5", port))


Teardown = Callable[[World, Client], None]


def _tcp_close(world: World, client: Client) -> None:
    world.settle(world.server.connection_closed(client.five_tuple, world.now))


def _timeout(world: World, client: Client) -> None:
    world.settle(world.advance(world.settings.allocation_lifetime + 1))


def _refresh_0(world: World, client: Client) -> None:
    assert error_code(client.refresh(0)) in (None, 401, 437)  # 401: revoked first


def _kill(world: World, client: Client) -> None:
    world.settle(world.server.kill(client.five_tuple, world.now))


def _revoke(world: World, client: Client) -> None:
    world.settle(world.server.revoke(client.username, world.now))


def _drain(world: World, client: Client) -> None:
    """Drain (the control plane's POST /drain), then the drained allocation times out."""
    world.server.draining = True
    assert error_code(world.client("bob", "bob-pw", address=Address("203.0.113.7", 1)).allocate())
    _timeout(world, client)


TEARDOWNS: dict[str, Teardown] = {
    "tcp_close": _tcp_close,
    "timeout": _timeout,
    "refresh_0": _refresh_0,
    "kill": _kill,
    "revoke": _revoke,
    "drain": _drain,
}


@pytest.mark.parametrize("first", list(TEARDOWNS))
@pytest.mark.parametrize("second", [None, *TEARDOWNS])
def test_ghsa_f6hc_79w3_p8pq_teardown_releases_exactly_what_was_taken(
    first: str, second: str | None
) -> None:
    """GHSA-f6hc-79w3-p8pq: every teardown path, and every pair of them on one allocation (kill
    then timeout, revoke then TCP close, ...), returns the per-user, per-IP and node counters and
    the relay ports exactly to zero and never below, while another user's allocation keeps its
    counts."""
    world = World()
    bob = world.client("bob", "bob-pw", address=Address("203.0.113.6", 4000))
    assert error_code(bob.allocate()) is None
    baseline = _counters(world)
    alice = _tcp_client(world)
    assert error_code(alice.allocate()) is None
    assert _counters(world)["node"] == 2
    for name in (first, second):
        if name is None:
            continue
        if name in ("timeout", "drain"):
            assert error_code(bob.refresh(3600)) is None  # keep bob alive across the timeout
        TEARDOWNS[name](world, alice)
        _assert_never_negative(world)
        assert alice.five_tuple not in world.server.allocations
    world.server.draining = False
    assert _counters(world) == baseline
    assert error_code(bob.refresh(0)) is None
    assert _counters(world) == EMPTY


def test_ghsa_f6hc_79w3_p8pq_tcp_close_while_relay_is_opening_releases_once() -> None:
    """GHSA-f6hc-79w3-p8pq: a TCP connection that closes while its relay is still being opened,
    then times out and is killed, releases its quota and port once."""
    world = World(bind_ok=True)
    alice = _tcp_client(world)
    alice.fetch_nonce()
    data = alice.build(Method.ALLOCATE, [at.RequestedTransport(17)])
    opened = world.server.handle_client(alice.five_tuple, data, world.now)
    assert world.server.quotas.per_user == {"alice": 1}
    world.settle(world.server.connection_closed(alice.five_tuple, world.now))
    world.settle(opened)  # the adapter's bind answer arrives after the close
    for teardown in (_kill, _timeout, _tcp_close):
        teardown(world, alice)
        _assert_never_negative(world)
    assert _counters(world) == EMPTY


def test_ghsa_f6hc_79w3_p8pq_failed_bind_releases_what_it_took() -> None:
    """GHSA-f6hc-79w3-p8pq: an Allocate whose relay cannot be bound takes nothing for good."""
    world = World(bind_ok=False)
    alice = world.client()
    assert error_code(alice.allocate()) == 508
    _kill(world, alice)
    _timeout(world, alice)
    _assert_never_negative(world)
    assert _counters(world) == EMPTY


def test_ghsa_f6hc_79w3_p8pq_refused_allocates_take_nothing() -> None:
    """GHSA-f6hc-79w3-p8pq: Allocates refused at the quota (486) or while draining (508) take
    no quota, so the teardown of the allocations that exist releases exactly those."""
    world = World(core_settings(max_allocations_per_user=1))
    alice = world.client()
    assert error_code(alice.allocate()) is None
    second = world.client(address=Address("203.0.113.5", 50001))
    assert error_code(second.allocate()) == 486
    world.server.draining = True
    third = world.client("bob", "bob-pw", address=Address("203.0.113.5", 50002))
    assert error_code(third.allocate()) == 508
    assert _counters(world)["per_user"] == {"alice": 1}
    assert _counters(world)["per_ip"] == {"203.0.113.5": 1}
    _kill(world, alice)
    _kill(world, alice)
    assert _counters(world) == EMPTY


def test_ghsa_f6hc_79w3_p8pq_stream_slots_are_released_once(tmp_path: Path) -> None:
    """GHSA-f6hc-79w3-p8pq: the service's per-IP and node connection counts go back exactly to
    zero when connections close, even when a close is reported twice or a connection refused at
    the limit closes: a refused or twice-closed one never frees another's slot."""
    from turnd.assembly import resolve_secrets
    from turnd.config import load_config
    from turnd.service import TurnService
    from turnd.streams import ClientStream

    config, _ = resolve_secrets(
        load_config(str(write_config(tmp_path, "[limits]\nmax_connections_per_ip = 2\n")), {})
    )
    service = TurnService(config, relay_ipv4="127.0.0.1")
    server = Address("127.0.0.1", 3478)

    def stream(port: int) -> ClientStream:
        made = ClientStream(service.packets, Transport.TCP, server)
        made.five_tuple = FiveTuple(Transport.TCP, Address("203.0.113.5", port), server)
        return made

    first, second, refused = stream(1), stream(2), stream(3)
    packets, table = service.packets, service.packets.streams
    assert packets.admit_stream(first) and packets.admit_stream(second)
    assert not packets.admit_stream(refused)
    packets.stream_closed(refused)  # connection_lost of the refused one
    assert table.per_ip == {"203.0.113.5": 2} and len(table.by_five_tuple) == 2
    for closing in (first, first, second, second):
        packets.stream_closed(closing)
        assert all(count > 0 for count in table.per_ip.values())
    assert table.per_ip == {} and table.by_five_tuple == {}
    assert packets.admit_stream(stream(4)) and packets.admit_stream(stream(5))


# --- GHSA-4g7c-p5wg-j4hp: format strings and control characters in names -----------------------

#: A username body that is a format string for printf and for str.format, with CRLF, a forged
#: log line, a tab and a NUL: every sink must carry it verbatim or escaped, never interpret it.
HOSTILE = "%s%x%n{0.__class__}\r\nforged=1 level=error\t\x00end"
#: Its parts that are printable (each must appear verbatim wherever the name is written).
HOSTILE_PRINTABLE = ("%s%x%n{0.__class__}", "forged=1 level=error", "end")


def _logged(capsys: pytest.CaptureFixture[str], fmt: str, name: str) -> str:
    """What turnd's ``fmt`` log formatter writes for events carrying ``name`` in every slot."""
    from turnd import logs

    saved = list(logs.LOGGER.handlers), logs.LOGGER.level, logs.LOGGER.propagate
    capsys.readouterr()
    try:
        logs.setup("info", fmt)
        logs.event(logging.INFO, "auth.revoked", username=name, realm=name, allocations=0)
        logs.event(logging.WARNING, "allocation.ended", name, username=name)
    finally:
        logs.LOGGER.handlers[:], logs.LOGGER.level, logs.LOGGER.propagate = saved
    return capsys.readouterr().err


def test_ghsa_4g7c_p5wg_j4hp_json_logs_carry_hostile_names_verbatim(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """GHSA-4g7c-p5wg-j4hp: in JSON logs a username or realm that is a format string with CRLF
    and NUL is one line per event and decodes back to exactly what was sent."""
    lines = _logged(capsys, "json", HOSTILE).splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["username"] == first["realm"] == HOSTILE
    assert second["msg"] == second["username"] == HOSTILE


@pytest.mark.parametrize(
    "name",
    [
        HOSTILE,
        "%s%x%n{0.__class__}\r\nforged=1\tlevel=error\x00end",
    ],
    ids=["with-space", "without-space"],
)
def test_ghsa_4g7c_p5wg_j4hp_text_logs_forge_no_line(
    capsys: pytest.CaptureFixture[str], name: str
) -> None:
    """GHSA-4g7c-p5wg-j4hp: in text logs a hostile name forges no line and no field: one line per
    event, the printable parts verbatim, control characters escaped, nothing formatted."""
    lines = _logged(capsys, "text", name).splitlines()
    assert len(lines) == 2, lines
    assert not any(line.startswith("forged") for line in lines)
    for line in lines:
        assert all(c.isprintable() for c in line), repr(line)
        assert "%s%x%n{0.__class__}" in line and "end" in line


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A turnd with UDP, TCP and TLS listeners and a usage file (usage.jsonl beside its log)."""
    directory = tmp_path_factory.mktemp("advisories")
    extra = f'[usage]\nfile = "{directory / "usage.jsonl"}"\n'
    running = start_turnd(directory, extra, listen='["udp:0", "tcp:0", "tls:0"]')
    yield running
    assert running.stop() == 0
    assert "Traceback" not in running.log_path.read_text()


def turnctl(daemon: Daemon, *args: str, json_output: bool = True) -> Any:
    """Run turnctl against the daemon: the parsed --json output, or the human text."""
    from typer.testing import CliRunner

    from turnd.turnctl import app

    flags = ["--json"] if json_output else []
    result = CliRunner().invoke(app, ["--socket", daemon.control_socket, *flags, *args])
    assert result.exit_code == 0, result.output
    if not json_output:
        return result.stdout
    return json.loads(result.stdout) if result.stdout.strip() else None


def _hostile_rest_client(daemon: Daemon) -> TurnClient:
    username = f"{int(time.time()) + 600}:{HOSTILE}"
    return TurnClient(("127.0.0.1", daemon.port), username, rest_password(REST_SECRET, username))


def _assert_no_forged_line(text: str) -> None:
    for line in text.splitlines():
        assert not line.lstrip().startswith("forged"), repr(text)
        assert "\x00" not in line


def test_ghsa_4g7c_p5wg_j4hp_hostile_rest_username_through_every_sink(daemon: Daemon) -> None:
    """GHSA-4g7c-p5wg-j4hp: a REST username that is a format string with CRLF, a tab and NUL
    allocates, is listed by turnctl (JSON verbatim, text on one escaped row), never becomes a
    metrics label, ends into one usage record and one JSON log line that carry it verbatim, and
    is revoked by name."""
    with _hostile_rest_client(daemon) as client:
        assert error_code(client.allocate()) is None
        name = client.username
        listed = turnctl(daemon, "allocations", "list", "--user", name)
        [mine] = listed
        assert mine["username"] == name
        human = turnctl(daemon, "allocations", "list", json_output=False)
        _assert_no_forged_line(human)
        [row] = [line for line in human.splitlines() if HOSTILE_PRINTABLE[0] in line]
        assert all(part in row for part in HOSTILE_PRINTABLE)
        metrics = (
            urllib.request.urlopen(f"http://127.0.0.1:{daemon.metrics_port}/metrics", timeout=10)
            .read()
            .decode()
        )
        assert not any(part in metrics for part in HOSTILE_PRINTABLE[:2])
        list(text_string_to_metric_families(metrics))  # still parses
        assert turnctl(daemon, "revoke", name)["ended"] == 1
        revoked = turnctl(daemon, "revoke", name, json_output=False)
        _assert_no_forged_line(revoked)
        assert error_code(client.refresh()) in (401, 437)
    assert wait_until(lambda: any(_usage(daemon, name)))
    [record] = _usage(daemon, name)
    assert record["reason"] == "revoked"
    events = [e for e in daemon.log_events() if e.get("username") == name]
    assert {e["event"] for e in events} >= {"allocation.ended", "auth.revoked"}
    for line in daemon.log_path.read_text().splitlines():
        assert line.startswith("{"), repr(line)  # nothing forged a non-JSON line


def _usage(daemon: Daemon, name: str) -> list[dict[str, Any]]:
    path = daemon.config_path.parent / "usage.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return [r for r in records if r["username"] == name]


def test_ghsa_4g7c_p5wg_j4hp_hostile_realm_is_refused_harmlessly(daemon: Daemon) -> None:
    """GHSA-4g7c-p5wg-j4hp: a request whose REALM is a format string with CRLF and NUL gets a
    plain refusal naming the server's own realm, and the log stays one JSON object a line."""
    with TurnClient(("127.0.0.1", daemon.port), USER, PASSWORD) as client:
        client.learn(client.allocate())
        key = client.key()  # signed with the right key: only the REALM is hostile
        client.key = lambda: key  # type: ignore[method-assign]
        client.realm = HOSTILE
        reply = client.allocate()
        assert error_code(reply) in (400, 401)
        realm = reply.get(at.Realm)
        assert realm is None or realm.value == REALM
        assert error_code(client.binding()) is None  # the daemon still serves
    for line in daemon.log_path.read_text().splitlines():
        assert line.startswith("{"), repr(line)


def test_ghsa_4g7c_p5wg_j4hp_hostile_static_usernames_through_the_control_api(
    daemon: Daemon,
) -> None:
    """GHSA-4g7c-p5wg-j4hp: a user named by a format string is added, listed verbatim,
    authenticates and is removed by name; names, passwords, REST secrets and API tokens with CR,
    LF, NUL or other control characters are refused with 400 (a CR once made the users file
    unreadable for every later change; a NUL went into the secret and key files)."""
    name = "%s%x%n{0.__class__}"
    turnctl(daemon, "users", "add", name, "--password", "pw-12345")
    assert name in turnctl(daemon, "users", "list")
    with TurnClient(("127.0.0.1", daemon.port), name, "pw-12345") as client:
        assert error_code(client.allocate()) is None
        assert error_code(client.refresh(0)) is None
    for hostile in ("cr\rforged", "lf\nforged", "nul\x00end", "tab\tend"):
        path = f"/v1/users/{quote(hostile, safe='')}"
        assert _control(daemon, "PUT", path, {"password": "pw-12345"}) == 400
    assert _control(daemon, "PUT", "/v1/users/ok-user", {"password": "pw\rforged"}) == 400
    for control_char in ("\x00", "\x01", "\x7f", "\r"):
        assert _control(daemon, "POST", "/v1/secrets", {"secret": f"s{control_char}x"}) == 400
        assert _control(daemon, "PUT", "/v1/keys/k1", {"token": f"t{control_char}x"}) == 400
    assert name in turnctl(daemon, "users", "list")  # the file still reads
    turnctl(daemon, "users", "remove", name)
    assert name not in turnctl(daemon, "users", "list")


# --- GHSA-m23x-5qf5-988g: HTTP on TURN stream ports ----------------------------------------------

#: A marker that a reply echoing any of the request would contain.
ECHO_MARKER = b"Echo-Me-7f3a<script>"
#: Each an HTTP request as a browser or a scanner sends it to the TURN port, padded past any
#: length its first bytes announce as a frame (so the server has whole "frames" to answer).
HTTP_REQUESTS = [
    f"{method} /{ECHO_MARKER.decode()}?%s%x%n HTTP/1.1\r\nHost: {ECHO_MARKER.decode()}\r\n"
    f"X-Marker: {ECHO_MARKER.decode()}\r\nContent-Length: 65536\r\n\r\n".encode()
    + ECHO_MARKER * 5000
    for method in ("GET", "POST", "HEAD", "OPTIONS", "CONNECT", "PRI", "TRACE")
]
#: How long to wait for a reply that should never come (a bound on the wait, not a threshold).
QUIET_WAIT = 1.0


def _reply_to(conn: socket.socket, request: bytes) -> bytes:
    """Everything the server sends back until it closes or stays quiet for QUIET_WAIT."""
    conn.settimeout(QUIET_WAIT)
    received = b""
    try:
        conn.sendall(request)
        while chunk := conn.recv(65536):
            received += chunk
    except (TimeoutError, ConnectionError, ssl.SSLError):
        pass
    return received


def _tls_client() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@pytest.mark.parametrize("request_bytes", HTTP_REQUESTS, ids=lambda r: r.split(b" ")[0].decode())
def test_ghsa_m23x_5qf5_988g_http_on_the_tcp_port_gets_no_echo(
    daemon: Daemon, request_bytes: bytes
) -> None:
    """GHSA-m23x-5qf5-988g: HTTP sent to the TURN TCP port gets no reply carrying any of its
    bytes (no HTTP answer at all), and the daemon keeps serving."""
    with socket.create_connection(("127.0.0.1", daemon.ports["tcp"][0])) as conn:
        reply = _reply_to(conn, request_bytes)
    assert ECHO_MARKER not in reply and b"HTTP/" not in reply and b"%s%x%n" not in reply
    assert reply == b""
    with TurnClient(("127.0.0.1", daemon.port)) as client:
        assert error_code(client.binding()) is None


@pytest.mark.parametrize("request_bytes", HTTP_REQUESTS, ids=lambda r: r.split(b" ")[0].decode())
def test_ghsa_m23x_5qf5_988g_http_inside_tls_gets_no_echo(
    daemon: Daemon, request_bytes: bytes
) -> None:
    """GHSA-m23x-5qf5-988g: HTTP sent inside TLS to the TURN TLS port gets no reply carrying
    any of its bytes."""
    raw = socket.create_connection(("127.0.0.1", daemon.ports["tls"][0]))
    with _tls_client().wrap_socket(raw) as conn:
        reply = _reply_to(conn, request_bytes)
    assert ECHO_MARKER not in reply and b"HTTP/" not in reply
    assert reply == b""


def test_ghsa_m23x_5qf5_988g_plain_http_on_the_tls_port_gets_no_echo(daemon: Daemon) -> None:
    """GHSA-m23x-5qf5-988g: plaintext HTTP on the TLS port gets at most a TLS alert, never its
    own bytes back."""
    with socket.create_connection(("127.0.0.1", daemon.ports["tls"][0])) as conn:
        reply = _reply_to(conn, HTTP_REQUESTS[0])
    assert ECHO_MARKER not in reply and b"HTTP/" not in reply
    assert len(reply) <= TLS_ALERT_MAX


#: A TLS alert record is 7 bytes; allow a few records of them.
TLS_ALERT_MAX = 64


# --- coturn e72930f5: no filesystem path from a request ---------------------------------------


def _control(daemon: Daemon, method: str, path: str, body: dict[str, Any] | None) -> int:
    from turnd.turnctl_daemon import _UnixConnection

    conn = _UnixConnection(daemon.control_socket, 10.0)
    try:
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload else {}
        conn.request(method, path, body=payload, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def test_coturn_e72930f5_control_api_methods_take_no_path() -> None:
    """coturn e72930f5: no control-API operation has a parameter that could name a file, and the
    request handlers open nothing."""
    from turnd import control

    for name, method in inspect.getmembers(control.ControlOps, inspect.isfunction):
        for parameter in inspect.signature(method).parameters:
            assert not any(word in parameter for word in ("path", "file", "dir")), (name, parameter)
    source = inspect.getsource(control._Routes)
    assert "open(" not in source and "Path(" not in source


def test_coturn_e72930f5_path_like_request_values_touch_no_file(
    daemon: Daemon, tmp_path: Path
) -> None:
    """coturn e72930f5: names and body fields that are paths (absolute, ``..``, to a config)
    create, read or load no file outside the state directory's own names; reload keeps reading
    the daemon's own configuration."""
    target = tmp_path / "pwned"
    evil_config = tmp_path / "evil.toml"
    evil_config.write_text('[server]\nrealm = "evil"\n')
    state_dir = daemon.config_path.parent / "state"
    before = {p.name for p in state_dir.iterdir()}
    hostile = [str(target), f"../../../../{target}", "../" * 12 + "etc/passwd"]
    body = {
        "password": "pw-12345",
        "ttl": 60,
        "on": False,
        **{key: str(target) for key in ("path", "file", "config", "state_dir", "users_file")},
    }
    for value in hostile:
        segment = quote(value, safe="")
        for method, path in (
            ("PUT", f"/v1/users/{segment}"),
            ("DELETE", f"/v1/users/{segment}"),
            ("PUT", f"/v1/keys/{segment}"),
            ("DELETE", f"/v1/keys/{segment}"),
            ("DELETE", f"/v1/secrets/{segment}"),
            ("GET", f"/v1/allocations/{segment}"),
            ("DELETE", f"/v1/allocations/{segment}"),
            ("POST", f"/v1/revoke/{segment}"),
        ):
            assert _control(daemon, method, path, body) < 500
    for path in ("/v1/reload", "/v1/drain", "/v1/credentials", "/v1/secrets"):
        assert _control(daemon, "POST", path, {**body, "config": str(evil_config)}) < 500
    assert not target.exists()
    assert sorted(tmp_path.iterdir()) == [evil_config]
    assert {p.name for p in state_dir.iterdir()} <= before | STATE_FILES
    with TurnClient(("127.0.0.1", daemon.port), USER, PASSWORD) as client:
        reply = client.transact(Method.ALLOCATE, [at.RequestedTransport(17)])
        realm = reply.get(at.Realm)
        assert realm is not None and realm.value == REALM  # reload ignored the body's config


#: The files turnd keeps in its state directory (turnd.runtime, turnd.state).
STATE_FILES = {"users.runtime", "secrets.runtime", "api-keys.runtime", "revoked.runtime"}
