"""The command line's flags and the ``Options`` every load reads."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs

from bench.compare.servers import SERVERS

#: The loads ``--only`` chooses from; all of them by default.
METRICS = ("cpu", "uclient", "rate", "rtt", "binding", "allocations", "rss")


@attrs.frozen
class Options:
    """What every load reads, from the flags (``parse_options``)."""

    quick: bool
    seconds: float
    packets: int
    size: int
    window: int
    clients: int
    samples: int
    allocations: tuple[int, ...]
    rate_start: int
    bisect_steps: int
    uclient_clients: int
    uclient_messages: int
    coturn_relay_threads: int
    rss_port_range: tuple[int, int] | None
    rounds: int = 1
    #: turnd's [server] workers for this pass (coturn gets as many relay threads, unless
    #: --coturn-relay-threads says otherwise).
    workers: int = 1
    #: The worker counts to measure, one pass each (``--workers N``: 1 and N).
    passes: tuple[int, ...] = (1,)
    #: --coturn-relay-threads as given (None: as many as turnd's workers).
    coturn_threads_given: int | None = None

    def threads(self, kind: str) -> int:
        """The processes (turnd) or relay threads (coturn) ``kind`` runs with in this pass."""
        if kind == "coturn" and self.coturn_threads_given is not None:
            return self.coturn_threads_given
        return self.workers


def parse_options(
    argv: Sequence[str] | None = None,
) -> tuple[Options, list[str], list[str], Path | None]:
    """Options, metrics, servers and the JSON path from the command line."""
    from bench import compare  # its docstring, the theory of operation, is the --help text

    parser = argparse.ArgumentParser(
        # The name the usage line showed when this was one module, bench/compare.py.
        prog="compare.py",
        description=compare.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="small loads: under two minutes")
    parser.add_argument("--seconds", type=float, help="each timed step (default 3, quick 1)")
    parser.add_argument("--packets", type=int, help="round trips per CPU load (60000, quick 15000)")
    parser.add_argument("--size", type=int, default=200, help="payload bytes (default 200)")
    parser.add_argument("--window", type=int, default=64, help="requests/packets in flight")
    parser.add_argument("--clients", type=int, default=4, help="allocations per relay load")
    parser.add_argument("--samples", type=int, help="latency samples (5000, quick 1000)")
    parser.add_argument(
        "--allocations", help="comma-separated RSS levels (default 1000,10000,20000; quick 1000)"
    )
    parser.add_argument("--rate-start", type=int, default=2000, help="first paced rate, pkt/s")
    parser.add_argument("--bisect-steps", type=int, help="bisection steps (4, quick 2)")
    parser.add_argument(
        "--coturn-relay-threads", type=int, help="default: as many as turnd's workers (1)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="also measure turnd with [server] workers = N and coturn with N relay threads: "
        "a pass at 1 and one at N, and the scaling between them (default 1: one pass)",
    )
    parser.add_argument("--rss-port-range", help="LOW-HIGH relay ports for the RSS load")
    parser.add_argument(
        "--only",
        action="append",
        type=_names(METRICS),
        help=f"measure only these, comma-separated or repeated: {','.join(METRICS)}",
    )
    parser.add_argument(
        "--server",
        action="append",
        type=_names((*SERVERS, "both", "all")),
        help=f"measure only these servers, comma-separated or repeated: {','.join(SERVERS)} "
        '(default all; "both" is all too)',
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run everything this many times, the servers alternating; the table shows medians",
    )
    parser.add_argument("--json", type=Path, help="results file (default bench/results/...)")
    args = parser.parse_args(argv)
    quick = args.quick
    levels = args.allocations or ("1000" if quick else "1000,10000,20000")
    port_range = None
    if args.rss_port_range:
        low, high = (int(p) for p in args.rss_port_range.split("-"))
        port_range = (low, high)
    options = Options(
        quick=quick,
        seconds=args.seconds or (1.0 if quick else 3.0),
        packets=args.packets or (15000 if quick else 60000),
        size=args.size,
        window=args.window,
        clients=args.clients,
        samples=args.samples or (1000 if quick else 5000),
        allocations=tuple(int(n) for n in levels.split(",")),
        rate_start=args.rate_start,
        bisect_steps=args.bisect_steps if args.bisect_steps is not None else (2 if quick else 4),
        uclient_clients=4 if quick else 10,
        uclient_messages=1000 if quick else 5000,
        coturn_relay_threads=args.coturn_relay_threads or 1,
        rss_port_range=port_range,
        rounds=max(1, args.rounds),
        passes=(1, args.workers) if args.workers > 1 else (1,),
        coturn_threads_given=args.coturn_relay_threads,
    )
    chosen = {name for names in args.server or [["all"]] for name in names}
    servers = [s for s in SERVERS if chosen & {s, "both", "all"}]
    metrics = list(dict.fromkeys(m for names in args.only or [METRICS] for m in names))
    return options, metrics, servers, args.json


def _names(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    """An argparse type: a comma-separated list of ``allowed`` names."""

    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        wrong = [name for name in names if name not in allowed]
        if wrong or not names:
            raise argparse.ArgumentTypeError(
                f"{', '.join(wrong) or repr(text)}: choose from {', '.join(allowed)}"
            )
        return names

    return parse
