"""turnd with no config file: it generates its secrets, says how to mint credentials, and keeps
the secrets across restarts (README: "Run it")."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from typer.testing import CliRunner

from testkit.daemon import START_TIMEOUT
from testkit.sync import LOOPBACK, TurnClient, error_code, wait_until
from turnd import turnctl
from turnd.config import DEFAULT_CONFIG_PATH

pytestmark = pytest.mark.skipif(
    Path(DEFAULT_CONFIG_PATH).exists(),
    reason=f"{DEFAULT_CONFIG_PATH} exists, so turnd would read it instead of its defaults",
)

GUIDANCE = re.compile(
    r"use it with the ICE server turn:(?P<host>[\d.]+):(?P<port>\d+)\?transport=udp"
)


@contextmanager
def turnd_on_defaults(state_dir: Path, output: Path) -> Iterator[tuple[str, int]]:
    """Run ``turnd`` without a config file on loopback; yield its stderr text and UDP port once
    it printed the credential guidance, and stop it (SIGTERM, status 0) afterwards."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TURND_")}
    args = ["--state-dir", str(state_dir), "--address", LOOPBACK, "--listen", "udp:0"]
    # The relay address is otherwise detected from the host's interfaces: keep it on loopback.
    args += ["--relay-address", LOOPBACK]
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "turnd", *args],
            stdout=sink,
            stderr=sink,
            env={**environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        started = wait_until(
            lambda: GUIDANCE.search(output.read_text()) is not None or process.poll() is not None,
            START_TIMEOUT,
        )
        text = output.read_text()
        found = GUIDANCE.search(text)
        assert started and found is not None, f"turnd printed no guidance:\n{text}"
        assert found["host"] == LOOPBACK
        yield text, int(found["port"])
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_first_start_generates_private_secrets_and_prints_turnctl_guidance(
    tmp_path: Path,
) -> None:
    """With no users and no secrets, turnd writes ``rest-secret`` and ``nonce-key`` (mode 0600)
    into the state directory, says so, and prints a turnctl command whose credential and URL,
    exactly as printed, allocate on this turnd."""
    state = tmp_path / "state"
    with turnd_on_defaults(state, tmp_path / "first.log") as (text, port):
        for name in ("rest-secret", "nonce-key"):
            assert _mode(state / name) == 0o600
            assert (state / name).read_text().strip()
        assert _mode(state) == 0o700
        assert "(generated now)" in text
        command = re.search(r"^\s*turnctl (credentials generate .*)$", text, re.MULTILINE)
        assert command is not None, text
        result = CliRunner().invoke(turnctl.app, shlex.split(command[1]))
        assert result.exit_code == 0, result.output
        turn_server = json.loads(result.stdout)["iceServers"][1]
        assert turn_server["urls"] == [f"turn:{LOOPBACK}:{port}?transport=udp"]
        username, password = turn_server["username"], turn_server["credential"]
        with TurnClient((LOOPBACK, port), username, password) as client:
            assert error_code(client.allocate()) is None


def test_second_start_reuses_the_generated_secrets(tmp_path: Path) -> None:
    """A restart reads the secrets of the first start instead of generating new ones, so
    credentials already handed out stay valid."""
    state = tmp_path / "state"
    with turnd_on_defaults(state, tmp_path / "first.log"):
        first = {name: (state / name).read_text() for name in ("rest-secret", "nonce-key")}
    with turnd_on_defaults(state, tmp_path / "second.log") as (text, _):
        second = {name: (state / name).read_text() for name in ("rest-secret", "nonce-key")}
        assert "(generated now)" not in text
        assert f"using the REST secret in {state / 'rest-secret'}" in text
    assert second == first
