"""coturn's client tools against turnd on loopback: relaying must be lossless and byte-exact.

turnutils_uclient exits 0 even when everything is lost, so every test checks the numbers it
prints: packets sent = sessions x messages, received = sent, bytes equal, nothing lost.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testkit.coturn import (
    PEER,
    STUNCLIENT,
    UCLIENT,
    EchoPeer,
    UclientReport,
    needs_tools,
    run_stunclient,
    run_uclient,
    start_peer,
    uclient_sessions,
)
from testkit.coturn import (
    assert_lossless as check_lossless,
)
from testkit.daemon import PASSWORD, REST_SECRET, USER, Daemon

pytestmark = [pytest.mark.interop, needs_tools(UCLIENT, PEER)]

MESSAGES = 30
LENGTH = 120


@pytest.fixture(scope="module")
def peer() -> Iterator[EchoPeer]:
    with start_peer(("127.0.0.1",)) as echo:
        yield echo


def assert_lossless(report: UclientReport, sessions: int) -> None:
    """Every packet and byte of every session came back."""
    check_lossless(report, sessions, MESSAGES, LENGTH)


#: id -> (uclient options besides the user, the messages and their length; the sessions the
#: run makes). Each run must relay every packet and every byte.
UCLIENT_RUNS: dict[str, tuple[dict[str, Any], int]] = {
    # ChannelBind + ChannelData over UDP with a long-term user.
    "udp_channels": ({"password": PASSWORD}, uclient_sessions(1)),
    # CreatePermission + Send/Data indications (-s).
    "send_indications": ({"password": PASSWORD, "send_indications": True}, uclient_sessions(1)),
    # REST ephemeral credentials computed from the shared secret (-W) relay like a user's.
    "rest_secret_credentials": ({"secret": REST_SECRET}, uclient_sessions(1)),
    # Four clients (eight allocations) at once, channels and Send mixed by uclient.
    "several_clients_at_once": ({"password": PASSWORD, "clients": 4}, uclient_sessions(4)),
    # Two allocations of this server talking to each other (-y): relay-to-relay works, no peer.
    "client_to_client_through_two_relays": (
        {"password": PASSWORD, "client_to_client": True, "rtcp": False},
        uclient_sessions(1, rtcp=False, client_to_client=True),
    ),
}


@pytest.mark.parametrize("run", UCLIENT_RUNS)
def test_uclient_relays_every_packet(daemon: Daemon, peer: EchoPeer, run: str) -> None:
    """Channels, Send indications, REST credentials, many clients, relay to relay: 0 lost."""
    options, sessions = UCLIENT_RUNS[run]
    to_peer = not options.get("client_to_client", False)
    report = run_uclient(
        "127.0.0.1", daemon.port, "127.0.0.1" if to_peer else None, peer.port if to_peer else None,
        user=USER, messages=MESSAGES, length=LENGTH, **options,
    )  # fmt: skip
    assert_lossless(report, sessions)


def test_uclient_channels_are_relayed_by_the_kernel_fast_path(
    daemon: Daemon, peer: EchoPeer
) -> None:
    """With the fast path active (root, the program built), uclient's channel traffic is
    relayed by the kernel: the kernel's counters moved by all of it, and what the metrics count
    as relayed is exactly that (userspace relayed none of it)."""
    before = daemon.scrape()
    if before[("turnd_fastpath_active", ())] != 1:
        pytest.skip("the kernel fast path is not active here (needs root and the built program)")
    options, sessions = UCLIENT_RUNS["udp_channels"]
    report = run_uclient(
        "127.0.0.1", daemon.port, "127.0.0.1", peer.port,
        user=USER, messages=MESSAGES, length=LENGTH, **options,
    )  # fmt: skip
    assert_lossless(report, sessions)
    after = daemon.scrape()
    packets, octets = sessions * MESSAGES, sessions * MESSAGES * LENGTH
    for direction in ("to_peer", "to_client"):
        label = (("direction", direction),)
        moved = {name: after[name, label] - before[name, label] for name, _ in after if _ == label}
        assert moved["turnd_fastpath_relayed_packets_total"] == packets
        assert moved["turnd_relayed_packets_total"] == packets
        assert moved["turnd_fastpath_relayed_bytes_total"] == octets
        assert moved["turnd_relayed_bytes_total"] == octets


def test_uclient_wrong_password_cannot_allocate(daemon: Daemon, peer: EchoPeer) -> None:
    """A wrong password gets 401: uclient cannot allocate and relays nothing."""
    from testkit.coturn import UclientError

    with pytest.raises(UclientError) as failure:
        run_uclient(
            "127.0.0.1", daemon.port, "127.0.0.1", peer.port,
            user=USER, password="wrong", messages=5, length=LENGTH,
        )  # fmt: skip
    assert "Cannot complete Allocation" in failure.value.output


@needs_tools(STUNCLIENT)
def test_stunclient_binding_reports_reflexive_address(daemon: Daemon) -> None:
    """turnutils_stunclient's Binding request is answered with its own address."""
    report = run_stunclient("127.0.0.1", daemon.port)
    assert report.mapped is not None
    assert report.mapped.host == "127.0.0.1"
    assert 0 < report.mapped.port < 65536


def test_daemon_counted_the_traffic(daemon: Daemon, tmp_path: Path) -> None:
    """The allocations uclient made ended with their traffic logged in allocation.ended lines."""
    # Allocations end when uclient deletes them (Refresh with LIFETIME 0) at the end of a run.
    ended = [e for e in daemon.log_events() if e.get("event") == "allocation.ended"]
    assert ended, "uclient's allocations should have been deleted and logged"
    assert any(e["packets_to_peer"] >= MESSAGES for e in ended)
    assert all(e["reason"] in ("deleted", "expired") for e in ended)
