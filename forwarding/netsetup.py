"""The service IP on ``lo`` (DESIGN.md "The cluster"): every node holds it and sources from it.

Each node of a cluster answers clients directly from the shared service address (direct server
return), so the address must be local on every node without being announced on any link: it
lives on the loopback interface as a host address (IPv4 /32, IPv6 /128). The kernel already
treats all of 127.0.0.0/8 as local; a non-loopback /32 on ``lo`` gets local delivery the same way
and is never answered for in ARP on other links (the router's ECMP route decides which node gets
a flow, not ARP).

The functions here talk netlink through pyroute2's blocking ``IPRoute``. That API refuses to run
on a thread whose asyncio loop is running, so the daemon calls them from a worker thread. Each
takes an optional ``netns`` (a name under ``/run/netns``) so tests work inside throwaway network
namespaces and never touch the host's ``lo``; a missing namespace raises ``FileNotFoundError``
rather than being created.

Changing addresses needs CAP_NET_ADMIN in the namespace's owning user namespace; without it the
functions raise ``PermissionError`` naming the capability.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

LOOPBACK = "lo"

#: Netlink errors that mean "not allowed", turned into PermissionError.
_DENIED = frozenset({errno.EPERM, errno.EACCES})

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _parse(address: str) -> IPAddress:
    """The address as an ``ipaddress`` value; ValueError for anything that is not one IP."""
    try:
        return ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"not an IP address: {address!r}") from None


def _host_prefix(ip: IPAddress) -> int:
    return 32 if ip.version == 4 else 128


def _family(ip: IPAddress) -> int:
    return socket.AF_INET if ip.version == 4 else socket.AF_INET6


def _where(netns: str | None) -> str:
    return "this network namespace" if netns is None else f"network namespace {netns!r}"


@contextmanager
def _ipr(netns: str | None) -> Iterator[Any]:
    """A pyroute2 ``IPRoute`` in the current namespace, or in ``netns`` (never creating it)."""
    from pyroute2 import IPRoute  # imported here: the package works without pyroute2

    if netns is None:
        ipr = IPRoute()
    else:
        if not os.path.exists(os.path.join("/run/netns", netns)):
            raise FileNotFoundError(f"no network namespace named {netns!r} in /run/netns")
        ipr = IPRoute(netns=netns, flags=0)  # flags=0: do not create it if it is missing
    try:
        yield ipr
    finally:
        ipr.close()


def _denied(error: Exception, action: str, address: str, netns: str | None) -> PermissionError:
    return PermissionError(
        error.args[0] if error.args else errno.EPERM,
        f"cannot {action} {address} on {LOOPBACK} in {_where(netns)}: "
        "changing addresses needs CAP_NET_ADMIN (run as root, or grant the service "
        "AmbientCapabilities=CAP_NET_ADMIN)",
    )


def _raced(error: Exception, done: int, action: str, address: str, netns: str | None) -> bool:
    """Whether a failed netlink ``action`` failed with ``done`` (someone else did it first).
    A refusal for want of privilege raises PermissionError; anything else is False."""
    code = _netlink_code(error)
    if code in _DENIED:
        raise _denied(error, action, address, netns) from error
    return code == done


def _netlink_code(error: Exception) -> int | None:
    from pyroute2.netlink.exceptions import NetlinkError

    if isinstance(error, NetlinkError):
        return int(error.code)
    return None


def _loopback_index(ipr: Any, netns: str | None) -> int:
    found = ipr.link_lookup(ifname=LOOPBACK)
    if not found:
        raise OSError(errno.ENODEV, f"no {LOOPBACK} interface in {_where(netns)}")
    return int(found[0])


def _on_interface(ipr: Any, ip: IPAddress, index: int) -> bool:
    for message in ipr.get_addr(family=_family(ip), index=index):
        held = message.get_attr("IFA_LOCAL") or message.get_attr("IFA_ADDRESS")
        if held is not None and ipaddress.ip_address(held) == ip:
            return True
    return False


def ensure_service_ip_on_lo(address: str, *, netns: str | None = None) -> bool:
    """Put ``address`` on ``lo`` as a host address (/32 or /128) unless it is there already.

    Returns True if it was added, False if ``lo`` already held it (with any prefix length). Also
    brings ``lo`` up if it is down (only in a fresh namespace): a down ``lo`` delivers nothing.
    Raises PermissionError without CAP_NET_ADMIN.
    """
    ip = _parse(address)
    with _ipr(netns) as ipr:
        index = _loopback_index(ipr, netns)
        try:
            if not ipr.get_links(index)[0]["flags"] & 1:  # IFF_UP
                ipr.link("set", index=index, state="up")
            if _on_interface(ipr, ip, index):
                return False
            ipr.addr("add", index=index, address=str(ip), prefixlen=_host_prefix(ip))
        except Exception as error:
            if _raced(error, errno.EEXIST, "add", str(ip), netns):
                return False  # added by someone else since we looked
            raise
        return True
