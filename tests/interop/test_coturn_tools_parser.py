"""The coturn tool harness reads the numbers the tools really print.

Every fixture in ``data/`` is real output of coturn 4.6.1's tools run against coturn's own
turnserver on loopback through :mod:`testkit.coturn` (long-term user ``alice``,
``-n 20 -l 100``; ports were chosen freshly for each capture). The parser tests need no coturn;
the end-to-end tests at the bottom do, and skip with the reason when it is missing.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

import testkit.coturn as ct

DATA = Path(__file__).parent / "data"


def fixture_text(name: str) -> str:
    """The saved output ``name`` from ``data/``."""
    return (DATA / name).read_text()


@attrs.frozen
class Summary:
    """The numbers one uclient fixture must parse to."""

    sent: int
    received: int
    lost: int
    lost_percent: float
    sent_bytes: int
    received_bytes: int
    rtt: tuple[float, int | None, int]
    jitter: tuple[float, int | None, int]
    transmit_s: int
    sessions: int
    send_dropped: int = 0
    connect_s: int = 0


# fixture -> (run_uclient options used for the capture, numbers it printed); the comment is the
# command line that produced it.
UCLIENT_FIXTURES: dict[str, tuple[dict[str, Any], Summary]] = {
    # turnutils_uclient -p 29182 -u alice -w s3cret -m 1 -n 20 -l 100 -e 127.0.0.1 -r 29773
    #   127.0.0.1
    "uclient_udp_channels.txt": (
        {},
        Summary(40, 40, 0, 0.0, 4000, 4000, (0.0, 0, 0), (1.3, 0, 4), 6, 2),
    ),
    # ... -e 127.0.0.1 -r 29773 -s 127.0.0.1
    "uclient_udp_send_indications.txt": (
        {"send_indications": True},
        Summary(40, 40, 0, 0.0, 4000, 4000, (0.0, 0, 0), (0.325, 0, 2), 6, 2),
    ),
    # ... -m 5 ... : five clients become three RTP/RTCP pairs, six allocations.
    "uclient_udp_5_clients.txt": (
        {"clients": 5},
        Summary(120, 120, 0, 0.0, 12000, 12000, (0.0, 0, 0), (0.758333, 0, 4), 5, 6, connect_s=1),
    ),
    # ... -e 127.0.0.1 -r 29773 -c 127.0.0.1: one session, no RTCP.
    "uclient_udp_no_rtcp.txt": (
        {"rtcp": False},
        Summary(20, 20, 0, 0.0, 2000, 2000, (0.0, 0, 0), (0.8, 0, 4), 6, 1),
    ),
    # ... -e 127.0.0.1 -r 29773 -t 127.0.0.1
    "uclient_tcp.txt": (
        {"tcp": True},
        Summary(40, 40, 0, 0.0, 4000, 4000, (0.0, 0, 0), (0.575, 0, 1), 4, 2),
    ),
    # turnutils_uclient -p 24163 (TLS port) ... -e 127.0.0.1 -r 29773 -t -S 127.0.0.1
    "uclient_tls.txt": (
        {"tls": True},
        Summary(40, 40, 0, 0.0, 4000, 4000, (0.0, 0, 0), (0.225, 0, 1), 7, 2),
    ),
    # ... -T 127.0.0.1: RFC 6062 TCP relays talking to each other, no peer.
    "uclient_tcp_relay.txt": (
        {"tcp_relay": True},
        Summary(40, 40, 0, 0.0, 4000, 4000, (1.15, 0, 23), (3.5, 0, 23), 4, 2),
    ),
    # ... -y 127.0.0.1: UDP relays talking to each other, RTP/RTCP on both sides.
    "uclient_client_to_client.txt": (
        {"client_to_client": True},
        Summary(80, 80, 0, 0.0, 8000, 8000, (0.0, 0, 0), (0.4375, 0, 2), 6, 4),
    ),
    # turnutils_uclient -p 22869 -u alice -w s3cret -m 1 -n 20 -l 100 -e ::1 -r 29773 -x ::1
    "uclient_udp_ipv6.txt": (
        {"ipv6": True},
        Summary(40, 40, 0, 0.0, 4000, 4000, (0.0, 0, 0), (0.8, 0, 4), 6, 2),
    ),
    # turnutils_uclient -p 27625 -u alice -W restsecret -m 1 -n 20 -l 100 -e 127.0.0.1 -r 29773
    #   127.0.0.1 (server: use-auth-secret, static-auth-secret=restsecret)
    "uclient_rest_secret.txt": (
        {},
        Summary(40, 40, 0, 0.0, 4000, 4000, (0.0, 0, 0), (0.3, 0, 1), 6, 2),
    ),
    # ... -e 127.0.0.1 -r 24108 127.0.0.1 with nothing on 24108: uclient still exits 0.
    "uclient_no_peer_total_loss.txt": (
        {},
        Summary(40, 0, 40, 100.0, 4000, 0, (0.0, None, 0), (math.nan, None, 0), 15, 2),
    ),
    # ... -r 27623 with an echo on 27623 only: the RTCP session's peer port + 1 is silent.
    "uclient_udp_rtcp_peer_port_closed.txt": (
        {},
        Summary(40, 20, 20, 50.0, 4000, 2000, (0.0, 0, 0), (0.3, 0, 1), 16, 2),
    ),
}

# fixture -> the line the error must quote. uclient exited 255 in each case.
UCLIENT_FAILURES = {
    # ... -w wrong ...
    "uclient_wrong_password.txt": "ERROR: Cannot complete Allocation",
    # ... -W nope ... against the REST server
    "uclient_rest_wrong_secret.txt": "ERROR: Cannot complete Allocation",
    # server without allow-loopback-peers
    "uclient_peer_forbidden.txt": "channel bind: error 403 (Forbidden IP)",
    # nothing listening on the server port
    "uclient_server_down.txt": "recv: Connection refused",
}


def _same(actual: float, expected: float) -> bool:
    return (math.isnan(actual) and math.isnan(expected)) or actual == pytest.approx(expected)


@pytest.mark.parametrize("name", sorted(UCLIENT_FIXTURES))
def test_uclient_summary_parses_to_the_printed_numbers(name: str) -> None:
    """Every count, byte total, delay and jitter figure is read exactly as printed."""
    _, want = UCLIENT_FIXTURES[name]
    report = ct.parse_uclient_output(fixture_text(name))
    got = (
        report.sent_packets,
        report.received_packets,
        report.lost_packets,
        report.sent_bytes,
        report.received_bytes,
        report.send_dropped,
        report.rtt_min_ms,
        report.rtt_max_ms,
        report.jitter_min_ms,
        report.jitter_max_ms,
        report.transmit_time_s,
        report.connect_time_s,
        report.sessions,
    )
    assert got == (
        want.sent,
        want.received,
        want.lost,
        want.sent_bytes,
        want.received_bytes,
        want.send_dropped,
        want.rtt[1],
        want.rtt[2],
        want.jitter[1],
        want.jitter[2],
        want.transmit_s,
        want.connect_s,
        want.sessions,
    )
    assert _same(report.lost_percent, want.lost_percent)
    assert report.send_dropped_percent == 0.0
    assert _same(report.rtt_avg_ms, want.rtt[0])
    assert _same(report.jitter_avg_ms, want.jitter[0])
    assert report.output == fixture_text(name)


@pytest.mark.parametrize("name", sorted(UCLIENT_FIXTURES))
def test_uclient_sessions_predicts_the_allocations_uclient_ran(name: str) -> None:
    """uclient_sessions() matches the msz= uclient printed, and sent = sessions x -n."""
    options, want = UCLIENT_FIXTURES[name]
    sessions = ct.uclient_sessions(
        options.get("clients", 1),
        rtcp=options.get("rtcp", True),
        client_to_client=options.get("client_to_client", False),
        tcp_relay=options.get("tcp_relay", False),
    )
    assert sessions == want.sessions
    assert want.sent == sessions * 20
    assert want.sent_bytes == want.sent * 100


def test_total_loss_has_no_delay_samples() -> None:
    """With nothing back, the UINT32_MAX minimums become None and the -nan jitter is nan."""
    report = ct.parse_uclient_output(fixture_text("uclient_no_peer_total_loss.txt"))
    assert report.received_packets == 0
    assert report.lost_packets == report.sent_packets == 40
    assert report.rtt_min_ms is None
    assert report.jitter_min_ms is None
    assert math.isnan(report.jitter_avg_ms)


def test_tls_version_retries_are_listed_but_not_fatal() -> None:
    """uclient's TLS 1.0/1.1 attempts fail before TLS 1.2 works; the report keeps the lines."""
    report = ct.parse_uclient_output(fixture_text("uclient_tls.txt"))
    assert report.lost_packets == 0
    assert any("tlsv1 alert internal error" in line for line in report.problems)


