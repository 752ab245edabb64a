"""The kernel fast path: established UDP channels relayed by an eBPF program at tc ingress,
while userspace keeps everything else (DESIGN.md "Data plane and scale").

* ``relay.bpf.c``: the program; ``build``: compiles it; ``libbpf``: loads and attaches it;
  ``maps``: its map layouts; ``kernel.KernelRoutes``: the core's route cache in its maps.
* :class:`FastPath` here: the program loaded and attached to the interfaces that carry the
  service's addresses, or the one reason it is not. The core decides what is relayed
  (turnd.core.routes); this package only carries it out and reads the counters back.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from turnd.config_sections import FastpathConfig
from turnd.fastpath.kernel import KernelRoutes
from turnd.fastpath.libbpf import PROGRAM, BpfError, BpfObject, attach_tcx_ingress
from turnd.fastpath.maps import ROUTE_LOCAL

#: The program's source and the object turnd/fastpath/build.py compiles from it.
SOURCE = Path(__file__).with_name("relay.bpf.c")
OBJECT = Path(__file__).with_name("relay.bpf.o")
#: A source this much newer than the object was edited after the build (an install writes
#: both within the same moment, in either order).
STALE_AFTER = 1.0
#: How an operator builds it (build.py runs on a bare python3: scripts/run and scripts/test do).
BUILD_COMMAND = "python3 -m turnd.fastpath.build (Debian packages clang, libbpf-dev)"
#: rtm_type of a route to this host (RTN_LOCAL, include/uapi/linux/rtnetlink.h).
RTN_LOCAL = 2
#: IFF_UP and IFF_LOOPBACK (include/uapi/linux/if.h).
IFF_UP = 0x1
IFF_LOOPBACK = 0x8


_Result = TypeVar("_Result")


class FastPathUnavailable(Exception):
    """The fast path cannot run here; the message says exactly why and what to do."""


class FastPath:
    """The relay program attached to interfaces, and its route cache."""

    def __init__(self, config: FastpathConfig, addresses: Iterable[str]) -> None:
        """Load the program and attach it; FastPathUnavailable says why it cannot be."""
        if not OBJECT.exists():
            raise FastPathUnavailable(
                f"the compiled program {OBJECT} is missing: build it with {BUILD_COMMAND}"
            )
        if SOURCE.exists() and SOURCE.stat().st_mtime > OBJECT.stat().st_mtime + STALE_AFTER:
            raise FastPathUnavailable(
                f"{OBJECT} is older than {SOURCE.name}: rebuild it with {BUILD_COMMAND}"
            )
        # pyroute2's blocking API refuses to run on a thread whose asyncio loop runs (and turnd
        # starts this from its loop): netlink is asked from a thread of its own, which keeps
        # the namespace it was made in.
        self._netlink = concurrent.futures.ThreadPoolExecutor(1, "turnd-fastpath-netlink")
        self._ipr: Any = self._ask(_open_netlink)
        self.links: dict[str, int] = {}
        self._obj: BpfObject | None = None
        try:
            names = self._interfaces(config, list(addresses))
            self._obj = BpfObject(str(OBJECT), {"c2p": config.max_routes, "p2c": config.max_routes})
            program = self._obj.program_fd(PROGRAM)
            for name, index in names.items():
                self.links[name] = attach_tcx_ingress(program, index)
            self.routes = KernelRoutes(self._obj, self.resolve, config.max_routes)
        except BpfError as exc:
            self.close()
            raise FastPathUnavailable(_advice(exc)) from exc
        except BaseException:
            self.close()
            raise

    def _interfaces(self, config: FastpathConfig, addresses: list[str]) -> dict[str, int]:
        """Interface name -> index: the configured ones, else those carrying ``addresses``."""
        links = {link.get_attr("IFLA_IFNAME"): link for link in self._ask(self._ipr.get_links)}
        if config.interfaces:
            missing = [name for name in config.interfaces if name not in links]
            if missing:
                raise FastPathUnavailable(f"fastpath.interfaces: no interface {', '.join(missing)}")
            return {name: links[name]["index"] for name in config.interfaces}
        every_up = {name: link["index"] for name, link in links.items() if link["flags"] & IFF_UP}
        if any(ipaddress.ip_address(a).is_unspecified for a in addresses):
            return every_up
        wanted = {ipaddress.ip_address(a) for a in addresses}
        carriers = [
            (addr["index"], ipaddress.ip_address(addr.get_attr("IFA_ADDRESS")))
            for addr in self._ask(self._ipr.get_addr)
            if ipaddress.ip_address(addr.get_attr("IFA_ADDRESS")) in wanted
        ]
        loopbacks = {link["index"] for link in links.values() if link["flags"] & IFF_LOOPBACK}
        if any(index in loopbacks and not ip.is_loopback for index, ip in carriers):
            # An address held on lo that is not a loopback one (a cluster's anycast service
            # IP): its traffic comes in on whichever interface the router chose.
            return every_up
        indexes = {index for index, _ in carriers}
        found = {name: link["index"] for name, link in links.items() if link["index"] in indexes}
        if not found:
            raise FastPathUnavailable(
                f"no interface carries {', '.join(sorted(addresses))}: set fastpath.interfaces"
            )
        return found

    def resolve(self, host: str) -> tuple[int, str | None]:
        """Where the kernel sends to ``host``: (egress interface, or ROUTE_LOCAL for this
        host; the source address it would pick)."""
        found = self._ask(lambda: self._ipr.route("get", dst=host))
        if not found:
            raise LookupError(f"no route to {host}")
        route = found[0]
        source = route.get_attr("RTA_PREFSRC")
        if route["type"] == RTN_LOCAL:
            return ROUTE_LOCAL, source or host
        oif = route.get_attr("RTA_OIF")
        if oif is None:
            raise LookupError(f"no interface for {host}")
        return int(oif), source

    def status(self) -> dict[str, Any]:
        """For turnctl status and the metrics: where it runs, what it holds and relayed."""
        counters = self.routes.stats()
        return {
            "active": True,
            "interfaces": sorted(self.links),
            "routes": len(self.routes.entries),
            "packets_to_peer": counters["to_peer"],
            "packets_to_client": counters["to_client"],
            "dropped_rate": counters["dropped_rate"],
            "errors": counters["errors"],
            "passed_mtu": counters["passed_mtu"],
            "install_failures": dict(self.routes.failures),
            "rerouted": self.routes.rerouted,
        }

    def close(self) -> None:
        """Detach from every interface and free the maps (the kernel drops the program)."""
        for fd in self.links.values():
            os.close(fd)
        self.links = {}
        if self._obj is not None:
            self._obj.close()
            self._obj = None
        self._ask(self._ipr.close)
        self._netlink.shutdown()

    def _ask(self, call: Callable[[], _Result]) -> _Result:
        """Run a netlink ``call`` on the netlink thread and wait for it (a few microseconds)."""
        return self._netlink.submit(call).result()


def _open_netlink() -> Any:
    """A pyroute2 IPRoute (imported here: only the fast path needs it)."""
    from pyroute2 import IPRoute

    return IPRoute()


def _advice(exc: BpfError) -> str:
    """What a failed load or attach means for an operator."""
    import errno

    if exc.errno == errno.EPERM:
        return f"{exc}: turnd needs CAP_BPF and CAP_NET_ADMIN (or root) for the fast path"
    if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP) and "attach" in str(exc):
        return f"{exc}: the kernel has no TCX (Linux 6.6 or newer is needed)"
    return str(exc)


def open_fastpath(config: FastpathConfig, addresses: Iterable[str]) -> FastPath | None:
    """The fast path as ``config.mode`` asks: None when off, or (auto) when it cannot run here,
    with one log line saying why; in mode "on" FastPathUnavailable stops the start."""
    import logging

    from turnd.config_values import FastpathMode
    from turnd.logs import event

    if config.mode is FastpathMode.OFF:
        event(logging.INFO, "fastpath.off", "fastpath.mode is off: UDP channels relay in userspace")
        return None
    try:
        fastpath = FastPath(config, addresses)
    except FastPathUnavailable as exc:
        if config.mode is FastpathMode.ON:
            raise
        event(logging.WARNING, "fastpath.unavailable", f"{exc}; UDP channels relay in userspace")
        return None
    event(
        logging.INFO,
        "fastpath.active",
        "established UDP channels relay in the kernel",
        interfaces=",".join(sorted(fastpath.links)),
    )
    return fastpath
