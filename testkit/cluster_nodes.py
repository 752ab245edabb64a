"""turnd cluster nodes inside the namespace test bed.

:class:`ClusterNodes` writes one config per node (the same ``[cluster]`` section everywhere but
``node_id``), starts ``python -m turnd`` in each node's namespace, waits for it to serve and to
see the others, and reads each node's counters over its control socket (a Unix socket: the file
system is shared across network namespaces, so the test talks to every node from the host).

Node configs list :data:`CONFIGURED` nodes although the bed starts with fewer: the spare ids own
their relay port slices from the start, so a node added mid-run (``TestBed.add_node``) joins
without reconfiguring the others.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from testkit.cluster_bed import TestBed

USER, PASSWORD = "alice", "cluster-pw"
CLUSTER_KEY = "test-cluster-key-0123456789abcdef0123"
BACKBONE_PORT = 7478
CONFIGURED = 4
PORT_MIN, PORT_MAX = 50000, 50511
SLICE_SIZE = 16
#: A slow CI machine may take this long to start a node (not a measurement).
START_TIMEOUT = 30.0


def node_address(index: int) -> str:
    """The bed's address of node ``index`` (its backbone address here)."""
    return f"10.77.{index}.2"


def config_text(bed: TestBed, index: int, directory: Path) -> str:
    nodes = ", ".join(f'"{i}={node_address(i)}:{BACKBONE_PORT}"' for i in range(1, CONFIGURED + 1))
    return f"""
[server]
realm = "cluster.test"
listen = ["udp:3478", "tcp:3478"]
state_dir = "{directory / "state"}"
log_format = "json"

[relay]
port_min = {PORT_MIN}
port_max = {PORT_MAX}

[auth]
users = {{ {USER} = "{PASSWORD}" }}
nonce_key = "shared-nonce-key-of-the-cluster"

[peers]
allow = ["10.77.0.0/16"]

[metrics]
listen = ""

[control]
socket = "{directory / "control.sock"}"

[cluster]
node_id = {index}
nodes = [{nodes}]
service_ip = "{bed.service_ip}"
key = "{CLUSTER_KEY}"
heartbeat_interval = 0.2
dead_after = 1.0
slice_size = {SLICE_SIZE}
"""


class ClusterNodes:
    """turnd running in the bed's node namespaces, by node index."""

    def __init__(self, bed: TestBed, directory: Path) -> None:
        self.bed = bed
        self.directory = directory
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    def folder(self, index: int) -> Path:
        return self.directory / f"node{index}"

    def start(self, index: int) -> None:
        """Start node ``index`` and wait until it serves."""
        folder = self.folder(index)
        folder.mkdir(parents=True, exist_ok=True)
        config = folder / "turnd.toml"
        config.write_text(config_text(self.bed, index, folder))
        log = folder / "turnd.log"
        with log.open("ab") as out:
            self.processes[index] = self.bed.popen(
                self.bed.node(index).netns,
                [sys.executable, "-m", "turnd", "--config", str(config)],
                stdout=out,
                stderr=out,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if '"service.started"' in log.read_text():
                return
            if self.processes[index].poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"node {index} did not start:\n{log.read_text()}")

    def kill(self, index: int) -> None:
        """SIGKILL node ``index``: no goodbye, as a crash."""
        process = self.processes.pop(index)
        process.kill()
        process.wait()

    def stop_all(self) -> None:
        for process in self.processes.values():
            self.bed.stop(process)
        self.processes.clear()

    def log(self, index: int) -> str:
        return (self.folder(index) / "turnd.log").read_text()

    def control(self, index: int, path: str, method: str = "GET") -> Any:
        """``method path`` on node ``index``'s control API (HTTP/1.0 over its Unix socket)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(self.folder(index) / "control.sock"))
            request = f"{method} {path} HTTP/1.0\r\nHost: turnd\r\nContent-Length: 0\r\n\r\n"
            sock.sendall(request.encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        if b" 200 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"node {index} {path}: {head!r} {body!r}")
        return json.loads(body)

    def alive_view(self, index: int) -> set[int]:
        """The nodes node ``index`` sees alive (from its log's latest cluster.view event)."""
        alive: set[int] = set()
        for line in self.log(index).splitlines():
            if '"cluster.view"' in line:
                entry = json.loads(line)
                alive = {int(n) for n in str(entry["alive"]).split(",") if n}
        return alive

    def wait_for_view(self, expected: set[int], timeout: float = START_TIMEOUT) -> None:
        """Wait until every running node sees exactly ``expected`` alive."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self.alive_view(i) == expected for i in self.processes):
                return
            time.sleep(0.05)
        views = {i: sorted(self.alive_view(i)) for i in self.processes}
        raise RuntimeError(f"views did not converge on {sorted(expected)}: {views}")

    def stats(self, index: int) -> dict[str, int]:
        """Node ``index``'s core counters, read from its log at shutdown or via the metrics
        event; here: its status, allocations and cluster counters over the control API."""
        return dict(self.control(index, "/v1/cluster/nodes")["counters"])
