"""systemd/: the unit, sysusers, tmpfiles and sysctl files.

Pure checks of what DESIGN.md "Operations" asks of the unit always run. systemd's own tools check
the files when they are installed (Debian's ``systemd`` package): ``systemd-analyze verify`` must
pass without a single warning, ``systemd-analyze security`` must rate the unit well, and
``systemd-sysusers``/``systemd-tmpfiles`` must make the user and /etc/turnd in a scratch root.
A last test runs turnd under the kernel's memory-deny-write-execute, the restriction the unit's
MemoryDenyWriteExecute=yes puts on it, and checks it still serves.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from turnd.config import Config

REPO = Path(__file__).resolve().parents[1]
SYSTEMD_DIR = REPO / "systemd"
UNIT = SYSTEMD_DIR / "turnd.service"
SYSCTL = SYSTEMD_DIR / "turnd-sysctl.conf"
SYSUSERS = SYSTEMD_DIR / "turnd.sysusers"
TMPFILES = SYSTEMD_DIR / "turnd.tmpfiles"

Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """``{section: {key: [values in order]}}`` of a unit file (systemd.syntax(7), no includes)."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        assert not line.endswith("\\"), f"line {number}: keep directives on one line"
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        assert section is not None, f"line {number}: directive outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"line {number}: not KEY=VALUE: {raw!r}"
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    return parse_unit(UNIT.read_text())["Service"]


def one(service: dict[str, list[str]], key: str) -> str:
    values = service.get(key, [])
    assert len(values) == 1, f"{key}= must be set exactly once, got {values}"
    return values[0]


def parse_sysctl(text: str) -> dict[str, str]:
    """``{key: value}`` of a sysctl.d(5) file; every line must be a comment or ``key = value``."""
    settings: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        assert sep and value, f"line {number}: not 'key = value': {raw!r}"
        assert re.fullmatch(r"[a-z0-9_]+(\.[a-z0-9_]+)+", key), f"line {number}: bad key {key!r}"
        assert key not in settings, f"line {number}: {key} set twice"
        settings[key] = value
    return settings


def table_rows(text: str) -> list[list[str]]:
    """Non-comment lines of a sysusers.d/tmpfiles.d file, split into fields (quotes kept whole)."""
    return [
        re.findall(r'"[^"]*"|\S+', line)
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


# --- the unit: what DESIGN.md asks of it ---------------------------------------------------------


def test_type_notify(service: dict[str, list[str]]) -> None:
    assert one(service, "Type") == "notify"


def test_exec_start_reads_the_etc_config(service: dict[str, list[str]]) -> None:
    assert one(service, "ExecStart").split() == [
        "/usr/local/bin/turnd",
        "--config",
        "/etc/turnd/turnd.toml",
    ]


def test_exec_reload_sends_hup_to_the_main_process(service: dict[str, list[str]]) -> None:
    command = one(service, "ExecReload").split()
    assert Path(command[0]).name == "kill"
    assert command[1:] == ["-HUP", "$MAINPID"]


def test_capabilities_are_exactly_bind_service_and_net_admin(
    service: dict[str, list[str]],
) -> None:
    expected = ["CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE"]
    assert sorted(one(service, "AmbientCapabilities").split()) == expected
    assert sorted(one(service, "CapabilityBoundingSet").split()) == expected
    assert one(service, "NoNewPrivileges") == "yes"


def test_many_file_descriptors(service: dict[str, list[str]]) -> None:
    assert int(one(service, "LimitNOFILE")) >= 1_048_576


def test_dedicated_user_made_by_sysusers(service: dict[str, list[str]]) -> None:
    assert one(service, "DynamicUser") == "no"
    user, group = one(service, "User"), one(service, "Group")
    assert user == group == "turnd"
    rows = table_rows(SYSUSERS.read_text())
    assert [row[:2] for row in rows] == [["u", user]], "sysusers must make exactly that user"


def test_directories(service: dict[str, list[str]]) -> None:
    assert one(service, "StateDirectory") == "turnd"  # /var/lib/turnd, turnd's default state_dir
    assert Config().server.state_dir == "/var/lib/turnd"
    assert one(service, "StateDirectoryMode") == "0700"
    assert one(service, "RuntimeDirectory") == "turnd"  # /run/turnd/control.sock
    assert one(service, "LogsDirectory") == "turnd"  # /var/log/turnd/usage.jsonl
    rows = {row[1]: row for row in table_rows(TMPFILES.read_text())}
    group = one(service, "Group")
    assert rows["/etc/turnd"][:5] == ["d", "/etc/turnd", "0750", "root", group]
    assert rows["/etc/turnd/turnd.toml"][:5] == [
        "z",
        "/etc/turnd/turnd.toml",
        "0640",
        "root",
        group,
    ]


HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "RestrictNamespaces": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native",
    "Restart": "on-failure",
    "RestartPreventExitStatus": "2",  # a bad config or state file: no restart loop
}