@pytest.mark.parametrize("name", sorted(UCLIENT_FAILURES))
def test_uclient_without_summary_raises_with_its_output(name: str) -> None:
    """A run that never got to send (auth, 403 peer, no server) raises and quotes the cause."""
    text = fixture_text(name)
    with pytest.raises(ct.UclientError) as caught:
        ct.parse_uclient_output(text, argv=["turnutils_uclient", "127.0.0.1"], returncode=255)
    message = str(caught.value)
    assert UCLIENT_FAILURES[name] in message
    assert "exit status: 255" in message
    assert "command: turnutils_uclient 127.0.0.1" in message
    assert caught.value.output == text


def test_uclient_missing_one_summary_line_names_it() -> None:
    """Output cut before the jitter line is an error that says which line is missing."""
    text = fixture_text("uclient_udp_channels.txt")
    cut = "\n".join(line for line in text.splitlines() if "Average jitter" not in line)
    with pytest.raises(ct.UclientError, match="printed no jitter"):
        ct.parse_uclient_output(cut)


def test_uclient_parser_accepts_newer_info_prefix() -> None:
    """coturn 4.6.2+ prefixes log lines with 'INFO: '; the numbers read the same."""
    text = fixture_text("uclient_udp_5_clients.txt")
    prefixed = "\n".join(line.replace(": : ", ": : INFO: ", 1) for line in text.splitlines())
    plain = ct.parse_uclient_output(text)
    newer = ct.parse_uclient_output(prefixed)
    assert attrs.evolve(newer, output=text) == plain


