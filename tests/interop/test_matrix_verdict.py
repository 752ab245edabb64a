"""The interop matrix's rules, on made-up numbers: nothing is started here.

A cell passes only when the client's numbers are whole and turnd's books agree: the right
transport, address family and relay family, and at least the bytes the client counted.
"""

from __future__ import annotations

import attrs
import pytest

from tests.interop import matrix_clients, netns
from tests.interop.matrix import FAIL, PASS, SKIP, UNSUPPORTED, Result, markdown, notes, table
from tests.interop.matrix import verdict as judge
from tests.interop.matrix_clients import ClientReport, Job
from tests.interop.matrix_plan import CLIENTS, Cell, all_cells, runnable_cells, unsupported_reason
from tests.interop.matrix_turnd import COUNTERS, Relayed, for_tag

CELL = Cell("werift", "udp", "rest")
CLEAN = ClientReport(sent=50, received=50, expected=50, bytes_out=10_000, bytes_in=10_000)
BOOKS = Relayed(
    allocations=2,
    transports=frozenset({"udp"}),
    clients=("127.0.0.1:40000", "127.0.0.1:40002"),
    relays=("127.0.0.1:50000", "127.0.0.1:50002"),
    bytes_to_peer=23_000,
    bytes_to_client=22_000,
)


def test_whole_numbers_on_both_sides_pass() -> None:
    """Every message back, turnd saw UDP allocations that carried at least as many bytes."""
    assert judge(CELL, CLEAN, BOOKS).status == PASS


def test_a_client_problem_fails_whatever_turnd_counted() -> None:
    """The client's own complaint (an error, a lost echo) fails the cell."""
    report = attrs.evolve(CLEAN, problem="sent 50, answered 50, echoed 49 of 50")
    result = judge(CELL, report, BOOKS)
    assert result.status == FAIL and "echoed 49" in result.reason


def test_fewer_answers_than_expected_fail_even_without_a_complaint() -> None:
    """A report whose counts fall short fails although the client raised nothing."""
    result = judge(CELL, attrs.evolve(CLEAN, received=49), BOOKS)
    assert result.status == FAIL and "49 of 50" in result.reason


def test_no_allocation_in_turnds_books_fails() -> None:
    """Numbers without a matching allocation in turnd did not cross turnd."""
    result = judge(CELL, CLEAN, Relayed())
    assert result.status == FAIL and "no allocation" in result.reason


def test_a_silent_fallback_to_another_transport_fails() -> None:
    """werift retries TCP when UDP fails: turnd's transport gives it away."""
    result = judge(CELL, CLEAN, attrs.evolve(BOOKS, transports=frozenset({"tcp"})))
    assert result.status == FAIL and "['tcp']" in result.reason


def test_the_wrong_address_family_fails() -> None:
    """A udp6 cell whose client reached turnd over IPv4 fails."""
    result = judge(
        Cell("werift", "tcp6", "rest"), CLEAN, attrs.evolve(BOOKS, transports=frozenset({"tcp"}))
    )
    assert result.status == FAIL and "IPv6" in result.reason


def test_an_ipv4_relay_where_ipv6_was_asked_fails() -> None:
    """turnutils_uclient -x asks for IPv6 relays; IPv4 ones fail its cell."""
    cell = Cell("uclient", "udp6", "long-term")
    books = attrs.evolve(BOOKS, clients=("[::1]:40000",))
    result = judge(cell, attrs.evolve(CLEAN, relay_ipv6=True), books)
    assert result.status == FAIL and "not IPv6" in result.reason


@pytest.mark.parametrize("direction", ["peers", "clients"])
def test_turnd_counting_fewer_bytes_than_the_client_fails(direction: str) -> None:
    """turnd must have carried at least the payload the client counted, each way."""
    if direction == "peers":
        books = attrs.evolve(BOOKS, bytes_to_peer=9_999)
    else:
        books = attrs.evolve(BOOKS, bytes_to_client=9_999)
    result = judge(CELL, CLEAN, books)
    assert result.status == FAIL and f"towards {direction}" in result.reason


def test_uncounted_bytes_are_not_held_against_turnd() -> None:
    """RFC 6062 spliced bytes are not in turnd's books: the client's count is then not compared."""
    cell = Cell("uclient-tcp-relay", "tcp", "rest")
    report = attrs.evolve(CLEAN, bytes_out=None, bytes_in=None)
    books = attrs.evolve(BOOKS, transports=frozenset({"tcp"}), bytes_to_peer=0, bytes_to_client=0)
    assert judge(cell, report, books).status == PASS