@pytest.mark.parametrize(("key", "value"), HARDENING.items())
def test_hardening(service: dict[str, list[str]], key: str, value: str) -> None:
    assert one(service, key) == value


def test_system_call_filter(service: dict[str, list[str]]) -> None:
    assert service["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
    assert one(service, "SystemCallErrorNumber") == "EPERM"


def test_address_families(service: dict[str, list[str]]) -> None:
    families = one(service, "RestrictAddressFamilies").split()
    assert sorted(families) == ["AF_INET", "AF_INET6", "AF_NETLINK", "AF_UNIX"]


def test_stop_timeout(service: dict[str, list[str]]) -> None:
    assert one(service, "TimeoutStopSec")


# --- sysctl drop-in -----------------------------------------------------------------------------


def test_sysctl_buffers_cover_what_turnd_asks_for() -> None:
    settings = parse_sysctl(SYSCTL.read_text())
    for key in ("rmem_max", "wmem_max", "rmem_default", "wmem_default"):
        assert int(settings[f"net.core.{key}"]) > 212_992, f"{key}: no larger than Linux's default"
    defaults = Config().server  # what turnd asks for unless told otherwise
    assert int(settings["net.core.rmem_max"]) >= defaults.socket_rcvbuf
    assert int(settings["net.core.wmem_max"]) >= defaults.socket_sndbuf


def test_ephemeral_ports_stay_below_the_relay_range() -> None:
    settings = parse_sysctl(SYSCTL.read_text())
    low, high = (int(part) for part in settings["net.ipv4.ip_local_port_range"].split())
    assert 1024 < low < high < 49152
    assert high < Config().relay.port_min


def test_sysctl_keys_exist_in_this_kernel() -> None:
    if not Path("/proc/sys/net/core").is_dir():
        pytest.skip("no /proc/sys/net here to check the keys against")
    for key in parse_sysctl(SYSCTL.read_text()):
        assert Path("/proc/sys", *key.split(".")).exists(), f"{key}: unknown to this kernel"


# --- systemd's own tools ------------------------------------------------------------------------


def analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    return tool


def verify(unit_text: str, directory: Path) -> tuple[int, str]:
    """``systemd-analyze verify`` of ``unit_text`` saved as turnd.service in ``directory``.

    ExecStart's /usr/local/bin/turnd need not exist here, and verify fails on a missing binary:
    the copy runs /bin/true instead, the rest of the unit unchanged.
    """
    text = unit_text.replace("/usr/local/bin/turnd", "/bin/true")
    (directory / "turnd.service").write_text(text)
    result = subprocess.run(
        [analyze(), "verify", "--man=no", "./turnd.service"],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0"},
    )
    return result.returncode, result.stdout + result.stderr


def complaints(output: str) -> list[str]:
    """Lines of verify's output about our unit or about directives it did not understand."""
    pattern = re.compile(r"turnd\.service|unknown|ignoring|invalid|failed", re.IGNORECASE)
    return [line for line in output.splitlines() if pattern.search(line)]


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    code, output = verify(UNIT.read_text(), tmp_path)
    print(output)
    assert code == 0, output
    assert complaints(output) == [], output


def test_verify_would_catch_an_unknown_directive(tmp_path: Path) -> None:
    """The check above is not vacuous: a misspelt directive or filter group is reported."""
    text = UNIT.read_text().replace(
        "LockPersonality=yes", "LockPersonality=yes\nProtectKernelTunable=yes\n"
    )
    text = text.replace("SystemCallFilter=@system-service", "SystemCallFilter=@system-servic")
    _, output = verify(text, tmp_path)
    found = "\n".join(complaints(output))
    assert "ProtectKernelTunable" in found
    assert "@system-servic" in found


def test_systemd_analyze_security(tmp_path: Path) -> None:
    """Exposure 0 (locked down) to 10 (unprotected): the unit must stay at "OK" or better."""
    tool = analyze()
    (tmp_path / "turnd.service").write_text(UNIT.read_text())
    result = subprocess.run(
        [tool, "security", "--offline=true", "--no-pager", "./turnd.service"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if "--offline" in result.stderr and "unrecognized" in result.stderr:
        pytest.skip(f"this systemd-analyze has no offline security check: {result.stderr}")
    match = re.search(r"Overall exposure level for turnd\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    print(match.group(0))
    assert float(match.group(1)) <= 3.0, result.stdout


def test_sysusers_and_tmpfiles_make_the_user_and_config_dir(tmp_path: Path) -> None:
    sysusers, tmpfiles = shutil.which("systemd-sysusers"), shutil.which("systemd-tmpfiles")
    if sysusers is None or tmpfiles is None:
        pytest.skip("systemd-sysusers/systemd-tmpfiles are not installed (Debian package systemd)")
    if os.geteuid() != 0:
        pytest.skip("systemd-tmpfiles needs root to give /etc/turnd its owner")
    root = tmp_path
    for name, source in (("sysusers.d", SYSUSERS), ("tmpfiles.d", TMPFILES)):
        (root / "etc" / name).mkdir(parents=True)
        shutil.copy(source, root / "etc" / name / "turnd.conf")
    (root / "etc" / "passwd").touch()
    (root / "etc" / "group").touch()
    for command in ([sysusers, f"--root={root}"], [tmpfiles, f"--root={root}", "--create"]):
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "ignoring" not in result.stderr.lower(), result.stderr
    passwd = (root / "etc" / "passwd").read_text().splitlines()
    entry = next(line.split(":") for line in passwd if line.startswith("turnd:"))
    assert entry[5:] == ["/var/lib/turnd", "/usr/sbin/nologin"]
    group = next(line for line in (root / "etc/group").read_text().splitlines())
    gid = int(group.split(":")[2])
    assert group.startswith("turnd:")
    info = (root / "etc" / "turnd").stat()
    assert (info.st_uid, info.st_gid, info.st_mode & 0o7777) == (0, gid, 0o750)


# --- MemoryDenyWriteExecute: does turnd still run? ----------------------------------------------

PR_SET_MDWE = 65
PR_GET_MDWE = 66
PR_MDWE_REFUSE_EXEC_GAIN = 1

#: Run turnd after the kernel's own MDWE (Linux 6.3+) is switched on: the same rule systemd's
#: MemoryDenyWriteExecute= enforces (systemd 255+ uses it directly, older ones a seccomp filter).
MDWE_LAUNCHER = f"""
import ctypes, runpy, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) != 0:
    sys.exit("prctl(PR_SET_MDWE) failed: errno %d" % ctypes.get_errno())
assert libc.prctl({PR_GET_MDWE}, 0, 0, 0, 0) == {PR_MDWE_REFUSE_EXEC_GAIN}
sys.argv = ["turnd", *sys.argv[1:]]
runpy.run_module("turnd", run_name="__main__", alter_sys=True)
"""


def mdwe_supported() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(PR_GET_MDWE, 0, 0, 0, 0) >= 0)


def free_port(kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def binding_request() -> tuple[bytes, bytes]:
    transaction = os.urandom(12)
    return b"\x00\x01\x00\x00\x21\x12\xa4\x42" + transaction, transaction


def test_turnd_serves_under_memory_deny_write_execute(tmp_path: Path) -> None:
    """UDP and TLS Binding, a self-signed certificate made by cryptography, uvloop, a SIGHUP."""
    if not sys.platform.startswith("linux") or not mdwe_supported():
        pytest.skip("this kernel has no prctl(PR_SET_MDWE) (Linux 6.3+)")
    udp, tls = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)
    log_path = tmp_path / "turnd.log"
    command = [
        sys.executable,
        "-c",
        MDWE_LAUNCHER,
        "--address",
        "127.0.0.1",
        "--listen",
        f"udp:{udp}",
        "--listen",
        f"tls:{tls}",
        "--state-dir",
        str(tmp_path / "state"),
        "--log-format",
        "json",
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
    try:
        deadline = time.monotonic() + 30
        while '"service.started"' not in log_path.read_text():
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)

        request, transaction = binding_request()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            sock.sendto(request, ("127.0.0.1", udp))
            answer = sock.recv(2048)
        assert answer[:2] == b"\x01\x01" and answer[8:20] == transaction

        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.set_alpn_protocols(["stun.turn"])
        request, transaction = binding_request()
        with (
            socket.create_connection(("127.0.0.1", tls), timeout=5) as raw,
            context.wrap_socket(raw) as stream,
        ):
            stream.sendall(request)
            answer = stream.recv(2048)
        assert answer[:2] == b"\x01\x01" and answer[8:20] == transaction

        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while '"reload.' not in log_path.read_text():
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        assert '"reload.done"' in log_path.read_text(), log_path.read_text()
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert process.returncode == 0, log_path.read_text()
    assert "MemoryError" not in log_path.read_text()
    assert "PermissionError" not in log_path.read_text()


FASTPATH_DROPIN = SYSTEMD_DIR / "turnd-fastpath.conf"


def test_the_fastpath_drop_in_adds_exactly_cap_bpf_and_the_bpf_call(tmp_path: Path) -> None:
    """systemd/turnd-fastpath.conf gives the unit what loading the relay program needs and no
    more, and the unit with it still verifies without a warning."""
    service = parse_unit(FASTPATH_DROPIN.read_text())["Service"]
    assert service == {
        "AmbientCapabilities": ["CAP_BPF"],
        "CapabilityBoundingSet": ["CAP_BPF"],
        "SystemCallFilter": ["bpf"],
    }
    lines = [line for line in FASTPATH_DROPIN.read_text().splitlines() if "=" in line]
    combined = UNIT.read_text().replace("[Service]\n", "[Service]\n" + "\n".join(lines) + "\n", 1)
    code, output = verify(combined, tmp_path)
    assert code == 0, output
    assert complaints(output) == [], output
