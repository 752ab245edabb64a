"""turnd, turnd with its kernel fast path, and coturn on loopback: the same loads, one server
after the other, one table.

    python -m bench.compare [--quick] [--only METRIC ...] [--json PATH] [--seconds S] ...

Theory of operation
-------------------
Each server is started with the same configuration: realm ``turnd.test``, the long-term user
alice, loopback peers allowed, UDP, TCP and TLS listeners on 127.0.0.1 (TLS with a self-signed
certificate), relays on 127.0.0.1, and coturn held to one relay thread (``relay-threads``; turnd
is one process with one event loop). turnd runs with ``[fastpath] mode = "off"``, and again as
"turnd+fastpath" with ``mode = "on"`` under the UDP channel loads only (cpu's UDP channels,
uclient, rate, rtt; "n/a" elsewhere). Every selected load runs against each server in turn; a
fresh instance of each serves the memory load. Server CPU is utime + stime of the whole process
(every thread) from /proc/PID/stat, in clock ticks; memory is VmRSS from /proc/PID/status.

CPU per relayed packet is also given as (a) the process plus the run_time_ns of its BPF
program (kernel.bpf_stats_enabled is 1 for the run), (b) the host's busy CPU from /proc/stat less
the load generator's and the echo peer's, (b') that less other user processes' too, and (c) for
UDP channels the host's CPU over the same round trips sent straight to the echo peer: with the
fast path the relaying is done in softirq context, charged to whoever sent the packet.

The loads, all driven from this process with raw codec-based clients toward one echo peer
(coturn's ``turnutils_peer`` when installed, else a small Python echo process):

* ``cpu``: server CPU per relayed packet for UDP channels, UDP Send indications, TCP and TLS
  (channels over the stream, padded): ``--packets`` round trips with ``--window`` in flight;
  each echoed packet crosses the relay twice.
* ``uclient``: the same figure with coturn's ``turnutils_uclient`` (UDP channels) as the load, a
  cross-check by a client nobody here wrote; its CPU includes allocation and idle time.
* ``rate``: the highest paced packet rate with at most 0.1 % loss, UDP channels: the rate doubles
  from ``--rate-start`` until a step loses more, then bisects. A step the generator could not keep
  up with (paced below 95 % of its target, or most of the loss at the client's own sockets, read
  from /proc/net/udp) ends the search: the figure is then a floor, and says so.
* ``rtt``: round trips through the relay against round trips straight to the echo peer, one in
  flight, interleaved; the added latency is the difference of the percentiles.
* ``binding``: unauthenticated STUN Binding requests over UDP, windowed, answers per second.
* ``allocations``: fresh client sockets, each 401 -> authenticated Allocate -> Refresh(0),
  completed allocations per second.
* ``rss``: (RSS with N idle allocations - RSS before) / N, for each N of ``--allocations``, on
  a fresh server after a warm-up. More than 16384 allocations do not fit one relay address's
  default port range, so both servers then get a wider one; a level the servers' open-file limit
  cannot hold is measured at the most that fits, and the output says so.

Allocation clients each bind an address of their own on 127.0.0.2 and up, never reusing a
5-tuple in a run (so their ports never meet the relay ports on 127.0.0.1, and no server sees a
deleted allocation's 5-tuple again), and close their socket once the exchange is done: an idle
UDP allocation is server state the client's socket is not needed for.

Figures only, no thresholds. Where this process is the bottleneck the output says so.
"""

# The package, one concern per module:
#   servers  turnd and coturn with equivalent configuration, and the UDP echo peer
#   clients  raw codec-based TURN clients: links over UDP, TCP and TLS, sessions on them
#   traffic  the load loops: windowed pump, paced sender, allocations from fresh sockets
#   loads    cpu, uclient, rate, rtt, binding, allocations against one running server
#   rss      the memory load, on a fresh server of its own
#   procfs   /proc readers and the CPU meter; stats: percentiles and ratios
#   report   the table's rows, the table, its explanation, the JSON file
#   options  the flags; cli: main, one server kind after the other
# Names other code imports from ``bench.compare`` are re-exported here.

from __future__ import annotations

from bench.compare.cli import main, measure_server
from bench.compare.clients import (
    CLIENT_ADDRESSES,
    Link,
    Session,
    StreamLink,
    UdpLink,
    client_addresses,
    wait_frames,
)
from bench.compare.loads import MEASURES, TRANSPORTS
from bench.compare.options import METRICS, Options, parse_options
from bench.compare.procfs import (
    CLK_TCK,
    Meter,
    cpu_seconds,
    open_files,
    parse_udp_drops,
    rss_bytes,
    thread_names,
    udp_drops,
)
from bench.compare.report import (
    Row,
    build_rows,
    clean_json,
    default_json_path,
    explain,
    format_number,
    format_table,
    spread,
    table_entry,
    write_json,
)
from bench.compare.rss import WIDE_PORT_RANGE, measure_rss, rss_port_range
from bench.compare.servers import (
    DEFAULT_PORT_RANGE,
    SERVERS,
    EchoPeer,
    Server,
    start_echo_peer,
)
from bench.compare.stats import median_of, per, percentile, ratio

__all__ = [
    "CLIENT_ADDRESSES",
    "CLK_TCK",
    "DEFAULT_PORT_RANGE",
    "MEASURES",
    "METRICS",
    "SERVERS",
    "TRANSPORTS",
    "WIDE_PORT_RANGE",
    "EchoPeer",
    "Link",
    "Meter",
    "Options",
    "Row",
    "Server",
    "Session",
    "StreamLink",
    "UdpLink",
    "build_rows",
    "clean_json",
    "client_addresses",
    "cpu_seconds",
    "default_json_path",
    "explain",
    "format_number",
    "format_table",
    "main",
    "measure_rss",
    "measure_server",
    "median_of",
    "open_files",
    "parse_options",
    "parse_udp_drops",
    "per",
    "percentile",
    "ratio",
    "rss_bytes",
    "rss_port_range",
    "spread",
    "start_echo_peer",
    "table_entry",
    "thread_names",
    "udp_drops",
    "wait_frames",
    "write_json",
]