# --- uclient command lines ------------------------------------------------------------------

BASE = ["turnutils_uclient", "-p", "3478", "-u", "alice", "-w", "pw", "-m", "1", "-n", "20"]


@pytest.mark.parametrize(
    ("options", "tail"),
    [
        ({}, ["-l", "100", "-e", "127.0.0.1", "-r", "3480", "127.0.0.1"]),
        ({"send_indications": True}, ["-l", "100", "-e", "127.0.0.1", "-r", "3480", "-s"]),
        ({"tcp": True}, ["-l", "100", "-e", "127.0.0.1", "-r", "3480", "-t"]),
        ({"tls": True}, ["-l", "100", "-e", "127.0.0.1", "-r", "3480", "-t", "-S"]),
        ({"tcp_relay": True, "send_indications": True}, ["-l", "100", "-T"]),
        ({"client_to_client": True, "rtcp": False}, ["-l", "100", "-y", "-c"]),
        ({"ipv6": True, "interval_ms": 5}, ["-r", "3480", "-x", "-z", "5"]),
        ({"length": 1200, "extra_args": ("-g",)}, ["-l", "1200", "-e", "127.0.0.1"]),
    ],
)
def test_uclient_argv_uses_the_documented_flags(options: dict[str, Any], tail: list[str]) -> None:
    """Each option maps to its turnutils_uclient flag; -T drops the peer and -s."""
    argv = ct.uclient_argv(
        "127.0.0.1", 3478, "127.0.0.1", 3480, user="alice", password="pw", **options
    )
    assert argv[: len(BASE)] == BASE
    assert argv[-1] == "127.0.0.1"
    joined = " ".join(argv)
    assert " ".join(tail) in joined
    if options.get("tcp_relay"):
        assert "-e" not in argv and "-s" not in argv
    if "extra_args" in options:
        assert argv[-2] == "-g"


