"""A cluster test bed made of network namespaces (DESIGN.md "The cluster", last item).

Topology (every address is made here, inside namespaces made here)::

    client ns  10.77.100.2 ──┐                         ┌── 10.77.1.2  node 1 ns (service IP on lo)
                             │ 10.77.100.1   10.77.1.1 │
                            router ns (ip_forward, ECMP) ── 10.77.2.2  node 2 ns ...
                             │ 10.77.200.1   10.77.i.1 │
    peer ns    10.77.200.2 ──┘                         └── 10.77.i.2  node i ns

The router holds a multipath route to the service IP (/32) with one next hop per node link and
hashes flows on the 5-tuple (``fib_multipath_hash_policy=1``), the way an L4 ECMP router in
front of a cluster does. Every node holds the service IP on ``lo`` and has a default route via the
router, so it reaches the client, the peer and the other nodes' addresses (the backbone) through
it, and answers clients directly from the service IP; ``rp_filter`` is off in the router and the
nodes so those direct-return replies pass.

Namespace names are ``<prefix>-<pid>-<token>-<role>``: parallel runs do not collide, and a bed
whose creating process is gone (a killed run) is removed by the next ``build``/``destroy`` with
the same prefix. Every process started with ``popen`` is killed by its PID on ``destroy``, which
``atexit`` also runs.

Run ``python -m testkit.cluster_bed --hold`` (as root) to get a bed to poke at by hand.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import errno
import ipaddress
import os
import re
import secrets
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

import attrs

from forwarding.netsetup import ensure_service_ip_on_lo
from testkit.links import ClosesOnExit

DEFAULT_PREFIX = "turnd-tb"
DEFAULT_SERVICE_IP = "10.77.255.1"

#: Node i lives on 10.77.i.0/24; 100 and 200 are the client and peer links, so at most 99 nodes.
MAX_NODES = 99
CLIENT_NET = 100
PEER_NET = 200

#: Name of each namespace's interface towards the router.
UPLINK = "eth0"

#: How long a started process gets to exit after SIGTERM before it is sent SIGKILL.
STOP_GRACE_SECONDS = 3.0

#: Router and node settings: forward, hash flows on the 5-tuple, no reverse-path filtering (the
#: nodes' replies come from the service IP, which the router routes to several links at once).
#: Set before any link exists, so every interface inherits the ``default`` values.
ROUTER_SYSCTLS = (
    "net.ipv4.ip_forward=1",
    "net.ipv4.fib_multipath_hash_policy=1",
    "net.ipv4.conf.all.rp_filter=0",
    "net.ipv4.conf.default.rp_filter=0",
)
NODE_SYSCTLS = (
    "net.ipv4.conf.all.rp_filter=0",
    "net.ipv4.conf.default.rp_filter=0",
)

#: A UDP echo server that says who it is and who asked: replies ``<tag> <sender ip> <sender port>
#: <payload>`` from the address it is bound to, prints ``ready`` once bound, and exits when its
#: stdin closes (its parent went away).
ECHO_SCRIPT = """
import os, select, socket, sys
host, port, tag = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((host, port))
print("ready", flush=True)
while True:
    readable, _, _ = select.select([sock, 0], [], [])
    if 0 in readable and not os.read(0, 1):
        break
    if sock in readable:
        data, addr = sock.recvfrom(65535)
        sock.sendto(b"%s %s %d %s" % (tag, addr[0].encode(), addr[1], data), addr)
"""


@attrs.frozen
class NodeSpec:
    """One node of the bed: its namespace, its address (also its backbone address) and the
    router's address on the same link."""

    index: int
    netns: str
    address: str
    router_side: str


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _name_pattern(prefix: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(prefix)}-(\d+)-[0-9a-f]+-[a-z0-9]+$")


def list_namespaces() -> list[str]:
    """The names under ``/run/netns``."""
    try:
        return sorted(os.listdir("/run/netns"))
    except FileNotFoundError:
        return []


