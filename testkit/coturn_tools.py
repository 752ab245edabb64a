"""Finding and running coturn's programs on loopback: paths, free ports, processes, probes.

:func:`find_tool` looks in ``$TURND_COTURN_BIN``, PATH and the system directories;
:func:`run_uclient` and :func:`run_stunclient` run a client to its end and hand the output to
:mod:`testkit.coturn_reports`. Everything refuses non-loopback addresses.
"""

from __future__ import annotations

import ipaddress
import os
import random
import select
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from typing import IO, TYPE_CHECKING, Any

from testkit.coturn_reports import (
    CoturnToolError,
    StunClientError,
    StunClientReport,
    UclientError,
    UclientReport,
    output_problems,
    parse_stunclient_output,
    parse_uclient_output,
)

if TYPE_CHECKING:
    import pytest

UCLIENT = "turnutils_uclient"
PEER = "turnutils_peer"
STUNCLIENT = "turnutils_stunclient"
TURNSERVER = "turnserver"

#: Environment variable naming a directory searched before PATH (e.g. a coturn build tree).
BIN_DIR_ENV = "TURND_COTURN_BIN"

#: How long a started server or peer may take to answer its first probe (a safety net, not a
#: measurement: the wait ends as soon as the probe is answered).
STARTUP_TIMEOUT = 15.0

#: One probe's wait for an answer; short so that a slow start costs little.
PROBE_INTERVAL = 0.05

#: uclient runs: ~1-6 s random start delay per session, 20 ms per message, and 10 s of waiting
#: for stragglers when packets are lost; TCP relay adds a connection phase.
UCLIENT_TIMEOUT = 90.0

#: stunclient never gives up on its own when nothing answers.
STUNCLIENT_TIMEOUT = 10.0

#: Ports are picked here: under Linux's ephemeral range (32768-60999) and coturn's default relay
#: range (49152-65535), so that nothing else is handed the same port by the kernel meanwhile.
PORT_RANGE = (20000, 32000)

#: How many random ports to try before giving up.
PORT_ATTEMPTS = 200


# --------------------------------------------------------------------------------------------
# Finding the programs


def find_tool(name: str) -> str | None:
    """Return the full path of coturn program ``name``, or None when it is not installed.

    The directory in ``$TURND_COTURN_BIN`` is searched first, then PATH, then the usual system
    directories (``turnserver`` lives in /usr/bin on Debian but /usr/sbin elsewhere).
    """
    extra = os.environ.get(BIN_DIR_ENV)
    if extra:
        found = shutil.which(name, path=extra)
        if found:
            return found
    found = shutil.which(name)
    if found:
        return found
    return shutil.which(name, path="/usr/bin:/usr/sbin:/usr/local/bin:/usr/local/sbin")


def missing_tools(*names: str) -> list[str]:
    """The subset of ``names`` that :func:`find_tool` cannot find."""
    return [name for name in names if find_tool(name) is None]


def skip_reason(*names: str) -> str:
    """A one-line reason for skipping a test that needs the coturn programs ``names``."""
    missing = missing_tools(*names)
    return (
        f"coturn tool(s) not found: {', '.join(missing)} "
        f"(install the Debian package 'coturn' or set ${BIN_DIR_ENV})"
    )


def needs_tools(*names: str) -> pytest.MarkDecorator:
    """A ``skipif`` mark for tests that need the coturn programs ``names``."""
    import pytest

    return pytest.mark.skipif(bool(missing_tools(*names)), reason=skip_reason(*names))


def tool_path(name: str, explicit: str | None) -> str:
    path = explicit or find_tool(name)
    if path is None:
        raise CoturnToolError(skip_reason(name))
    return path


# --------------------------------------------------------------------------------------------
# Addresses and ports


def check_loopback(host: str) -> str:
    """Refuse anything but a loopback literal: these tools never talk to the outside."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address literal; use 127.0.0.1 or ::1") from None
    if not address.is_loopback:
        raise ValueError(f"{host} is not a loopback address; only loopback is allowed here")
    return host


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET


def _port_is_free(host: str, port: int, kinds: Iterable[socket.SocketKind]) -> bool:
    for kind in kinds:
        with socket.socket(_family(host), kind) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


def free_port_pair(
    hosts: Sequence[str],
    *,
    tcp: bool = False,
    rng: Callable[[int, int], int] = random.randrange,
) -> int:
    """Pick a port P such that P and P + 1 are free for UDP (and TCP) on every host.

    coturn's programs bind the next port too: turnutils_peer for uclient's RTCP sessions, and
    turnserver for its RFC 5780 alternate listeners when it has more than one address.
    """
    kinds = (socket.SOCK_DGRAM, socket.SOCK_STREAM) if tcp else (socket.SOCK_DGRAM,)
    low, high = PORT_RANGE
    for _ in range(PORT_ATTEMPTS):
        port = rng(low, high)
        if all(_port_is_free(h, p, kinds) for h in hosts for p in (port, port + 1)):
            return port
    raise CoturnToolError(f"no free port pair in {low}-{high} on {', '.join(hosts)}")


# --------------------------------------------------------------------------------------------
# Processes


def stop_process(process: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """SIGTERM the process we started (by its PID), then SIGKILL it if it lingers."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def read_log(log: IO[bytes]) -> str:
    if log.closed:
        return ""
    log.flush()
    log.seek(0)
    return log.read().decode("utf-8", "replace")


