"""A real turnd process for tests and bench: loopback only, a temporary config, port 0
listeners.

The daemon logs JSON to a file; :func:`start_turnd` waits for its ``service.started`` line and
reads the bound ports from the ``listener.started`` lines, so tests never guess ports.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs

USER = "alice"
PASSWORD = "s3cret"
REST_SECRET = "restsecret-for-tests"
REALM = "turnd.test"
#: How long a daemon may take to start before the test fails (a slow CI machine, not a timing
#: assertion: start-up takes well under a second).
START_TIMEOUT = 30.0


#: One metrics sample: (name, sorted labels) -> value.
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


#: What an unhandled error leaves in a log.
FAULT_MARKS = (
    "Traceback (most recent call last)",
    "Unhandled exception",
    "Exception in callback",
    "Task exception was never retrieved",
)


@attrs.define
class Daemon:
    """A running turnd."""

    process: subprocess.Popen[bytes]
    log_path: Path
    config_path: Path
    host: str
    #: Bound listener ports by transport ("udp", "tcp", "tls"), in start order.
    ports: dict[str, list[int]]

    @property
    def metrics_port(self) -> int:
        """The port GET /metrics is served on."""
        for entry in self.log_events():
            if entry.get("event") == "metrics.started":
                return int(entry["port"])
        raise LookupError("turnd logged no metrics.started")

    def scrape(self) -> Samples:
        """Every sample of GET /metrics now, keyed by (name, sorted labels)."""
        from prometheus_client.parser import text_string_to_metric_families

        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    @property
    def udp_ports(self) -> list[int]:
        return self.ports.get("udp", [])

    @property
    def port(self) -> int:
        """The first UDP listener's port."""
        return self.udp_ports[0]

    @property
    def control_socket(self) -> str:
        """The control API's Unix socket (turnctl --socket)."""
        return str(self.config_path.parent / "control.sock")

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log_path.read_text().splitlines():
            if line.startswith("{"):
                events.append(json.loads(line))
        return events

    def faults(self) -> list[str]:
        """Log lines that betray an unhandled error: whatever a client sent, turnd's log never
        holds a traceback or an "Unhandled exception" (issue 20)."""
        return [
            line
            for line in self.log_path.read_text(errors="replace").splitlines()
            if any(mark in line for mark in FAULT_MARKS)
        ]

    def stop(self) -> int:
        """SIGTERM, wait, and the exit status; fails the test if the log shows a fault."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        faults = self.faults()
        assert not faults, f"{self.log_path} holds {len(faults)} fault lines: {faults[:5]}"
        return self.process.returncode


def write_config(
    directory: Path,
    extra: str = "",
    *,
    listen: str = '["udp:0"]',
    addresses: str = '["127.0.0.1"]',
) -> Path:
    """A loopback-only config with one static user, one REST secret and loopback peers allowed."""
    path = directory / "turnd.toml"
    path.write_text(
        f"""
[server]
realm = "{REALM}"
listen = {listen}
addresses = {addresses}
state_dir = "{directory / "state"}"
log_format = "json"
log_level = "info"

[auth]
users = {{ {USER} = "{PASSWORD}" }}
secrets = ["{REST_SECRET}"]

[peers]
allow = ["127.0.0.0/8", "::1/128"]

[metrics]
listen = "127.0.0.1:0"

[control]
socket = "{directory / "control.sock"}"
{extra}
"""
    )
    return path


def start_turnd(
    directory: Path,
    extra: str = "",
    args: tuple[str, ...] = (),
    *,
    listen: str = '["udp:0"]',
    addresses: str = '["127.0.0.1"]',
    env: dict[str, str] | None = None,
    ready: str = "service.started",
) -> Daemon:
    """Start turnd with :func:`write_config` and wait until it serves: until it logs
    ``ready`` (``workers.ready`` for a node of many workers)."""
    config = write_config(directory, extra, listen=listen, addresses=addresses)
    log_path = directory / "turnd.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "turnd", "--config", str(config), *args],
            stdout=log,
            stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        text = log_path.read_text()
        if f'"{ready}"' in text:
            ports: dict[str, list[int]] = {}
            for line in text.splitlines():
                if line.startswith("{"):
                    entry = json.loads(line)
                    if entry.get("event") == "listener.started":
                        ports.setdefault(entry["transport"], []).append(entry["port"])
            return Daemon(process, log_path, config, "127.0.0.1", ports)
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    process.wait()
    raise RuntimeError(f"turnd did not start:\n{log_path.read_text()}")


def run_turnd(config: Path, timeout: float = START_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run turnd on ``config`` to its end (a start-up meant to fail), its output as text."""
    return subprocess.run(
        [sys.executable, "-m", "turnd", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@contextmanager
def running_turnd(directory: Path, extra: str = "") -> Iterator[Daemon]:
    daemon = start_turnd(directory, extra)
    try:
        yield daemon
    finally:
        daemon.stop()


def wait_for_event(daemon: Daemon, name: str, count: int = 1) -> list[dict[str, Any]]:
    """The daemon's JSON log lines for event ``name`` once there are ``count`` of them (or what
    there is when the wait gives up, for the test's assertion to show)."""
    from testkit.sync import wait_until

    def found() -> list[dict[str, Any]]:
        return [e for e in daemon.log_events() if e.get("event") == name]

    wait_until(lambda: len(found()) >= count)
    return found()
