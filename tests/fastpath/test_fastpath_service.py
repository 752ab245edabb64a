"""A real turnd with the fast path on: the kernel relays its established channels, metrics and
usage equal what was sent, and every way a channel ends takes it out of the kernel — after
each, a packet on the old flow is no longer relayed by the program."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from testkit.daemon import PASSWORD, USER, Daemon, run_turnd, start_turnd, write_config
from testkit.sync import ChannelData, EchoPeer, TurnClient, error_code, wait_until
from tests.fastpath.conftest import fastpath_unavailable
from turnd.turnctl import app

CHANNEL = 0x4000
PAYLOADS = [bytes([i]) * size for i, size in enumerate((1, 3, 4, 100, 1000, 1200))]
FASTPATH_ON = '[fastpath]\nmode = "on"\n'

runner = CliRunner()

pytestmark = pytest.mark.skipif(
    fastpath_unavailable() is not None, reason=str(fastpath_unavailable())
)


def turnctl(daemon: Daemon, *args: str) -> Any:
    result = runner.invoke(app, ["--socket", daemon.control_socket, "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout) if result.stdout.strip() else None


def fastpath_view(daemon: Daemon) -> dict[str, Any]:
    """turnctl status's fast path part: routes, the program's own packet counts, credited ones."""
    view: dict[str, Any] = turnctl(daemon, "status")["fastpath"]
    return view


def loaded_programs() -> set[int]:
    """Ids of the turnd relay programs loaded in the kernel now (any process's)."""
    done = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return {prog["id"] for prog in json.loads(done.stdout) if prog.get("name") == "turnd_relay"}


def held_programs(pid: int) -> set[int]:
    """Ids of the BPF programs process ``pid`` holds (its program and link descriptors)."""
    held = set()
    for fdinfo in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            text = fdinfo.read_text()
        except OSError:
            continue  # closed meanwhile
        for line in text.splitlines():
            if line.startswith("prog_id:"):
                held.add(int(line.split()[1]))
    return held & loaded_programs()


@pytest.fixture(scope="module")
def usage_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("usage") / "usage.jsonl"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, usage_path: Path) -> Iterator[Daemon]:
    running = start_turnd(
        tmp_path_factory.mktemp("turnd"), FASTPATH_ON + f'[usage]\nfile = "{usage_path}"\n'
    )
    yield running
    assert running.stop() == 0


@pytest.fixture
def peer() -> Iterator[EchoPeer]:
    with EchoPeer() as echo:
        yield echo


def bound_client(daemon: Daemon, peer: EchoPeer) -> TurnClient:
    """A client with an allocation and CHANNEL bound to ``peer``, its first echo relayed."""
    client = TurnClient(("127.0.0.1", daemon.port), USER, PASSWORD)
    assert error_code(client.allocate()) is None
    assert error_code(client.channel_bind(CHANNEL, peer.address)) is None
    client.send_channel_data(CHANNEL, b"first")
    assert client.receive() == ChannelData(CHANNEL, b"first")
    return client


def kernel_packets(daemon: Daemon) -> int:
    view = fastpath_view(daemon)
    return int(view["packets_to_peer"]) + int(view["packets_to_client"])


def test_the_kernel_relays_channels_and_metrics_and_usage_equal_what_was_sent(
    daemon: Daemon, peer: EchoPeer, usage_path: Path
) -> None:
    before = kernel_packets(daemon)
    with bound_client(daemon, peer) as client:
        assert fastpath_view(daemon)["routes"] == 1
        for payload in PAYLOADS:
            client.send_channel_data(CHANNEL, payload)
            assert client.receive() == ChannelData(CHANNEL, payload)
        sent = len(PAYLOADS) + 1
        octets = sum(map(len, PAYLOADS)) + len(b"first")
        # The program relayed it all (its own counters), and what the core credited is it.
        assert kernel_packets(daemon) - before == 2 * sent
        samples = daemon.scrape()
        for direction in ("to_peer", "to_client"):
            label = (("direction", direction),)
            kernel = samples["turnd_fastpath_relayed_packets_total", label]
            assert samples["turnd_relayed_packets_total", label] == kernel >= sent
            assert (
                samples["turnd_relayed_bytes_total", label]
                == samples["turnd_fastpath_relayed_bytes_total", label]
            )
        [shown] = turnctl(daemon, "allocations", "list", "--client", str(client.address))
        detail = turnctl(daemon, "allocations", "show", shown["id"])
        assert (detail["packets_to_peer"], detail["bytes_to_peer"]) == (sent, octets)
        assert (detail["packets_to_client"], detail["bytes_to_client"]) == (sent, octets)
        assert detail["channel_list"][0]["kernel"] is True
        assert detail["channel_list"][0]["last_seen"] is not None
        assert error_code(client.refresh(0)) is None
        address = str(client.address)

    def usage_line() -> dict[str, Any] | None:
        lines = usage_path.read_text().splitlines() if usage_path.exists() else []
        found = [json.loads(line) for line in lines if json.loads(line)["client"] == address]
        return found[0] if found else None

    assert wait_until(lambda: usage_line() is not None)
    line = usage_line()
    assert line is not None
    assert (line["packets_to_peer"], line["bytes_to_peer"]) == (sent, octets)
    assert (line["packets_to_client"], line["bytes_to_client"]) == (sent, octets)


