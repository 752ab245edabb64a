"""Three network namespaces for the kernel fast path: a client, turnd's host, a peer.

    client (10.77.1.2, fd77:1::2) --veth-- turnd (10.77.1.1, fd77:1::1 | 10.77.2.1, fd77:2::1)
                                           --veth-- peer (10.77.2.2, fd77:2::2)

Sockets are made inside a namespace by entering it (setns) for the call, so one test process
holds all three ends. Transmit checksum offload can be turned off per side (ethtool), so that a
checksum the program gets wrong is dropped by the receiver instead of trusted as offloaded.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator

import attrs

CLONE_NEWNET = 0x40000000
PREFIX = f"tfp{os.getpid()}"


def unavailable() -> str | None:
    """Why the namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "not root (network namespaces and BPF need root)"
    for tool in ("ip", "ethtool"):
        if shutil.which(tool) is None:
            return (
                f"{tool} is not installed (Debian package {'iproute2' if tool == 'ip' else tool})"
            )
    return None


def run(*args: str) -> None:
    """Run a command; raise with what it said when it fails."""
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {done.stderr.strip()}")


@attrs.define
class Topology:
    """The three namespaces and their addresses for one family."""

    client: str
    turnd: str
    peer: str
    v6: bool

    @property
    def addresses(self) -> dict[str, str]:
        """Role -> address: client, listener (turnd's client side), relay, peer."""
        if self.v6:
            return {
                "client": "fd77:1::2",
                "listener": "fd77:1::1",
                "relay": "fd77:2::1",
                "peer": "fd77:2::2",
            }
        return {
            "client": "10.77.1.2",
            "listener": "10.77.1.1",
            "relay": "10.77.2.1",
            "peer": "10.77.2.2",
        }

    def socket(self, namespace: str, host: str) -> socket.socket:
        """A UDP socket bound to ``host`` (port 0) inside ``namespace``."""
        with inside(namespace):
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.bind((host, 0))
        sock.settimeout(1.0)
        return sock

    def offload(self, senders: bool, turnd: bool) -> None:
        """Transmit checksum offload on the client's and peer's veth, and on turnd's two."""
        for namespace, device, on in (
            (self.client, "c0", senders),
            (self.peer, "p0", senders),
            (self.turnd, "tc0", turnd),
            (self.turnd, "tp0", turnd),
        ):
            run(
                "ip",
                "netns",
                "exec",
                namespace,
                "ethtool",
                "-K",
                device,
                "tx",
                "on" if on else "off",
            )


@contextlib.contextmanager
def inside(namespace: str) -> Iterator[None]:
    """Run the block in ``namespace``, then return to this process's own."""
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/var/run/netns/{namespace}", os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {namespace}")
        yield
    finally:
        libc.setns(own, CLONE_NEWNET)
        os.close(own)
        os.close(target)


@contextlib.contextmanager
def topology() -> Iterator[tuple[Topology, Topology]]:
    """The namespaces, deleted on the way out; the IPv4 and the IPv6 view of them."""
    names = [f"{PREFIX}{role}" for role in ("c", "t", "p")]
    client, turnd, peer = names
    try:
        for name in names:
            run("ip", "netns", "add", name)
            run("ip", "-n", name, "link", "set", "lo", "up")
        for near, far, outer, inner in ((client, turnd, "c0", "tc0"), (peer, turnd, "p0", "tp0")):
            run(
                "ip",
                "link",
                "add",
                f"{PREFIX}{outer}",
                "type",
                "veth",
                "peer",
                "name",
                f"{PREFIX}{inner}",
            )
            run("ip", "link", "set", f"{PREFIX}{outer}", "netns", near, "name", outer)
            run("ip", "link", "set", f"{PREFIX}{inner}", "netns", far, "name", inner)
        plan = (
            (client, "c0", "10.77.1.2/24", "fd77:1::2/64"),
            (turnd, "tc0", "10.77.1.1/24", "fd77:1::1/64"),
            (turnd, "tp0", "10.77.2.1/24", "fd77:2::1/64"),
            (peer, "p0", "10.77.2.2/24", "fd77:2::2/64"),
        )
        for name, device, v4, v6 in plan:
            run("ip", "-n", name, "addr", "add", v4, "dev", device)
            run("ip", "-n", name, "addr", "add", v6, "dev", device, "nodad")
            run("ip", "-n", name, "link", "set", device, "up")
        for name, v4, v6 in ((client, "10.77.1.1", "fd77:1::1"), (peer, "10.77.2.1", "fd77:2::1")):
            run("ip", "-n", name, "route", "add", "default", "via", v4)
            run("ip", "-n", name, "-6", "route", "add", "default", "via", v6)
        yield Topology(client, turnd, peer, False), Topology(client, turnd, peer, True)
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
