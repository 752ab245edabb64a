"""The interop matrix in the suite: one run of ``python -m tests.interop.matrix``, a test per cell.

The matrix runs once for the module (inside a private network namespace when root, see
``tests/interop/netns.py``) and writes its JSON; each test below reads one cell. A cell passes
only when the client's own numbers are whole *and* turnd's books agree (``matrix.verdict``); a
cell is skipped only when its program is not installed here, with the reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.interop.matrix_plan import CLIENTS, Cell, all_cells, runnable_cells

pytestmark = pytest.mark.interop

ROOT = Path(__file__).resolve().parents[2]

#: Bound on the whole run (it takes well under a minute): a hang fails the module, not CI.
RUN_TIMEOUT = 600.0


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The JSON document of one matrix run, plus what it printed under ``"printed"``."""
    out = tmp_path_factory.mktemp("matrix") / "matrix.json"
    done = subprocess.run(
        [sys.executable, "-m", "tests.interop.matrix", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    if not out.exists():
        pytest.fail(
            f"the matrix wrote no JSON (exit status {done.returncode}):\n"
            f"{done.stdout}\n{done.stderr}"
        )
    document: dict[str, Any] = json.loads(out.read_text())
    document["printed"] = done.stdout
    document["returncode"] = done.returncode
    return document


def _entry(matrix: dict[str, Any], cell: Cell) -> dict[str, Any]:
    found: list[dict[str, Any]] = [e for e in matrix["cells"] if e["id"] == cell.id]
    assert len(found) == 1, f"{cell.id} is missing from the matrix JSON"
    return found[0]


@pytest.mark.parametrize("cell", runnable_cells(), ids=lambda cell: cell.id)
def test_cell_relays_every_message(matrix: dict[str, Any], cell: Cell) -> None:
    """The client relayed every message through turnd, and turnd's books show it."""
    entry = _entry(matrix, cell)
    if entry["status"] == "skip":
        pytest.skip(entry["reason"])
    assert entry["status"] == "pass", f"{entry['reason']}\n{json.dumps(entry, indent=2)}"
    assert entry["sent"] == entry["received"] == entry["expected"] > 0


#: The clients that bind channels over UDP, so that turnd's kernel fast path relays their data:
#: turnutils_uclient without -s; aioice (TurnClientMixin.send_data binds a channel per peer
#: before its first datagram); werift (ChannelBind per peer, Send indications only if that
#: fails); Chromium (libwebrtc's TurnEntry binds a channel after its first Send indication).
#: Exempt: uclient-send (-s: Send/Data indications only, always userspace), uclient-tcp-relay
#: (RFC 6062, no UDP cell) and stunclient (Binding only, no allocation).
CHANNEL_CLIENTS = frozenset({"uclient", "aioice", "werift", "chromium"})
#: Those of them whose peer is an echo peer outside turnd and which bind before sending: the
#: route is in the kernel before the ChannelBind answer, so the kernel relays all their data.
#: werift's and Chromium's peer is the other side's relay on the same turnd: the kernel hands
#: the rewritten datagram to that relay's socket on lo, so the second leg is userspace's.
ALL_IN_KERNEL = frozenset({"uclient", "aioice"})


def _channel_cells() -> list[Cell]:
    return [cell for cell in runnable_cells(CHANNEL_CLIENTS) if cell.link.kind == "udp"]


@pytest.mark.parametrize("cell", _channel_cells(), ids=lambda cell: cell.id)
def test_the_kernel_relayed_the_channel_cells(matrix: dict[str, Any], cell: Cell) -> None:
    """With the fast path on, a passing UDP cell of a client that binds channels shows packets
    relayed by the kernel in turnd's books (all of them for an outside peer), never more than
    turnd relayed in all; a relay of the other address family than the client's stays in
    userspace (README "Kernel fast path")."""
    active = matrix.get("turnd_fastpath_active")
    if not active:
        why = "turnd was not started" if active is None else "it was inactive (see turnd's log)"
        pytest.skip(f"turnd's kernel fast path did not run in the matrix: {why}")
    entry = _entry(matrix, cell)
    if entry["status"] != "pass":
        pytest.skip(f"the cell did not pass ({entry['status']}: {entry['reason']})")
    books = entry["turnd"]
    kernel = books["kernel_packets_to_peer"] + books["kernel_packets_to_client"]
    for counter in ("packets_to_peer", "packets_to_client", "bytes_to_peer", "bytes_to_client"):
        assert 0 <= books["kernel_" + counter] <= books[counter], f"{counter}: {books}"
    crossed = [r for r in books["relays"] if r.startswith("[") != cell.link.ipv6]
    if crossed:  # aioice and Chromium over udp6 ask for the default (IPv4) relay
        assert crossed == books["relays"] and kernel == 0, books
        return
    assert kernel > 0, f"the kernel relayed nothing for {cell.id}: {books}"
    if cell.client in ALL_IN_KERNEL:
        for counter in ("packets_to_peer", "packets_to_client", "bytes_to_peer", "bytes_to_client"):
            assert books["kernel_" + counter] == books[counter] > 0, f"{counter}: {books}"


def test_matrix_prints_every_row_and_its_tally(matrix: dict[str, Any]) -> None:
    """The printed table has a row per client, the JSON a cell per combination, and the tally
    line agrees with the cells."""
    printed = matrix["printed"]
    for client in CLIENTS:
        assert client.label in printed
    assert [entry["id"] for entry in matrix["cells"]] == [cell.id for cell in all_cells()]
    counts = matrix["summary"]
    assert f"{counts['pass']} cells passed, {counts['fail']} failed" in printed
    assert sum(counts.values()) == len(all_cells())


def test_turnd_shut_down_cleanly_after_the_matrix(matrix: dict[str, Any]) -> None:
    """After serving every client at once, turnd stops on SIGTERM with status 0."""
    if matrix["summary"]["pass"] == 0:
        pytest.skip("no client could run here, so turnd was not started")
    assert matrix["turnd_exit_status"] == 0