def test_books_are_matched_to_cells_by_whole_tag() -> None:
    """A static user named by the tag and REST usernames ending in ``:tag`` count; a tag that
    merely ends the same way (udp vs udp6) does not."""
    counts = {counter: n for n, counter in enumerate(COUNTERS, start=1)}
    one = Relayed().add({"transport": "udp", "client": "c", "relay": "r", **counts})
    totals = {
        "chromium-udp-rest": one,
        "1795602757:interop:chromium-udp-rest": one,
        "1795602757:interop:chromium-udp6-rest": one,
        "1795602757:interop:xchromium-udp-rest": one,
    }
    found = for_tag(totals, "chromium-udp-rest")
    assert found.allocations == 2
    assert found.as_json() | {"clients": [], "relays": []} == {
        "allocations": 2,
        "transports": ["udp"],
        "clients": [],
        "relays": [],
        **{counter: 2 * n for counter, n in counts.items()},
    }
    assert (found.packets, found.kernel_packets) == (2 * (1 + 3), 2 * (5 + 7))


def test_every_cell_has_a_unique_tag_and_every_client_a_row() -> None:
    """Tags name turnd usernames, so no two cells may share one."""
    cells = all_cells()
    assert len({cell.tag for cell in cells}) == len(cells)
    assert {cell.client for cell in runnable_cells()} == {client.key for client in CLIENTS}


def test_table_markdown_and_notes() -> None:
    """One row per client and credential, a mark per transport, n/a reasons said once."""
    results = [
        Result(CELL, PASS, report=CLEAN),
        Result(
            Cell("werift", "udp6", "rest"),
            UNSUPPORTED,
            unsupported_reason(Cell("werift", "udp6", "rest")) or "",
        ),
        Result(Cell("werift", "udp6", "long-term"), UNSUPPORTED, "udp4 only"),
        Result(Cell("chromium", "tls", "rest"), SKIP, "Chromium is not installed"),
        Result(Cell("aioice", "tcp", "long-term"), FAIL, "401"),
    ]
    text = table(results)
    assert "ok 50/50" in text and "n/a" in text and "skip" in text and "FAIL" in text
    assert (
        len(text.splitlines()) == 1 + 4
    )  # header + werift rest, werift long-term, chromium, aioice
    assert markdown(results).splitlines()[1].startswith("|---|")
    said = notes(results)
    assert "n/a werift over udp6: werift's TURN client opens its UDP socket as udp4 only" in said
    assert "n/a werift over udp6: udp4 only" in said
    assert "SKIP chromium/tls/rest: Chromium is not installed" in said
    assert "FAIL aioice/tcp/long-term: 401" in said


def test_no_namespace_inside_a_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run already inside the matrix's namespace does not make another one."""
    monkeypatch.setenv(netns.INSIDE_ENV, "turnd-interop-1")
    assert "already inside" in (netns.unavailable() or "")


def test_a_data_channel_that_never_opened_gets_one_more_attempt_on_the_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stack that wedged its own handshake is run again once; the report keeps the first
    attempt's problem, the table marks the cell ok* and the notes say why."""
    wedged = attrs.evolve(CLEAN, sent=0, received=0, problem="data channel open: nothing")
    attempts = iter([{CELL.id: (wedged, False)}, {CELL.id: (CLEAN, True)}])
    monkeypatch.setattr(matrix_clients, "_echo_pass", lambda *args: next(attempts))
    job = Job(CELL, 3478, "user", "password")
    report = matrix_clients._run_echo_driver("werift_relay.mjs", None, [job], {}, False)  # type: ignore[arg-type]
    retried = report[CELL.id]
    assert (retried.attempts, retried.first_problem) == (2, "data channel open: nothing")
    result = judge(CELL, retried, BOOKS)
    assert result.status == PASS
    assert "ok* 50/50" in table([result])
    assert notes([result]) == [
        "ok* werift/udp/rest: passed on a second attempt; the first: data channel open: nothing"
    ]


def test_a_second_failure_stands() -> None:
    """Only a client's own numbers pass a cell: a retried cell that fails again fails."""
    report = attrs.evolve(CLEAN, received=0, problem="nothing", attempts=2, first_problem="x")
    assert judge(CELL, report, BOOKS).status == FAIL