def test_uclient_argv_rest_secret_uses_capital_w() -> None:
    """REST mode sends -W secret and no -w."""
    argv = ct.uclient_argv("::1", 3478, "::1", 3480, user="svc", secret="s")
    assert argv[3:7] == ["-u", "svc", "-W", "s"]
    assert "-w" not in argv


@pytest.mark.parametrize(
    ("args", "options"),
    [
        (("192.0.2.1", 3478, "127.0.0.1", 3480), {"password": "pw"}),
        (("127.0.0.1", 3478, "192.0.2.1", 3480), {"password": "pw"}),
        (("localhost", 3478, "127.0.0.1", 3480), {"password": "pw"}),
        (("127.0.0.1", 3478, "127.0.0.1", 3480), {}),
        (("127.0.0.1", 3478, "127.0.0.1", 3480), {"password": "pw", "secret": "s"}),
        (("127.0.0.1", 3478, None, None), {"password": "pw"}),
    ],
)
def test_uclient_refuses_bad_arguments_before_running(
    args: tuple[Any, ...], options: dict[str, Any]
) -> None:
    """Non-loopback addresses, missing or double credentials, a missing peer: ValueError."""
    with pytest.raises(ValueError):
        ct.run_uclient(*args, user="alice", **options, tool="/nonexistent")


# --- stunclient -----------------------------------------------------------------------------

A = ct.TransportAddress


@pytest.mark.parametrize(
    ("name", "responses"),
    [
        # turnutils_stunclient -p 29182 127.0.0.1 (single-address server: plain STUN)
        ("stunclient_ipv4.txt", [(A("127.0.0.1", 36678), None, None)]),
        # turnutils_stunclient -p 22869 127.0.0.1 (server on 127.0.0.1 and ::1: RFC 5780 on)
        (
            "stunclient_rfc5780_ipv4.txt",
            [
                (A("127.0.0.1", 33655), A("127.0.0.1", 22869), A("127.0.0.1", 22870)),
                (A("127.0.0.1", 33655), A("127.0.0.1", 22870), A("127.0.0.1", 22870)),
                (A("127.0.0.1", 33656), A("127.0.0.1", 22870), A("127.0.0.1", 22870)),
            ],
        ),
        # turnutils_stunclient -p 22869 ::1 (IPv6 is printed without brackets)
        (
            "stunclient_rfc5780_ipv6.txt",
            [
                (A("::1", 37106), A("::1", 22869), A("::1", 22870)),
                (A("::1", 37106), A("::1", 22870), A("::1", 22870)),
                (A("::1", 37107), A("::1", 22870), A("::1", 22870)),
            ],
        ),
        # turnutils_stunclient -p 29182 -f 127.0.0.1: forced RFC 5780 against a server without
        # it prints the first answer, then retries forever (captured up to the timeout).
        ("stunclient_force_rfc5780_unsupported.txt", [(A("127.0.0.1", 51225), None, None)]),
    ],
)
def test_stunclient_addresses_parse_exactly(
    name: str, responses: list[tuple[A, A | None, A | None]]
) -> None:
    """Reflexive, response-origin and other addresses are read per response block."""
    report = ct.parse_stunclient_output(fixture_text(name))
    assert [(r.reflexive, r.origin, r.other) for r in report.responses] == responses
    assert report.mapped == responses[0][0]
    assert report.rfc5780 == (responses[0][2] is not None)


