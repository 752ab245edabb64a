"""What coturn's client programs print, read into values: uclient's summary, stunclient's answers.

The output format and the reason for taking the last occurrence of a line are in
:mod:`testkit.coturn`'s module docstring; :class:`CoturnToolError` and its two kinds carry the
whole output so that a failing test can show it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import attrs

#: uclient prints UINT32_MAX as the minimum delay/jitter when no packet came back.
NO_SAMPLE = 0xFFFFFFFF


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


def _format_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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


def output_problems(lines: Sequence[str]) -> tuple[str, ...]:
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
        problems = output_problems(lines)
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
        problems=output_problems(lines),
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


def assert_lossless(report: UclientReport, sessions: int, messages: int, length: int) -> None:
    """Every packet of every session came back, with every byte (uclient's exit code lies)."""
    expected = sessions * messages
    assert report.sent_packets == expected, report.describe()
    assert report.received_packets == expected, report.describe()
    assert report.lost_packets == 0, report.describe()
    assert report.send_dropped == 0, report.describe()
    assert report.sent_bytes == report.received_bytes == expected * length, report.describe()