def refresh_zero(daemon: Daemon, client: TurnClient) -> None:
    assert error_code(client.refresh(0)) is None


def kill(daemon: Daemon, client: TurnClient) -> None:
    [shown] = turnctl(daemon, "allocations", "list", "--client", str(client.address))
    turnctl(daemon, "allocations", "kill", shown["id"])


def revoke(daemon: Daemon, client: TurnClient) -> None:
    turnctl(daemon, "revoke", USER)
    # Revocations persist: let the user back in for the next tests.
    turnctl(daemon, "users", "add", USER, "--password", PASSWORD)


def drain(daemon: Daemon, client: TurnClient) -> None:
    turnctl(daemon, "drain")


@pytest.mark.parametrize("end", [refresh_zero, kill, revoke, drain], ids=lambda f: f.__name__)
def test_each_end_takes_the_channel_out_of_the_kernel(
    daemon: Daemon, peer: EchoPeer, end: Callable[[Daemon, TurnClient], None]
) -> None:
    with bound_client(daemon, peer) as client:
        assert fastpath_view(daemon)["routes"] == 1
        end(daemon, client)
        assert wait_until(lambda: fastpath_view(daemon)["routes"] == 0)
        before = kernel_packets(daemon)
        client.send_channel_data(CHANNEL, b"after the end")
        if end is drain:  # a draining node keeps its allocations: userspace relays them
            assert client.receive() == ChannelData(CHANNEL, b"after the end")
        else:  # no allocation: userspace drops it, and nothing reaches the peer
            assert client.receive(timeout=0.5) is None
            assert b"after the end" not in [data for data, _ in peer.received]
        assert kernel_packets(daemon) == before
        if end is drain:
            turnctl(daemon, "drain", "--off")
            assert wait_until(lambda: fastpath_view(daemon)["routes"] == 1)
            client.send_channel_data(CHANNEL, b"kernel again")
            assert client.receive() == ChannelData(CHANNEL, b"kernel again")
            assert kernel_packets(daemon) == before + 2
            assert error_code(client.refresh(0)) is None


@pytest.mark.parametrize(
    "lifetimes",
    ["channel_lifetime = 1\n", "permission_lifetime = 1\n"],
    ids=["channel-expiry", "permission-expiry"],
)
def test_expiry_takes_the_channel_out_of_the_kernel(
    tmp_path: Path, peer: EchoPeer, lifetimes: str
) -> None:
    running = start_turnd(tmp_path, FASTPATH_ON + "[relay]\n" + lifetimes)
    try:
        with bound_client(running, peer) as client:
            assert fastpath_view(running)["routes"] == 1
            assert wait_until(lambda: fastpath_view(running)["routes"] == 0)
            before = kernel_packets(running)
            client.send_channel_data(CHANNEL, b"expired")
            assert client.receive(timeout=0.5) is None  # userspace drops it, counted
            assert b"expired" not in [data for data, _ in peer.received]
            assert kernel_packets(running) == before
    finally:
        assert running.stop() == 0


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_stopping_leaves_no_program_and_a_restart_relays_again(
    tmp_path: Path, peer: EchoPeer, how: signal.Signals
) -> None:
    """No program, link or map outlives turnd, even killed; the next start relays in the kernel."""
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
    running = start_turnd(tmp_path / "first", FASTPATH_ON)
    held = held_programs(running.process.pid)
    assert len(held) == 1
    client = bound_client(running, peer)
    os.kill(running.process.pid, how)
    running.process.wait(timeout=30)
    assert wait_until(lambda: not held & loaded_programs())
    client.send_channel_data(CHANNEL, b"nobody home")
    assert client.receive(timeout=0.5) is None
    assert peer.received[-1][0] == b"first"  # the kernel relayed nothing more
    client.close()
    again = start_turnd(tmp_path / "second", FASTPATH_ON)
    try:
        with bound_client(again, peer):
            assert fastpath_view(again)["routes"] == 1
        again_held = held_programs(again.process.pid)
        assert len(again_held) == 1
    finally:
        assert again.stop() == 0
    assert wait_until(lambda: not again_held & loaded_programs())


