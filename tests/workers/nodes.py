"""What the tests of a node of workers share: its relay range, and clients placed on a slot."""

from __future__ import annotations

from testkit.client import ChannelData, error_code
from testkit.daemon import PASSWORD, USER, Daemon
from testkit.sync import EchoPeer, TurnClient
from turnd.workers.selector import expected_slot

WORKERS = 2
PORT_MIN, PORT_MAX = 50_000, 50_999
RELAY = f"[relay]\nport_min = {PORT_MIN}\nport_max = {PORT_MAX}\n"
CHANNEL = 0x4000


def worker_pids(daemon: Daemon) -> dict[int, int]:
    """The PID of each slot's latest worker, from the supervisor's log."""
    pids: dict[int, int] = {}
    for entry in daemon.log_events():
        if entry.get("event") == "worker.started":
            pids[int(entry["slot"])] = int(entry["pid"])
    return pids


def client_on(
    daemon: Daemon,
    slot: int,
    clients: list[TurnClient],
    user: str = USER,
    password: str = PASSWORD,
) -> TurnClient:
    """A client whose source port the selector sends to ``slot``."""
    while True:
        client = TurnClient((daemon.host, daemon.port), user, password)
        clients.append(client)
        if expected_slot(client.address.host, client.address.port, WORKERS) == slot:
            return client


def relaying(client: TurnClient, peer: EchoPeer) -> TurnClient:
    """``client`` with an allocation, a permission and a channel to ``peer``."""
    assert error_code(client.allocate()) is None
    assert error_code(client.channel_bind(CHANNEL, peer.address)) is None
    return client


def echoed(client: TurnClient, payload: bytes) -> bool:
    client.send_channel_data(CHANNEL, payload)
    while (got := client.receive(timeout=2.0)) is not None:
        if got == ChannelData(CHANNEL, payload):
            return True
    return False
