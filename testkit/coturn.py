"""Drive coturn's client programs and read the numbers they print.

Theory of operation
-------------------
This module starts the peers and servers; :mod:`testkit.coturn_tools` finds and runs the
programs and :mod:`testkit.coturn_reports` reads what they print. Their public names are
re-exported here.

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
import os
import struct
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

import attrs

from testkit.coturn_reports import (
    NO_SAMPLE,
    CoturnToolError,
    StunClientError,
    StunClientReport,
    StunResponse,
    TransportAddress,
    UclientError,
    UclientReport,
    assert_lossless,
    parse_stunclient_output,
    parse_uclient_output,
    uclient_sessions,
)
from testkit.coturn_tools import (
    BIN_DIR_ENV,
    PEER,
    PORT_ATTEMPTS,
    PORT_RANGE,
    PROBE_INTERVAL,
    STARTUP_TIMEOUT,
    STUNCLIENT,
    STUNCLIENT_TIMEOUT,
    TURNSERVER,
    UCLIENT,
    UCLIENT_TIMEOUT,
    check_loopback,
    find_tool,
    free_port_pair,
    missing_tools,
    needs_tools,
    read_log,
    run_stunclient,
    run_uclient,
    skip_reason,
    stop_process,
    tcp_accepts,
    tool_path,
    uclient_argv,
    udp_answers,
    wait_for,
)
from testkit.links import ClosesOnExit

__all__ = [
    "BIN_DIR_ENV",
    "NO_SAMPLE",
    "PEER",
    "PORT_ATTEMPTS",
    "PORT_RANGE",
    "PROBE_INTERVAL",
    "STARTUP_TIMEOUT",
    "STUNCLIENT",
    "STUNCLIENT_TIMEOUT",
    "STUN_BINDING_REQUEST",
    "STUN_BINDING_SUCCESS",
    "STUN_MAGIC_COOKIE",
    "TURNSERVER",
    "UCLIENT",
    "UCLIENT_TIMEOUT",
    "CoturnServer",
    "CoturnToolError",
    "EchoPeer",
    "StunClientError",
    "StunClientReport",
    "StunResponse",
    "TransportAddress",
    "UclientError",
    "UclientReport",
    "assert_lossless",
    "find_tool",
    "free_port_pair",
    "make_self_signed_cert",
    "missing_tools",
    "needs_tools",
    "parse_stunclient_output",
    "parse_uclient_output",
    "run_stunclient",
    "run_uclient",
    "skip_reason",
    "start_peer",
    "start_turnserver",
    "turnserver_config",
    "uclient_argv",
    "uclient_sessions",
]

STUN_MAGIC_COOKIE = 0x2112A442
STUN_BINDING_REQUEST = 0x0001
STUN_BINDING_SUCCESS = 0x0101
_STUN_HEADER = struct.Struct("!HHI12s")


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
        return read_log(self._log)

    def stop(self) -> None:
        """Stop the peer (by PID) and release its log file; safe to call twice."""
        stop_process(self.process)
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
    hosts = tuple(check_loopback(h) for h in hosts)
    if not hosts:
        raise ValueError("start_peer needs at least one host")
    chosen = free_port_pair(hosts) if port is None else port
    argv = [tool_path(PEER, tool), "-p", str(chosen)]
    for host in hosts:
        argv += ["-L", host]
    log = tempfile.TemporaryFile()  # noqa: SIM115 - owned and closed by EchoPeer.stop()
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    peer = EchoPeer(hosts=hosts, port=chosen, process=process, argv=tuple(argv), log=log)
    probe = b"turnd-peer-probe"
    echoes = [
        functools.partial(udp_answers, h, p, probe, lambda data: data == probe)
        for h in hosts
        for p in (chosen, chosen + 1)
    ]
    wait_for(echoes, process, "turnutils_peer", peer.output, argv, peer.stop)
    return peer


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
        stop_process(self.process)

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

    return udp_answers(host, port, request, is_answer)


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
    hosts = tuple(check_loopback(h) for h in hosts)
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
    argv = [tool_path(TURNSERVER, tool), "-c", str(config_path)]
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
        answers += [functools.partial(tcp_accepts, host, p) for p in (port, tls_port) if p]
    wait_for(answers, process, "turnserver", server.log, argv, server.stop)
    return server
