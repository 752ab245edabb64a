"""The command lines: ``turnd check-config`` and ``turnctl credentials generate``."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)
from typer.testing import CliRunner

from auth.credentials import parse_rest_username, rest_password
from testkit.daemon import write_config
from turnd import __version__, cli, turnctl
from turnd.assembly import StartupError, resolve_secrets
from turnd.config import load_config
from turnd.service import TurnService

SECRET = "a-rest-secret-for-turnctl"


@pytest.fixture(autouse=True)
def no_turnd_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """TURND_* variables of the machine running the tests must not leak into the checks."""
    for name in os.environ:
        if name.startswith("TURND_"):
            monkeypatch.delenv(name)


def test_check_config_accepts_a_good_file(tmp_path: Path) -> None:
    """A valid file is reported ``ok`` with exit status 0."""
    path = write_config(tmp_path)
    result = CliRunner().invoke(cli.app, ["check-config", str(path)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"{path}: ok"


def test_check_config_names_the_bad_field_and_exits_1(tmp_path: Path) -> None:
    """A bad value exits 1 and names the field by its dotted path and what was expected."""
    path = write_config(tmp_path, '[relay]\nport_min = "abc"\n')
    result = CliRunner().invoke(cli.app, ["check-config", str(path)])
    assert result.exit_code == 1
    assert "relay.port_min: must be an integer" in result.stderr
    assert '"abc"' in result.stderr


def test_check_config_on_a_missing_file_exits_1(tmp_path: Path) -> None:
    """A file that cannot be read is an error naming the file, not a traceback."""
    path = tmp_path / "nowhere.toml"
    result = CliRunner().invoke(cli.app, ["check-config", str(path)])
    assert result.exit_code == 1
    assert str(path) in result.stderr and "cannot read" in result.stderr


def test_check_config_reports_toml_syntax_errors(tmp_path: Path) -> None:
    """A file that is not TOML exits 1 with a syntax error, not a traceback."""
    path = tmp_path / "broken.toml"
    path.write_text("[server\nrealm = 1\n")
    result = CliRunner().invoke(cli.app, ["check-config", str(path)])
    assert result.exit_code == 1
    assert "TOML syntax error" in result.stderr


def _generate(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(turnctl.app, ["credentials", "generate", *args])
    return result.exit_code, result.stdout, result.stderr


def test_turnctl_generate_prints_ice_servers_expiring_ttl_from_now(tmp_path: Path) -> None:
    """The printed iceServers hold a STUN and a TURN URL for the host and port, and a REST
    username ``<now + ttl>:<id>`` whose credential is the HMAC of the secret."""
    secret_file = tmp_path / "rest-secret"
    secret_file.write_text(SECRET + "\n")
    before = int(time.time())
    code, out, err = _generate(
        "--host", "127.0.0.1", "--port", "3479", "--ttl", "3600", "--id", "app-7",
        "--secret-file", str(secret_file),
    )  # fmt: skip
    after = int(time.time())
    assert code == 0, err
    stun, turn = json.loads(out)["iceServers"]
    assert stun == {"urls": ["stun:127.0.0.1:3479"]}
    assert turn["urls"] == ["turn:127.0.0.1:3479?transport=udp"]
    parsed = parse_rest_username(turn["username"])
    assert parsed is not None and parsed.ident == "app-7"
    assert before + 3600 <= parsed.expiry <= after + 3600
    assert turn["credential"] == rest_password(SECRET, turn["username"])


def test_turnctl_generate_reads_the_secret_from_the_state_dir(tmp_path: Path) -> None:
    """Without --secret-file the secret comes from ``<state-dir>/rest-secret``."""
    (tmp_path / "rest-secret").write_text(SECRET + "\n")
    code, out, err = _generate("--host", "::1", "--state-dir", str(tmp_path))
    assert code == 0, err
    stun, turn = json.loads(out)["iceServers"]
    assert stun == {"urls": ["stun:[::1]:3478"]}
    assert turn["credential"] == rest_password(SECRET, turn["username"])


def test_turnctl_generate_without_the_secret_file_exits_1(tmp_path: Path) -> None:
    """A missing secret file exits 1 with a message naming the file and the reason."""
    missing = tmp_path / "no-such-secret"
    code, out, err = _generate("--host", "127.0.0.1", "--secret-file", str(missing))
    assert code == 1
    assert out == ""
    assert f"cannot read the REST secret {missing}: No such file or directory" in err


def test_turnctl_generate_with_an_empty_secret_file_exits_1(tmp_path: Path) -> None:
    """An empty secret file is refused rather than used as a secret."""
    empty = tmp_path / "rest-secret"
    empty.write_text("\n")
    code, _, err = _generate("--host", "127.0.0.1", "--secret-file", str(empty))
    assert code == 1 and "is empty" in err


def test_turnctl_generate_refuses_a_ttl_that_is_not_positive(tmp_path: Path) -> None:
    """--ttl 0 is a usage error (exit 2), not an already-expired credential."""
    (tmp_path / "rest-secret").write_text(SECRET)
    code, _, err = _generate("--host", "127.0.0.1", "--state-dir", str(tmp_path), "--ttl", "0")
    assert code == 2 and "--ttl must be positive" in err


@pytest.mark.parametrize("app", [cli.app, turnctl.app], ids=["turnd", "turnctl"])
def test_version_prints_the_package_version(app: object) -> None:
    """``version`` prints the installed version."""
    result = CliRunner().invoke(app, ["version"])  # type: ignore[arg-type]
    assert result.exit_code == 0 and result.stdout.strip() == __version__


# --- check-config loads the TLS certificate as start-up does (issue 20, item 16) -----------------


def _tls_files(directory: Path, spoil: str) -> tuple[Path, Path]:
    """A certificate and key pair under ``directory``, spoilt as ``spoil`` says."""
    from tests.test_tls import write_pair

    cert, key = write_pair(directory / "pair")
    if spoil == "missing certificate":
        cert.unlink()
    elif spoil == "mismatched key":
        other = ec.generate_private_key(ec.SECP256R1())
        key.write_bytes(other.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    elif spoil == "encrypted key":
        loaded = load_pem_private_key(key.read_bytes(), password=None)
        encryption = BestAvailableEncryption(b"a passphrase")
        key.write_bytes(loaded.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, encryption))
    return cert, key


def _tls_config(tmp_path: Path, cert: Path, key: Path) -> Path:
    extra = f'[tls]\ncert_file = "{cert}"\nkey_file = "{key}"\n'
    return write_config(tmp_path, extra, listen='["udp:0", "tls:0"]')


@pytest.mark.parametrize(
    ("spoil", "problem"),
    [
        ("missing certificate", "cannot read the TLS certificate file"),
        ("mismatched key", "is not the private key of"),
        ("encrypted key", "the private key is encrypted"),
    ],
)
def test_check_config_refuses_a_tls_pair_start_up_could_not_load(
    tmp_path: Path, spoil: str, problem: str
) -> None:
    """A configured certificate that cannot serve is exit 1, saying why and what to fix."""
    path = _tls_config(tmp_path, *_tls_files(tmp_path, spoil))
    result = CliRunner().invoke(cli.app, ["check-config", str(path)])
    assert result.exit_code == 1, result.output
    assert problem in result.stderr
    assert "fix tls.cert_file and tls.key_file" in result.stderr
    assert "ok" not in result.stdout


def test_check_config_accepts_a_good_tls_pair(tmp_path: Path) -> None:
    """The same pair, unspoilt, is ok: the check is not a blanket refusal."""
    path = _tls_config(tmp_path, *_tls_files(tmp_path, "none"))
    result = CliRunner().invoke(cli.app, ["check-config", str(path)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"{path}: ok"


def test_start_up_with_a_broken_configured_tls_pair_fails(tmp_path: Path) -> None:
    """TurnService.start raises StartupError naming the reason instead of serving without TLS."""
    path = _tls_config(tmp_path, *_tls_files(tmp_path, "mismatched key"))
    config, _ = resolve_secrets(load_config(str(path), {}))

    async def start() -> None:
        service = TurnService(config, relay_ipv4="127.0.0.1")
        try:
            await service.start()
        finally:
            await service.stop()

    with pytest.raises(StartupError, match=r"tls: .* is not the private key of"):
        asyncio.run(start())