def test_mode_on_refuses_to_start_without_the_fast_path_and_says_why(tmp_path: Path) -> None:
    config = write_config(tmp_path, '[fastpath]\nmode = "on"\ninterfaces = ["nosuch0"]\n')
    done = run_turnd(config)
    assert done.returncode != 0
    assert "fastpath.mode is on, but fastpath.interfaces: no interface nosuch0" in (
        done.stdout + done.stderr
    )


def test_mode_auto_says_why_and_relays_in_userspace(tmp_path: Path, peer: EchoPeer) -> None:
    running = start_turnd(tmp_path, '[fastpath]\ninterfaces = ["nosuch0"]\n')
    try:
        [line] = [e for e in running.log_events() if e.get("event") == "fastpath.unavailable"]
        assert "no interface nosuch0" in line["msg"]
        assert held_programs(running.process.pid) == set()
        with bound_client(running, peer) as client:  # relayed, by userspace
            client.send_channel_data(CHANNEL, b"userspace")
            assert client.receive() == ChannelData(CHANNEL, b"userspace")
        assert fastpath_view(running) == {
            "active": False,
            "mode": "auto",
            "relayed_packets_to_peer": 0,
            "relayed_packets_to_client": 0,
            "relayed_bytes_to_peer": 0,
            "relayed_bytes_to_client": 0,
        }
        assert running.scrape()[("turnd_fastpath_active", ())] == 0
    finally:
        assert running.stop() == 0


def test_mode_off_loads_nothing(tmp_path: Path) -> None:
    running = start_turnd(tmp_path, '[fastpath]\nmode = "off"\n')
    try:
        assert [e for e in running.log_events() if e.get("event") == "fastpath.off"]
        assert held_programs(running.process.pid) == set()
    finally:
        assert running.stop() == 0


def usage_line_of(usage_path: Path, address: str) -> dict[str, Any] | None:
    """The usage line of the client at ``address``, once written."""
    lines = usage_path.read_text().splitlines() if usage_path.exists() else []
    found = [record for record in map(json.loads, lines) if record["client"] == address]
    return found[0] if found else None


def test_the_usage_lines_kernel_counts_are_every_channel_packet(
    daemon: Daemon, peer: EchoPeer, usage_path: Path
) -> None:
    """The route is in the kernel before the ChannelBind answer leaves, so every ChannelData
    and every echo went through the program: the usage line's kernel_* equal its totals, and
    what was sent."""
    with bound_client(daemon, peer) as client:
        for payload in PAYLOADS:
            client.send_channel_data(CHANNEL, payload)
            assert client.receive() == ChannelData(CHANNEL, payload)
        assert error_code(client.refresh(0)) is None
        address = str(client.address)
    sent = len(PAYLOADS) + 1
    octets = sum(map(len, PAYLOADS)) + len(b"first")
    assert wait_until(lambda: usage_line_of(usage_path, address) is not None)
    line = usage_line_of(usage_path, address)
    assert line is not None
    for direction in ("to_peer", "to_client"):
        kernel = (line["kernel_packets_" + direction], line["kernel_bytes_" + direction])
        assert kernel == (line["packets_" + direction], line["bytes_" + direction])
        assert kernel == (sent, octets)


def reloads(daemon: Daemon) -> int:
    return sum(1 for e in daemon.log_events() if e.get("event") == "reload.done")


def test_reload_keeps_the_kernel_entries(daemon: Daemon, peer: EchoPeer) -> None:
    """SIGHUP reloads users, secrets and certificates; the channel stays in the kernel and the
    program goes on relaying it."""
    with bound_client(daemon, peer) as client:
        assert fastpath_view(daemon)["routes"] == 1
        to_peer = int(fastpath_view(daemon)["packets_to_peer"])
        client.send_channel_data(CHANNEL, b"before the reload")
        assert client.receive() == ChannelData(CHANNEL, b"before the reload")
        assert int(fastpath_view(daemon)["packets_to_peer"]) == to_peer + 1
        done = reloads(daemon)
        os.kill(daemon.process.pid, signal.SIGHUP)
        assert wait_until(lambda: reloads(daemon) == done + 1)
        assert fastpath_view(daemon)["routes"] == 1
        client.send_channel_data(CHANNEL, b"after the reload")
        assert client.receive() == ChannelData(CHANNEL, b"after the reload")
        view = fastpath_view(daemon)
        assert int(view["packets_to_peer"]) == to_peer + 2
        assert view["routes"] == 1
        assert error_code(client.refresh(0)) is None
