"""Drive coturn's client programs and read the numbers they print.

Theory of operation
-------------------
coturn ships three test clients that nobody here wrote, which makes them good witnesses for turnd:

* ``turnutils_uclient`` allocates relays, binds channels (or uses Send indications), sends
  ``-n`` messages of ``-l`` bytes from every session to an echo peer and counts what comes back.
  It exits 0 even when every packet is lost, so the summary it prints is the only verdict; this
  module parses it into a :class:`UclientReport` and raises :class:`UclientError` (carrying the
  whole output) when the summary is missing, e.g. because the Allocate failed (exit 255).
* ``turnutils_peer`` is a UDP-only echo server. It binds the given port *and the next one* (uclient
  sends its RTCP session to peer port + 1) with address reuse, so a second peer on a busy port
  starts without complaint; :func:`start_peer` therefore picks ports nobody holds and waits until
  both answer an echo probe.
* ``turnutils_stunclient`` sends one Binding request and prints the reflexive address; when the
  server reveals RFC 5780 support (OTHER-ADDRESS) it makes two more requests and prints a block
  for each. With no server it retries forever, hence the timeout in :func:`run_stunclient`.

:func:`start_turnserver` runs coturn's own ``turnserver`` from a throw-away config, as a known-good
server that proves the harness before it is pointed at turnd.

Everything here refuses non-loopback addresses: these tools only ever talk to 127.0.0.1 or ::1.

Output format (coturn 4.6.1; newer releases add an ``INFO:`` prefix, which the patterns allow)::

    6: : start_mclient: msz=2, tot_send_msgs=23, tot_recv_msgs=23, tot_send_bytes ~ 2300, ...
    6: : start_mclient: tot_send_msgs=40, tot_recv_msgs=40
    6: : start_mclient: tot_send_bytes ~ 4000, tot_recv_bytes ~ 4000
    6: : Total transmit time is 6
    6: : Total lost packets 0 (0.000000%), total send dropped 0 (0.000000%)
    6: : Average round trip delay 0.000000 ms; min = 0 ms, max = 0 ms
    6: : Average jitter 1.000000 ms; min = 0 ms, max = 4 ms

The leading number is whole seconds since the program started. Some lines (the first log line of
a run, for one) are printed twice; the parsers take the last occurrence.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import random
import re
import select
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import attrs

from testkit.links import ClosesOnExit

if TYPE_CHECKING:
    import pytest

UCLIENT = "turnutils_uclient"
PEER = "turnutils_peer"
STUNCLIENT = "turnutils_stunclient"
TURNSERVER = "turnserver"

#: Environment variable naming a directory searched before PATH (e.g. a coturn build tree).
BIN_DIR_ENV = "TURND_COTURN_BIN"

#: uclient prints UINT32_MAX as the minimum delay/jitter when no packet came back.
NO_SAMPLE = 0xFFFFFFFF

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

STUN_MAGIC_COOKIE = 0x2112A442
STUN_BINDING_REQUEST = 0x0001
STUN_BINDING_SUCCESS = 0x0101
_STUN_HEADER = struct.Struct("!HHI12s")


class CoturnToolError(RuntimeError):
    """A coturn program failed or printed something this module cannot read.

    ``output`` holds everything the program printed so that a failing test can show it.
    """

    def __init__(
        self,
        message: str,
        *,
        output: str = "",
        argv: Sequence[str] = (),
        returncode: int | None = None,
    ) -> None:
        self.output = output
        self.argv = tuple(argv)
        self.returncode = returncode
        details = [message]
        if self.argv:
            details.append("command: " + " ".join(self.argv))
        if returncode is not None:
            details.append(f"exit status: {returncode}")
        details.append("output:\n" + (output if output.strip() else "<nothing>"))
        super().__init__("\n".join(details))


class UclientError(CoturnToolError):
    """turnutils_uclient exited non-zero or printed no summary (e.g. the Allocate failed)."""


class StunClientError(CoturnToolError):
    """turnutils_stunclient got no answer, an error response, or printed no address."""


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


def _tool(name: str, explicit: str | None) -> str:
    path = explicit or find_tool(name)
    if path is None:
        raise CoturnToolError(skip_reason(name))
    return path


# --------------------------------------------------------------------------------------------
# Addresses and ports


def _check_loopback(host: str) -> str:
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


def _format_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --------------------------------------------------------------------------------------------
# Processes


def _stop_process(process: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """SIGTERM the process we started (by its PID), then SIGKILL it if it lingers."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _read_log(log: IO[bytes]) -> str:
    if log.closed:
        return ""
    log.flush()
    log.seek(0)
    return log.read().decode("utf-8", "replace")