def wait_for(
    probes: Sequence[Callable[[], bool]],
    process: subprocess.Popen[Any],
    what: str,
    log: Callable[[], str],
    argv: Sequence[str],
    stop: Callable[[], None],
) -> None:
    """Ask ``probes`` in order, each until it holds (a passed one is not asked again); fail
    early if ``process`` dies. On any failure ``stop()`` runs before the error propagates."""
    pending = list(probes)
    deadline = time.monotonic() + STARTUP_TIMEOUT
    try:
        while True:
            if process.poll() is not None:
                raise CoturnToolError(
                    f"{what} exited during start-up",
                    output=log(),
                    argv=argv,
                    returncode=process.returncode,
                )
            while pending and pending[0]():
                pending.pop(0)
            if not pending:
                return
            if time.monotonic() > deadline:
                raise CoturnToolError(
                    f"{what} did not answer within {STARTUP_TIMEOUT} s", output=log(), argv=argv
                )
    except BaseException:
        stop()
        raise


def udp_answers(host: str, port: int, payload: bytes, accept: Callable[[bytes], bool]) -> bool:
    """Send one datagram and wait one probe interval for an acceptable answer."""
    with socket.socket(_family(host), socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        try:
            sock.sendto(payload, (host, port))
        except OSError:
            return False
        readable, _, _ = select.select([sock], [], [], PROBE_INTERVAL)
        if not readable:
            return False
        try:
            data = sock.recv(65535)
        except OSError:  # ICMP port unreachable surfaces here as ECONNREFUSED
            time.sleep(PROBE_INTERVAL)
            return False
        return accept(data)


def tcp_accepts(host: str, port: int) -> bool:
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.settimeout(PROBE_INTERVAL * 4)
        try:
            sock.connect((host, port))
        except OSError:
            time.sleep(PROBE_INTERVAL)
            return False
        return True


# --------------------------------------------------------------------------------------------
# Running the clients


def uclient_argv(
    server_host: str,
    server_port: int,
    peer_host: str | None,
    peer_port: int | None,
    *,
    user: str,
    password: str | None = None,
    secret: str | None = None,
    clients: int = 1,
    messages: int = 20,
    length: int = 100,
    send_indications: bool = False,
    tcp: bool = False,
    tls: bool = False,
    tcp_relay: bool = False,
    ipv6: bool = False,
    rtcp: bool = True,
    client_to_client: bool = False,
    interval_ms: int | None = None,
    extra_args: Sequence[str] = (),
    tool: str = UCLIENT,
) -> list[str]:
    """The turnutils_uclient command line for the options of :func:`run_uclient`."""
    check_loopback(server_host)
    if (password is None) == (secret is None):
        raise ValueError("give exactly one of password (long-term) or secret (REST)")
    needs_peer = not (tcp_relay or client_to_client)
    if needs_peer and (peer_host is None or peer_port is None):
        raise ValueError("peer_host and peer_port are needed unless tcp_relay/client_to_client")
    argv = [tool, "-p", str(server_port), "-u", user]
    if password is not None:
        argv += ["-w", password]
    if secret is not None:
        argv += ["-W", secret]
    argv += ["-m", str(clients), "-n", str(messages), "-l", str(length)]
    if needs_peer and peer_host is not None and peer_port is not None:
        argv += ["-e", check_loopback(peer_host), "-r", str(peer_port)]
    if tcp_relay:
        argv.append("-T")
    elif tcp or tls:
        argv.append("-t")
    if tls:
        argv.append("-S")
    if send_indications and not tcp_relay:
        argv.append("-s")
    if client_to_client and not tcp_relay:
        argv.append("-y")
    if not rtcp and not tcp_relay:
        argv.append("-c")
    if ipv6:
        argv.append("-x")
    if interval_ms is not None:
        argv += ["-z", str(interval_ms)]
    argv += list(extra_args)
    argv.append(server_host)
    return argv


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode("utf-8", "replace")


def _run_tool(
    argv: list[str],
    timeout: float,
    error: type[CoturnToolError],
    late: str,
    failed: Callable[[str], str],
) -> subprocess.CompletedProcess[str]:
    """Run a coturn tool to its end, stderr merged into stdout.

    Raises ``error(late)`` on a timeout and ``error(failed(output))`` on a non-zero exit.
    """
    try:
        done = subprocess.run(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            text=True,
            errors="replace",
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise error(late, output=_text(exc.output), argv=argv) from None
    if done.returncode != 0:
        message = failed(done.stdout)
        raise error(message, output=done.stdout, argv=argv, returncode=done.returncode)
    return done


def _uclient_failed(output: str) -> str:
    """uclient's failure, with the last problem it printed."""
    problems = output_problems(output.splitlines())
    return "turnutils_uclient failed" + (f": {problems[-1]}" if problems else "")


def run_uclient(
    server_host: str,
    server_port: int,
    peer_host: str | None,
    peer_port: int | None,
    *,
    timeout: float = UCLIENT_TIMEOUT,
    tool: str | None = None,
    **options: Any,
) -> UclientReport:
    """Run turnutils_uclient against a TURN server on loopback and parse its summary.

    ``options`` are the keyword arguments of :func:`uclient_argv`. Flags, as turnutils_uclient
    spells them:

    - ``-p server_port``; the server address is the last argument.
    - ``-e peer_host -r peer_port``: the echo peer. Sessions alternate RTP/RTCP; the RTCP ones
      send to ``peer_port + 1`` (turnutils_peer listens on both). The server must allow the peer
      address (coturn: ``allow-loopback-peers``), or uclient stops with "channel bind: error 403".
    - ``-u user`` with ``-w password``: long-term credentials; the realm is whatever the server's
      401 says (uclient has no realm option).
    - ``-u user`` with ``-W secret``: REST credentials; uclient sends the username
      ``<now + 1 day>:<user>`` and the password base64(HMAC-SHA1(secret, username)).
    - ``-m clients``: number of sessions, rounded up (see :func:`uclient_sessions`).
    - ``-n messages`` per session, ``-l length`` bytes each, one every ``-z interval_ms``
      (default 20 ms); each session starts after a random 1-6 s.
    - ``-s`` (``send_indications``): Send/Data indications instead of channels.
    - ``-t`` (``tcp``): TCP to the server. ``tls`` adds ``-t -S``: TLS to the server, no
      certificate check (uclient offers TLS 1.0/1.1 first and retries up to TLS 1.2).
    - ``-T`` (``tcp_relay``): RFC 6062 TCP relays; implies ``-t -y -c`` and ignores ``-e -r -s``.
    - ``-y`` (``client_to_client``): relays send to each other; no peer needed.
    - ``-c`` (``rtcp=False``): no RTCP sessions.
    - ``-x`` (``ipv6``): request an IPv6 relay (server on ::1 with an IPv6 relay address).

    Raises :class:`UclientError` (with the output) on a non-zero exit, a timeout, or a missing
    summary. A run that completes with 100 % loss is *not* an error: check the numbers.
    """
    argv = uclient_argv(server_host, server_port, peer_host, peer_port, **options)
    argv[0] = tool_path(UCLIENT, tool)  # after the argument checks, so bad input fails first
    late = f"turnutils_uclient did not finish within {timeout} s"
    done = _run_tool(argv, timeout, UclientError, late, _uclient_failed)
    return parse_uclient_output(done.stdout, argv=argv, returncode=done.returncode)


def run_stunclient(
    host: str,
    port: int,
    *,
    rfc5780: bool = False,
    local_address: str | None = None,
    timeout: float = STUNCLIENT_TIMEOUT,
    tool: str | None = None,
) -> StunClientReport:
    """Send a Binding request with turnutils_stunclient (UDP) and parse the answer.

    ``-p port``; ``-f`` (``rfc5780``) forces the RFC 5780 requests even when the first answer has
    no OTHER-ADDRESS; ``-L local_address`` picks the source address. stunclient retries forever
    when nothing answers, so a timeout means "no answer" and raises :class:`StunClientError`.
    """
    check_loopback(host)
    if local_address is not None:
        check_loopback(local_address)
    argv = [tool_path(STUNCLIENT, tool), "-p", str(port)]
    if rfc5780:
        argv.append("-f")
    if local_address is not None:
        argv += ["-L", local_address]
    argv.append(host)
    late = f"no Binding answer within {timeout} s (stunclient retries forever)"
    done = _run_tool(argv, timeout, StunClientError, late, lambda _: "turnutils_stunclient failed")
    return parse_stunclient_output(done.stdout, argv=argv, returncode=done.returncode)