def remove_stale_namespaces(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Remove namespaces named ``<prefix>-<pid>-...`` whose creating process no longer exists.

    Returns the names removed. Processes still running inside them are left alone (they were not
    started by this process); the namespace disappears when they exit.
    """
    pattern = _name_pattern(prefix)
    removed = []
    for name in list_namespaces():
        match = pattern.match(name)
        if match and not _pid_alive(int(match.group(1))):
            _remove_namespace(name)
            removed.append(name)
    return removed


def _create_namespace(name: str) -> None:
    from pyroute2 import netns

    netns.create(name)


def _remove_namespace(name: str) -> None:
    from pyroute2 import netns

    with contextlib.suppress(FileNotFoundError):
        netns.remove(name)


@contextlib.contextmanager
def _ipr(name: str) -> Iterator[Any]:
    """pyroute2 ``IPRoute`` inside namespace ``name`` (which must exist: flags=0)."""
    from pyroute2 import IPRoute

    ipr = IPRoute(netns=name, flags=0)
    try:
        yield ipr
    finally:
        ipr.close()


def _sysctl(name: str, settings: Iterable[str]) -> None:
    subprocess.run(
        ["ip", "netns", "exec", name, "sysctl", "-q", "-w", *settings],
        check=True,
        timeout=10,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )


def _new_base(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{secrets.token_hex(3)}"


@contextlib.contextmanager
def scratch_namespace(prefix: str = DEFAULT_PREFIX) -> Iterator[str]:
    """A throwaway empty namespace (named like the bed's, so stale ones get cleaned), removed on
    exit."""
    name = f"{_new_base(prefix)}-x"
    remove_stale_namespaces(prefix)
    _create_namespace(name)
    try:
        yield name
    finally:
        _remove_namespace(name)


def wait_ready(proc: subprocess.Popen[str], timeout: float) -> None:
    """Wait until ``proc`` prints a line on its stdout; RuntimeError if it exits or stays silent."""
    assert proc.stdout is not None, "start the process with stdout=subprocess.PIPE"
    readable, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if readable else ""
    if not line:
        proc.poll()
        raise RuntimeError(
            f"{proc.args!r} did not get ready in {timeout} s (exit {proc.returncode})"
        )


class TestBed(ClosesOnExit):
    """Router, client, peer and node namespaces wired as the module docstring draws them."""

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self, nodes: int = 3, prefix: str = DEFAULT_PREFIX, service_ip: str = DEFAULT_SERVICE_IP
    ) -> None:
        if not 1 <= nodes <= MAX_NODES:
            raise ValueError(f"nodes must be 1..{MAX_NODES}, not {nodes}")
        if ipaddress.ip_address(service_ip).version != 4:
            raise ValueError("the test bed routes an IPv4 service IP")
        self.prefix = prefix
        self.service_ip = service_ip
        self._initial_nodes = nodes
        self._base = _new_base(prefix)
        self.router_ns = f"{self._base}-r"
        self.client_ns = f"{self._base}-c"
        self.client_address = f"10.77.{CLIENT_NET}.2"
        self.client_router_side = f"10.77.{CLIENT_NET}.1"
        self.peer_ns = f"{self._base}-p"
        self.peer_address = f"10.77.{PEER_NET}.2"
        self.peer_router_side = f"10.77.{PEER_NET}.1"
        self.nodes: list[NodeSpec] = []
        self.next_hops: tuple[int, ...] = ()
        self.build_seconds: float | None = None
        self._created: list[str] = []
        self._processes: list[subprocess.Popen[Any]] = []
        self._built = False

    # --- life cycle -------------------------------------------------------------------------

    def __enter__(self) -> TestBed:
        self.build()
        return self

    def build(self) -> None:
        """Create every namespace and link, and route the service IP over all nodes. On failure
        whatever was made is removed again before the error propagates."""
        if self._built:
            raise RuntimeError("this test bed is already built")
        started = time.monotonic()
        atexit.register(self.destroy)
        self._built = True
        try:
            remove_stale_namespaces(self.prefix)
            self._namespace(self.router_ns, ROUTER_SYSCTLS)
            for name, net in ((self.client_ns, CLIENT_NET), (self.peer_ns, PEER_NET)):
                self._namespace(name)
                self._link(name, f"r{net}", f"10.77.{net}.1", f"10.77.{net}.2")
            for _ in range(self._initial_nodes):
                self.add_node()
            self.set_next_hops(node.index for node in self.nodes)
        except BaseException:
            self.destroy()
            raise
        self.build_seconds = time.monotonic() - started

    def destroy(self) -> None:
        """Kill the processes started here (by PID), remove every namespace made here and any
        stale one of the same prefix. Safe to call again."""
        for proc in self._processes:
            _stop(proc)
        self._processes.clear()
        for name in reversed(self._created):
            _remove_namespace(name)
        self._created.clear()
        remove_stale_namespaces(self.prefix)
        atexit.unregister(self.destroy)

    close = destroy

    # --- topology ---------------------------------------------------------------------------

    @property
    def namespaces(self) -> list[str]:
        """Every namespace of the bed: router, client, peer, then the nodes."""
        return [self.router_ns, self.client_ns, self.peer_ns, *(n.netns for n in self.nodes)]

    def node(self, index: int) -> NodeSpec:
        """The node numbered ``index`` (1-based)."""
        for spec in self.nodes:
            if spec.index == index:
                return spec
        raise KeyError(f"no node {index} in this bed (nodes: {[n.index for n in self.nodes]})")

    def add_node(self) -> NodeSpec:
        """One more node namespace linked to the router, with the service IP on its lo; it is
        not a next hop of the service route until ``set_next_hops`` names it."""
        index = len(self.nodes) + 1
        if index > MAX_NODES:
            raise ValueError(f"at most {MAX_NODES} nodes")
        spec = NodeSpec(
            index=index,
            netns=f"{self._base}-n{index}",
            address=f"10.77.{index}.2",
            router_side=f"10.77.{index}.1",
        )
        self._namespace(spec.netns, NODE_SYSCTLS)
        self._link(spec.netns, f"n{index}", spec.router_side, spec.address)
        ensure_service_ip_on_lo(self.service_ip, netns=spec.netns)
        self.nodes.append(spec)
        return spec

    def set_next_hops(self, indices: Iterable[int]) -> None:
        """Make the router's route to the service IP an ECMP route over exactly these nodes'
        links (none: no route, the service IP is unreachable)."""
        chosen = tuple(sorted(set(indices)))
        specs = [self.node(index) for index in chosen]
        destination = f"{self.service_ip}/32"
        with _ipr(self.router_ns) as ipr:
            if not specs:
                try:
                    ipr.route("del", dst=destination)
                except Exception as error:
                    if getattr(error, "code", None) != errno.ESRCH:
                        raise
            else:
                hops = [
                    {"gateway": s.address, "oif": ipr.link_lookup(ifname=f"n{s.index}")[0]}
                    for s in specs
                ]
                ipr.route("replace", dst=destination, multipath=hops)
        self.next_hops = chosen

    def _namespace(self, name: str, sysctls: Iterable[str] = ()) -> None:
        _create_namespace(name)
        self._created.append(name)
        with _ipr(name) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        if sysctls:
            _sysctl(name, sysctls)

    def _link(self, name: str, router_ifname: str, router_side: str, address: str) -> None:
        """A veth from the router (``router_ifname``) to namespace ``name`` (``eth0``) with a
        /24 on each end and a default route in ``name`` via the router."""
        with _ipr(self.router_ns) as ipr:
            ipr.link(
                "add", ifname=router_ifname, kind="veth", peer={"ifname": UPLINK, "net_ns_fd": name}
            )
            index = ipr.link_lookup(ifname=router_ifname)[0]
            ipr.addr("add", index=index, address=router_side, prefixlen=24)
            ipr.link("set", index=index, state="up")
        with _ipr(name) as ipr:
            index = ipr.link_lookup(ifname=UPLINK)[0]
            ipr.addr("add", index=index, address=address, prefixlen=24)
            ipr.link("set", index=index, state="up")
            ipr.route("add", dst="0.0.0.0/0", gateway=router_side)

    # --- processes --------------------------------------------------------------------------

    def _check(self, netns: str) -> None:
        if netns not in self.namespaces:
            raise ValueError(f"{netns!r} is not a namespace of this bed: {self.namespaces}")

    def popen(self, netns: str, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside ``netns`` (``ip netns exec``, which execs it: the PID is the
        program's) in its own session; killed on ``destroy``."""
        self._check(netns)
        kwargs.setdefault("start_new_session", True)
        proc: subprocess.Popen[Any] = subprocess.Popen(
            ["ip", "netns", "exec", netns, *argv], **kwargs
        )
        self._processes.append(proc)
        return proc

    def run(
        self, netns: str, argv: list[str], timeout: float, **kwargs: Any
    ) -> subprocess.CompletedProcess[Any]:
        """Run ``argv`` inside ``netns`` to completion; killed and TimeoutExpired after
        ``timeout`` seconds."""
        self._check(netns)
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.run(["ip", "netns", "exec", netns, *argv], timeout=timeout, **kwargs)

    def stop(self, proc: subprocess.Popen[Any]) -> int | None:
        """Stop one process started with ``popen`` (SIGTERM, then SIGKILL); its exit status."""
        _stop(proc)
        with contextlib.suppress(ValueError):
            self._processes.remove(proc)
        return proc.returncode

    def udp_echo(
        self, netns: str, host: str, port: int, tag: str, timeout: float = 10.0
    ) -> subprocess.Popen[str]:
        """Start ``ECHO_SCRIPT`` in ``netns`` bound to ``host:port``, answering ``<tag> <sender
        ip> <sender port> <payload>``; returns once it is bound."""
        proc = self.popen(
            netns,
            [sys.executable, "-c", ECHO_SCRIPT, host, str(port), tag],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            wait_ready(proc, timeout)
        except BaseException:
            self.stop(proc)
            raise
        return proc

    # --- description ------------------------------------------------------------------------

    def describe(self) -> str:
        """The namespaces, addresses and a few commands, for people."""
        hops = ", ".join(str(i) for i in self.next_hops) or "none"
        lines = [
            f"service IP {self.service_ip} (on lo in every node; router ECMP next hops: {hops})",
            f"router  {self.router_ns}",
            f"client  {self.client_ns}  {self.client_address} (router {self.client_router_side})",
            f"peer    {self.peer_ns}  {self.peer_address} (router {self.peer_router_side})",
        ]
        lines += [
            f"node {n.index}  {n.netns}  {n.address} (router {n.router_side})" for n in self.nodes
        ]
        first = self.nodes[0].netns if self.nodes else self.router_ns
        lines += [
            "",
            "commands:",
            f"  ip netns exec {self.router_ns} ip route show {self.service_ip}",
            f"  ip netns exec {first} {sys.executable} -m turnd ...   # a node",
            f"  ip netns exec {self.client_ns} bash                   # a shell as the client",
        ]
        return "\n".join(lines)


def _stop(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL, to the process group our child leads, only while the child itself
    is still ours (not yet reaped): the group id cannot belong to anyone else then."""
    if proc.poll() is not None:
        return
    for sig, grace in ((signal.SIGTERM, STOP_GRACE_SECONDS), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):
            if os.getpgid(proc.pid) == proc.pid:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
        try:
            proc.wait(timeout=grace)
            break
        except subprocess.TimeoutExpired:
            continue
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def main(argv: list[str] | None = None) -> int:
    """``python -m testkit.cluster_bed [--nodes N] [--hold]``."""
    parser = argparse.ArgumentParser(
        prog="python -m testkit.cluster_bed", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--nodes", type=int, default=3, help="node namespaces (default 3)")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help="namespace name prefix")
    parser.add_argument("--service-ip", default=DEFAULT_SERVICE_IP, help="the service IP")
    parser.add_argument("--hold", action="store_true", help="keep the bed until Ctrl-C")
    args = parser.parse_args(argv)

    main_pid = os.getpid()

    def terminate(signum: int, frame: object) -> None:
        if os.getpid() != main_pid:  # a pyroute2 helper child being stopped: just die
            os._exit(128 + signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    bed = TestBed(nodes=args.nodes, prefix=args.prefix, service_ip=args.service_ip)
    try:
        bed.build()
        print(bed.describe())
        print(f"\nbuilt in {bed.build_seconds:.2f} s")
        if args.hold:
            print("holding; Ctrl-C destroys the bed", flush=True)
            while True:
                signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        started = time.monotonic()
        bed.destroy()
        print(f"destroyed in {time.monotonic() - started:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