def _wait_for(
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


def _udp_answers(host: str, port: int, payload: bytes, accept: Callable[[bytes], bool]) -> bool:
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


def _tcp_accepts(host: str, port: int) -> bool:
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.settimeout(PROBE_INTERVAL * 4)
        try:
            sock.connect((host, port))
        except OSError:
            time.sleep(PROBE_INTERVAL)
            return False
        return True


# --------------------------------------------------------------------------------------------
# turnutils_peer


@attrs.frozen(eq=False)
class EchoPeer(ClosesOnExit):
    """A running turnutils_peer: UDP echo on ``port`` and ``port + 1`` on each of ``hosts``.

    turnutils_peer speaks UDP only; uclient's TCP relay mode (``-T``) needs no peer because it
    makes the relays talk to each other.
    """

    hosts: tuple[str, ...]
    port: int
    process: subprocess.Popen[bytes]
    argv: tuple[str, ...]
    _log: IO[bytes]

    @property
    def pid(self) -> int:
        """The peer's process id."""
        return self.process.pid

    def output(self) -> str:
        """What the peer printed so far (nothing unless started with ``-v``)."""
        return _read_log(self._log)

    def stop(self) -> None:
        """Stop the peer (by PID) and release its log file; safe to call twice."""
        _stop_process(self.process)
        self._log.close()

    close = stop


def start_peer(
    hosts: Sequence[str] = ("127.0.0.1",),
    port: int | None = None,
    *,
    tool: str | None = None,
) -> EchoPeer:
    """Start turnutils_peer on ``hosts`` (loopback only) and return once it echoes.

    With ``port`` None a free pair (P, P + 1) is chosen. The peer binds with address reuse and
    never reports a busy port, so readiness is proved by an echo on both ports of every host.
    """
    hosts = tuple(_check_loopback(h) for h in hosts)
    if not hosts:
        raise ValueError("start_peer needs at least one host")
    chosen = free_port_pair(hosts) if port is None else port
    argv = [_tool(PEER, tool), "-p", str(chosen)]
    for host in hosts:
        argv += ["-L", host]
    log = tempfile.TemporaryFile()  # noqa: SIM115 - owned and closed by EchoPeer.stop()
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    peer = EchoPeer(hosts=hosts, port=chosen, process=process, argv=tuple(argv), log=log)
    probe = b"turnd-peer-probe"
    echoes = [
        functools.partial(_udp_answers, h, p, probe, lambda data: data == probe)
        for h in hosts
        for p in (chosen, chosen + 1)
    ]
    _wait_for(echoes, process, "turnutils_peer", peer.output, argv, peer.stop)
    return peer


# --------------------------------------------------------------------------------------------
# turnutils_uclient


@attrs.frozen
class UclientReport:
    """The summary turnutils_uclient printed at the end of a run.

    Packet counts add up every session (one session per allocation; see
    :func:`uclient_sessions`). uclient counts only failed sends (``send_dropped``); it has no
    receive-drop counter, so anything the relay or peer dropped shows up as ``lost_packets``
    (sent minus received, never negative). Percentages and averages are ``nan`` when their
    denominator was zero (uclient prints ``-nan``).
    """

    sent_packets: int
    received_packets: int
    lost_packets: int
    lost_percent: float
    sent_bytes: int
    received_bytes: int
    send_dropped: int
    send_dropped_percent: float
    rtt_avg_ms: float
    #: None when no packet came back (uclient prints 4294967295).
    rtt_min_ms: int | None
    rtt_max_ms: int
    jitter_avg_ms: float
    jitter_min_ms: int | None
    jitter_max_ms: int
    #: Whole seconds of the sending phase, as printed.
    transmit_time_s: int
    #: Whole seconds of the connect phase; None if not printed.
    connect_time_s: int | None
    #: Highest ``msz=`` seen in the once-a-second progress lines (live sessions); None if the run
    #: was too short to print one.
    sessions: int | None
    #: Lines mentioning an error, a warning or "cannot" (TLS version retries show up here too).
    problems: tuple[str, ...]
    output: str = attrs.field(repr=False)
    argv: tuple[str, ...] = ()
    returncode: int | None = None

    def describe(self) -> str:
        """Command line and full output, for assertion messages."""
        return f"command: {' '.join(self.argv)}\nexit status: {self.returncode}\n{self.output}"


_INT = r"(\d+)"
_FLOAT = r"([-+]?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|nan|inf))"
_UCLIENT_TOTAL_MSGS = re.compile(rf": tot_send_msgs={_INT}, tot_recv_msgs={_INT}\s*$")
_UCLIENT_TOTAL_BYTES = re.compile(rf": tot_send_bytes ~ {_INT}, tot_recv_bytes ~ {_INT}\s*$")
_UCLIENT_PROGRESS = re.compile(rf"msz={_INT}, tot_send_msgs=")
_UCLIENT_LOST = re.compile(
    rf"Total lost packets {_INT} \({_FLOAT}%\), total send dropped {_INT} \({_FLOAT}%\)"
)
_UCLIENT_RTT = re.compile(
    rf"Average round trip delay {_FLOAT} ms; min = {_INT} ms, max = {_INT} ms"
)
_UCLIENT_JITTER = re.compile(rf"Average jitter {_FLOAT} ms; min = {_INT} ms, max = {_INT} ms")
_UCLIENT_TRANSMIT = re.compile(rf"Total transmit time is {_INT}")
_UCLIENT_CONNECT = re.compile(rf"Total connect time is {_INT}")
_PROBLEM = re.compile(r"\berror\b|\bwarning\b|\bcannot\b|refused", re.IGNORECASE)


def _last_match(pattern: re.Pattern[str], lines: Sequence[str]) -> re.Match[str] | None:
    for line in reversed(lines):
        match = pattern.search(line)
        if match:
            return match
    return None


def _sample(value: str) -> int | None:
    number = int(value)
    return None if number == NO_SAMPLE else number


def _problems(lines: Sequence[str]) -> tuple[str, ...]:
    found: list[str] = []
    for line in lines:
        if _PROBLEM.search(line) and (not found or found[-1] != line.strip()):
            found.append(line.strip())
    return tuple(found)


def parse_uclient_output(
    output: str, *, argv: Sequence[str] = (), returncode: int | None = None
) -> UclientReport:
    """Parse turnutils_uclient's output; raise :class:`UclientError` if the summary is missing."""
    lines = output.splitlines()
    required = {
        "message totals": _last_match(_UCLIENT_TOTAL_MSGS, lines),
        "byte totals": _last_match(_UCLIENT_TOTAL_BYTES, lines),
        "lost packets": _last_match(_UCLIENT_LOST, lines),
        "round trip delay": _last_match(_UCLIENT_RTT, lines),
        "jitter": _last_match(_UCLIENT_JITTER, lines),
        "transmit time": _last_match(_UCLIENT_TRANSMIT, lines),
    }
    missing = [name for name, match in required.items() if match is None]
    if missing:
        problems = _problems(lines)
        hint = f" (it said: {problems[-1]})" if problems else ""
        raise UclientError(
            f"turnutils_uclient printed no {', '.join(missing)}{hint}",
            output=output,
            argv=argv,
            returncode=returncode,
        )
    msgs, byts, lost, rtt, jitter, transmit = (m for m in required.values() if m is not None)
    connect = _last_match(_UCLIENT_CONNECT, lines)
    progress = [int(m.group(1)) for line in lines if (m := _UCLIENT_PROGRESS.search(line))]
    return UclientReport(
        sent_packets=int(msgs.group(1)),
        received_packets=int(msgs.group(2)),
        lost_packets=int(lost.group(1)),
        lost_percent=float(lost.group(2)),
        sent_bytes=int(byts.group(1)),
        received_bytes=int(byts.group(2)),
        send_dropped=int(lost.group(3)),
        send_dropped_percent=float(lost.group(4)),
        rtt_avg_ms=float(rtt.group(1)),
        rtt_min_ms=_sample(rtt.group(2)),
        rtt_max_ms=int(rtt.group(3)),
        jitter_avg_ms=float(jitter.group(1)),
        jitter_min_ms=_sample(jitter.group(2)),
        jitter_max_ms=int(jitter.group(3)),
        transmit_time_s=int(transmit.group(1)),
        connect_time_s=int(connect.group(1)) if connect else None,
        sessions=max(progress) if progress else None,
        problems=_problems(lines),
        output=output,
        argv=tuple(argv),
        returncode=returncode,
    )


def uclient_sessions(
    clients: int = 1,
    *,
    rtcp: bool = True,
    client_to_client: bool = False,
    tcp_relay: bool = False,
) -> int:
    """How many sessions (allocations) uclient runs for ``-m clients``.

    Each session sends ``-n`` messages, so a clean run sends ``sessions * messages`` packets.
    Without ``-c`` every client is an RTP/RTCP pair, so the count is rounded up to even; in
    client-to-client mode (``-y``, implied by ``-T``, which also implies ``-c``) the relays pair
    up, so it is rounded up to a multiple of 4 (with RTCP) or 2 (without).
    """
    count = max(clients, 1)
    if tcp_relay:
        client_to_client, rtcp = True, False
    step = (4 if rtcp else 2) if client_to_client else (2 if rtcp else 1)
    return -(-count // step) * step


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
    _check_loopback(server_host)
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
        argv += ["-e", _check_loopback(peer_host), "-r", str(peer_port)]
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
    problems = _problems(output.splitlines())
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
    argv[0] = _tool(UCLIENT, tool)  # after the argument checks, so bad input fails first
    late = f"turnutils_uclient did not finish within {timeout} s"
    done = _run_tool(argv, timeout, UclientError, late, _uclient_failed)
    return parse_uclient_output(done.stdout, argv=argv, returncode=done.returncode)


# --------------------------------------------------------------------------------------------
# turnutils_stunclient


@attrs.frozen
class TransportAddress:
    """An IP address and port as printed by stunclient."""

    host: str
    port: int

    def __str__(self) -> str:
        return _format_hostport(self.host, self.port)


@attrs.frozen
class StunResponse:
    """One Binding response: the reflexive (XOR-)MAPPED-ADDRESS, plus RESPONSE-ORIGIN and
    OTHER-ADDRESS when the server sends them (RFC 5780)."""

    reflexive: TransportAddress
    origin: TransportAddress | None = None
    other: TransportAddress | None = None


@attrs.frozen
class StunClientReport:
    """What turnutils_stunclient printed: one response, or three in an RFC 5780 run."""

    responses: tuple[StunResponse, ...]
    output: str = attrs.field(repr=False)
    argv: tuple[str, ...] = ()
    returncode: int | None = None

    @property
    def mapped(self) -> TransportAddress:
        """The reflexive address of the first (plain) Binding request."""
        return self.responses[0].reflexive

    @property
    def rfc5780(self) -> bool:
        """Whether the server advertised an OTHER-ADDRESS (and stunclient probed further)."""
        return any(r.other is not None for r in self.responses)


_STUN_ADDRESS = re.compile(
    r"IPv[46]\. (Response origin|Other addr|UDP reflexive addr):(?: :)? (\S+):(\d+)\s*$"
)
_STUN_BLOCK = re.compile(r"RFC 5780 response (\d+)")
_STUN_ERROR = re.compile(r"The response is (an error \d+ \(.*\)|an unrecognized error|not .*)")


def parse_stunclient_output(
    output: str, *, argv: Sequence[str] = (), returncode: int | None = None
) -> StunClientReport:
    """Parse turnutils_stunclient's output; raise :class:`StunClientError` on an error answer or
    when no reflexive address was printed."""
    lines = output.splitlines()
    error = _last_match(_STUN_ERROR, lines)
    if error:
        raise StunClientError(
            f"the server answered: {error.group(0)}",
            output=output,
            argv=argv,
            returncode=returncode,
        )
    blocks: list[dict[str, TransportAddress]] = [{}]
    for line in lines:
        if _STUN_BLOCK.search(line):
            blocks.append({})
        elif match := _STUN_ADDRESS.search(line):
            blocks[-1][match.group(1)] = TransportAddress(match.group(2), int(match.group(3)))
    responses = tuple(
        StunResponse(
            reflexive=block["UDP reflexive addr"],
            origin=block.get("Response origin"),
            other=block.get("Other addr"),
        )
        for block in blocks
        if "UDP reflexive addr" in block
    )
    if not responses:
        raise StunClientError(
            "turnutils_stunclient printed no reflexive address",
            output=output,
            argv=argv,
            returncode=returncode,
        )
    return StunClientReport(
        responses=responses, output=output, argv=tuple(argv), returncode=returncode
    )


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
    _check_loopback(host)
    if local_address is not None:
        _check_loopback(local_address)
    argv = [_tool(STUNCLIENT, tool), "-p", str(port)]
    if rfc5780:
        argv.append("-f")
    if local_address is not None:
        argv += ["-L", local_address]
    argv.append(host)
    late = f"no Binding answer within {timeout} s (stunclient retries forever)"
    done = _run_tool(argv, timeout, StunClientError, late, lambda _: "turnutils_stunclient failed")
    return parse_stunclient_output(done.stdout, argv=argv, returncode=done.returncode)


# --------------------------------------------------------------------------------------------
# coturn's turnserver, as a known-good reference


@attrs.frozen(eq=False)
class CoturnServer(ClosesOnExit):
    """A running coturn turnserver on loopback (UDP and TCP on ``port``, TLS on ``tls_port``)."""

    hosts: tuple[str, ...]
    port: int
    tls_port: int | None
    realm: str
    config_path: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    argv: tuple[str, ...]

    @property
    def host(self) -> str:
        """The first listening address."""
        return self.hosts[0]

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.process.pid

    def log(self) -> str:
        """Everything turnserver logged so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Stop turnserver (SIGTERM by PID, SIGKILL if it lingers); safe to call twice."""
        _stop_process(self.process)

    close = stop


def make_self_signed_cert(directory: Path, common_name: str = "localhost") -> tuple[Path, Path]:
    """A self-signed certificate and key (PEM) for loopback, made the way turnd makes its own."""
    from turnd.tls import ensure_self_signed

    cert, key, _ = ensure_self_signed(directory, [common_name], ["127.0.0.1", "::1"])
    return cert, key


def turnserver_config(
    work_dir: Path,
    *,
    hosts: Sequence[str],
    port: int,
    realm: str,
    users: Mapping[str, str],
    secret: str | None,
    tls: tuple[Path, Path] | None,
    tls_port: int | None,
    allow_loopback_peers: bool,
    extra_config: Sequence[str] = (),
) -> str:
    """The text of a turnserver config for :func:`start_turnserver`."""
    lines = [f"listening-ip={h}" for h in hosts]
    lines += [f"relay-ip={h}" for h in hosts]
    lines += [
        f"listening-port={port}",
        f"realm={realm}",
        "no-cli",
        "no-dtls",
        f"userdb={work_dir / 'turndb'}",
        f"pidfile={work_dir / 'turnserver.pid'}",
        "log-file=stdout",
        "simple-log",
    ]
    if users:
        lines.append("lt-cred-mech")
        lines += [f"user={name}:{password}" for name, password in users.items()]
    if secret is not None:
        lines += ["use-auth-secret", f"static-auth-secret={secret}"]
    if allow_loopback_peers:
        lines.append("allow-loopback-peers")
    if tls is None:
        lines.append("no-tls")
    else:
        lines += [f"cert={tls[0]}", f"pkey={tls[1]}", f"tls-listening-port={tls_port}"]
    lines += list(extra_config)
    return "\n".join(lines) + "\n"


def _stun_binding_probe(host: str, port: int) -> bool:
    transaction = os.urandom(12)
    request = _STUN_HEADER.pack(STUN_BINDING_REQUEST, 0, STUN_MAGIC_COOKIE, transaction)

    def is_answer(data: bytes) -> bool:
        if len(data) < _STUN_HEADER.size:
            return False
        kind, _, cookie, tid = _STUN_HEADER.unpack_from(data)
        return bool(
            kind == STUN_BINDING_SUCCESS and cookie == STUN_MAGIC_COOKIE and tid == transaction
        )

    return _udp_answers(host, port, request, is_answer)


def start_turnserver(
    work_dir: Path,
    *,
    users: Mapping[str, str] | None = None,
    secret: str | None = None,
    realm: str = "turnd.test",
    hosts: Sequence[str] = ("127.0.0.1",),
    tls: bool = False,
    allow_loopback_peers: bool = True,
    extra_config: Sequence[str] = (),
    tool: str | None = None,
) -> CoturnServer:
    """Start coturn's turnserver on free loopback ports, configured in ``work_dir``.

    Long-term users (``users``) and/or a REST ``secret`` (``use-auth-secret``), a ``realm``,
    relays on the listening addresses, no CLI, no DTLS, TLS only with ``tls`` (a self-signed
    certificate is made in ``work_dir``). ``allow_loopback_peers`` is what lets uclient use a
    peer on 127.0.0.1/::1 at all. Returns once UDP answers a Binding request and every TCP (and
    TLS) listener accepts a connection.
    """
    hosts = tuple(_check_loopback(h) for h in hosts)
    if not users and secret is None:
        raise ValueError("give long-term users, a REST secret, or both")
    port = free_port_pair(hosts, tcp=True)
    cert = make_self_signed_cert(work_dir) if tls else None
    tls_port = None
    if tls:
        while tls_port is None or abs(tls_port - port) < 2:
            tls_port = free_port_pair(hosts, tcp=True)
    config_path = work_dir / "turnserver.conf"
    config_path.write_text(
        turnserver_config(
            work_dir,
            hosts=hosts,
            port=port,
            realm=realm,
            users=users or {},
            secret=secret,
            tls=cert,
            tls_port=tls_port,
            allow_loopback_peers=allow_loopback_peers,
            extra_config=extra_config,
        )
    )
    log_path = work_dir / "turnserver.log"
    argv = [_tool(TURNSERVER, tool), "-c", str(config_path)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    server = CoturnServer(
        hosts=hosts,
        port=port,
        tls_port=tls_port,
        realm=realm,
        config_path=config_path,
        log_path=log_path,
        process=process,
        argv=tuple(argv),
    )
    answers: list[Callable[[], bool]] = []
    for host in hosts:
        answers.append(functools.partial(_stun_binding_probe, host, port))
        answers += [functools.partial(_tcp_accepts, host, p) for p in (port, tls_port) if p]
    _wait_for(answers, process, "turnserver", server.log, argv, server.stop)
    return server


def assert_lossless(report: UclientReport, sessions: int, messages: int, length: int) -> None:
    """Every packet of every session came back, with every byte (uclient's exit code lies)."""
    expected = sessions * messages
    assert report.sent_packets == expected, report.describe()
    assert report.received_packets == expected, report.describe()
    assert report.lost_packets == 0, report.describe()
    assert report.send_dropped == 0, report.describe()
    assert report.sent_bytes == report.received_bytes == expected * length, report.describe()
