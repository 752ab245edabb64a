"""A private network namespace with nothing but loopback, for runs that must not touch a network.

The interop matrix runs turnd, a browser, Node.js and coturn's clients together. Inside a fresh
namespace whose only interface is ``lo`` none of them can send a packet anywhere else, whatever
they try in the background, and their ports cannot collide with anything outside. Making one
needs root and ``ip`` (iproute2); :func:`unavailable` says why not when that is missing, and
callers then run on the host's loopback instead.

The namespace is named after this process and deleted on the way out, processes and all: ``ip
netns del`` only removes the name, so :func:`private_namespace` first stops (by PID) whatever we
left running inside it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress

#: Set in the environment of a command run inside the namespace, so it does not nest another.
INSIDE_ENV = "TURND_INTEROP_NETNS"

#: Prefix of the namespaces made here (``ip netns list`` shows leftovers of killed runs).
PREFIX = "turnd-interop"


def unavailable() -> str | None:
    """Why a namespace cannot be made here, or None when it can."""
    if os.environ.get(INSIDE_ENV):
        return f"already inside network namespace {os.environ[INSIDE_ENV]}"
    if os.geteuid() != 0:
        return "not root (ip netns needs root)"
    if shutil.which("ip") is None:
        return "ip (Debian package iproute2) is not installed"
    return None


class NamespaceError(RuntimeError):
    """``ip`` refused to make or set up the namespace; the message carries what it said."""


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise NamespaceError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")


def _stop_leftovers(name: str) -> None:
    done = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
    for pid in done.stdout.split():
        with suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


@contextmanager
def private_namespace() -> Iterator[str]:
    """Make a namespace with ``lo`` up (127.0.0.1 and ::1), yield its name, then delete it.

    Raises :class:`NamespaceError` before yielding when it cannot be made; a failure to delete
    it afterwards is only reported on stderr (the run inside has already ended).
    """
    name = f"{PREFIX}-{os.getpid()}"
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "set", "lo", "up")
    except NamespaceError:
        _ip("netns", "del", name)
        raise
    try:
        yield name
    finally:
        _stop_leftovers(name)
        try:
            _ip("netns", "del", name)
        except NamespaceError as exc:
            print(f"warning: {exc}", file=sys.stderr)


def run_inside(name: str, argv: Sequence[str]) -> int:
    """Run ``argv`` inside namespace ``name`` (stdout and stderr shared) and return its status."""
    env = {**os.environ, INSIDE_ENV: name}
    return subprocess.run(["ip", "netns", "exec", name, *argv], env=env, check=False).returncode
