"""systemd service notifications (sd_notify), standard library only.

When systemd starts turnd as a ``Type=notify`` service it sets ``$NOTIFY_SOCKET`` to the path of
an ``AF_UNIX``/``SOCK_DGRAM`` socket (or to an abstract-namespace name written ``@name``). The
daemon tells the service manager about its state by sending newline-separated ``KEY=VALUE``
assignments there, one datagram per message (see sd_notify(3)):

- ``READY=1`` once the listeners are bound: ``systemctl start`` returns, and units ordered after
  turnd start, only then;
- ``RELOADING=1`` with ``MONOTONIC_USEC=...`` when a reload (SIGHUP) begins, then ``READY=1`` when
  it is over, whether the new configuration was taken or refused;
- ``STOPPING=1`` when a graceful shutdown begins;
- ``STATUS=...`` free text shown by ``systemctl status``.

Outside systemd (no ``$NOTIFY_SOCKET``), or when the socket cannot be reached, every function here
returns False and does nothing else: notifications are advisory and never stop the daemon.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

#: The environment variable systemd sets for notify-type services.
NOTIFY_SOCKET = "NOTIFY_SOCKET"
#: Upper bound on one send. systemd drains its notification socket promptly and the kernel queues
#: datagrams, so this is only reached when the service manager is stuck; it keeps a wedged manager
#: from stalling the event loop indefinitely.
SEND_TIMEOUT = 1.0


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (``KEY=VALUE`` lines) to the service manager; True if it was sent.

    ``environ`` defaults to :data:`os.environ`. Returns False, never raising, when
    ``$NOTIFY_SOCKET`` is unset or empty, is not a path or an ``@abstract`` name, or the datagram
    cannot be delivered.
    """
    env = os.environ if environ is None else environ
    address = env.get(NOTIFY_SOCKET, "")
    if address.startswith("@"):
        # Abstract namespace: sd_notify(3) writes the leading NUL byte as "@".
        target = "\0" + address[1:]
    elif address.startswith("/"):
        target = address
    else:
        # Unset, empty, or a form this module does not speak (e.g. systemd 254's "vsock:").
        return False
    try:
        payload = state.encode("utf-8")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(SEND_TIMEOUT)
            sent = sock.sendto(payload, target)
    except (OSError, ValueError):
        # OSError: no such socket, nobody listening, permission denied, path too long, timeout.
        # ValueError: a NUL byte inside a path; UnicodeEncodeError (a ValueError): lone surrogate.
        return False
    return sent == len(payload)


def _one_line(text: str) -> str:
    """``text`` on one line: a newline would start a new (forged) assignment."""
    return " ".join(text.splitlines())


def ready(status: str = "", *, environ: Mapping[str, str] | None = None) -> bool:
    """Tell systemd start-up (or a reload) is complete: ``READY=1`` and ``STATUS=status``."""
    state = "READY=1"
    if status:
        state += f"\nSTATUS={_one_line(status)}"
    return notify(state, environ)


def monotonic_usec() -> int:
    """``CLOCK_MONOTONIC`` in microseconds, the clock systemd reads ``MONOTONIC_USEC`` against."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def reloading(status: str = "", *, environ: Mapping[str, str] | None = None) -> bool:
    """Tell systemd a reload has begun: ``RELOADING=1`` and ``MONOTONIC_USEC=<now>``.

    systemd 253 and later require ``MONOTONIC_USEC`` with ``RELOADING=1`` for
    ``Type=notify-reload`` services (it tells a fresh reload from a stale message); older
    versions and ``Type=notify`` ignore it. Follow with :func:`ready` when the reload is over,
    also when it was refused, or systemd keeps the unit in the "reloading" state.
    """
    state = f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec()}"
    if status:
        state += f"\nSTATUS={_one_line(status)}"
    return notify(state, environ)


def stopping(status: str = "", *, environ: Mapping[str, str] | None = None) -> bool:
    """Tell systemd a graceful shutdown has begun: ``STOPPING=1``."""
    state = "STOPPING=1"
    if status:
        state += f"\nSTATUS={_one_line(status)}"
    return notify(state, environ)


def status(text: str, *, environ: Mapping[str, str] | None = None) -> bool:
    """Set the free-text status ``systemctl status turnd`` shows (``STATUS=text``)."""
    return notify(f"STATUS={_one_line(text)}", environ)