def test_stunclient_with_no_answer_raises() -> None:
    """No server: stunclient prints nothing (it was killed by the timeout)."""
    assert fixture_text("stunclient_server_down.txt") == ""
    with pytest.raises(ct.StunClientError, match="no reflexive address"):
        ct.parse_stunclient_output(fixture_text("stunclient_server_down.txt"))


def test_stunclient_error_response_raises_with_code() -> None:
    """An error answer is reported with its code (line as stunclient formats it)."""
    with pytest.raises(ct.StunClientError, match="an error 400 \\(Bad Request\\)"):
        ct.parse_stunclient_output("0: : The response is an error 400 (Bad Request)\n")


def test_transport_address_brackets_ipv6() -> None:
    """IPv6 addresses print in [host]:port form."""
    assert str(A("::1", 3478)) == "[::1]:3478"
    assert str(A("127.0.0.1", 3478)) == "127.0.0.1:3478"


def test_stunclient_and_peer_refuse_non_loopback() -> None:
    """Nothing is started for an address outside loopback."""
    with pytest.raises(ValueError):
        ct.run_stunclient("192.0.2.1", 3478, tool="/nonexistent")
    with pytest.raises(ValueError):
        ct.start_peer(("127.0.0.1", "192.0.2.1"), tool="/nonexistent")


# --- finding the tools ----------------------------------------------------------------------


def test_find_tool_prefers_the_configured_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$TURND_COTURN_BIN is searched first; an unknown name is None and a skip reason names it."""
    fake = tmp_path / "turnutils_uclient"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv(ct.BIN_DIR_ENV, str(tmp_path))
    assert ct.find_tool("turnutils_uclient") == str(fake)
    assert ct.find_tool("turnutils_no_such_tool") is None
    assert "turnutils_no_such_tool" in ct.skip_reason("turnutils_no_such_tool")
    assert ct.missing_tools("turnutils_uclient", "turnutils_no_such_tool") == [
        "turnutils_no_such_tool"
    ]


# --- end to end against coturn's own turnserver ----------------------------------------------


@attrs.frozen
class Reference:
    """coturn's turnserver and an echo peer, both on 127.0.0.1."""

    server: ct.CoturnServer
    peer: ct.EchoPeer


@pytest.fixture(scope="module")
def coturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reference]:
    """A known-good TURN server (long-term user, loopback peers allowed) and a peer."""
    work = tmp_path_factory.mktemp("coturn")
    with (
        ct.start_turnserver(work, users={"alice": "s3cret"}, realm="turnd.test") as server,
        ct.start_peer(("127.0.0.1",)) as peer,
    ):
        yield Reference(server, peer)


@pytest.mark.interop
@ct.needs_tools(ct.TURNSERVER, ct.UCLIENT, ct.PEER)
def test_uclient_through_coturn_loses_nothing(coturn: Reference) -> None:
    """Through a known-good server every packet comes back: the harness itself is sound."""
    report = ct.run_uclient(
        coturn.server.host,
        coturn.server.port,
        "127.0.0.1",
        coturn.peer.port,
        user="alice",
        password="s3cret",
        messages=20,
        length=100,
    )
    expected = ct.uclient_sessions(1) * 20
    assert report.sent_packets == expected, report.describe()
    assert report.received_packets == expected, report.describe()
    assert report.lost_packets == 0, report.describe()
    assert report.send_dropped == 0, report.describe()
    assert report.sent_bytes == report.received_bytes == expected * 100, report.describe()


@pytest.mark.interop
@ct.needs_tools(ct.TURNSERVER, ct.STUNCLIENT, ct.PEER)
def test_stunclient_through_coturn_sees_loopback_source(coturn: Reference) -> None:
    """The Binding answer reflects the client's own loopback address."""
    report = ct.run_stunclient(coturn.server.host, coturn.server.port)
    assert report.mapped.host == "127.0.0.1"
    assert report.mapped.port > 0
