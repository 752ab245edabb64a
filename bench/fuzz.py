"""The long fuzz run: the properties of testkit/fuzz.py (tests/core/test_fuzz_core.py) with
random seeds.

    python -m bench.fuzz                         # hypothesis, 60 s
    python -m bench.fuzz --seconds 600           # longer
    python -m bench.fuzz --engine atheris        # coverage-guided (libFuzzer), if installed
    python -m bench.fuzz --engine mutate --inputs 1000000  # plain mutation, fast: a count
    python -m bench.fuzz --replay bench/results/fuzz-crashes/storm-0123abcd.json  # or crash-*

hypothesis: the decoder property (mutants into decode, ChannelData parsing and the stream
deframer), the packet property (one mutant from a client and one peer datagram into a prepared
core) and the storm property (a sequence of mutants, adapter callbacks and clock jumps, then the
legitimate client must still refresh and relay), in turn, in batches sized to about two seconds,
until the time is up. mutate: no search, just speed — seeds put through byte-level mutators by a
seeded PRNG, each fed to the codecs (datagram decode, ChannelData, the TCP/TLS stream deframer)
and then into one long-lived core as a client packet over UDP, TCP and TLS 5-tuples in turn
(every eighth as a peer datagram), the legitimate client checked every STORM_INPUTS inputs and at
the end; it runs until --inputs are done or --seconds are up. atheris: the same checks behind one
libFuzzer entry point; its first byte picks which (see :class:`AtherisTarget`), libFuzzer's
corpus starts from the seeds.

Printed: the inputs executed (packets and callbacks fed to the core, buffers fed to the codecs)
and every failure. A failing input goes to ``bench/results/fuzz-crashes/`` (JSON with the input,
the property and the traceback for hypothesis; libFuzzer's ``crash-*`` files for atheris), and
the exit status is 1.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import random
import sys
import time
import traceback
import types
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testkit.fuzz import (
    PEERS,
    TUPLES,
    Event,
    Seeds,
    Storm,
    decode_or_reject,
    load_seeds,
    mutants,
    reseal,
    run_packet,
    run_storm,
    storm_events,
)
from testkit.vectors import FuzzMaterial, load_stun_vectors, shared_dir

RESULTS = Path(__file__).resolve().parent / "results"
CRASHES = RESULTS / "fuzz-crashes"
#: libFuzzer's working corpus (it adds the inputs that found new coverage).
CORPUS = RESULTS / "fuzz-corpus"
#: Wall time one hypothesis batch aims at: short enough to stop near the deadline, long enough
#: that hypothesis's per-run set-up does not dominate.
BATCH_SECONDS = 2.0
#: Mutants per decoder example (they are cheap; one example draws several).
DECODER_BATCH = 8


def load() -> Seeds:
    """The seeds, read from the shared folder the tests use."""
    root = shared_dir() / "vectors"
    if not root.is_dir():
        raise SystemExit(f"bench.fuzz: test vectors not found at {root} (set TURND_SHARED_DIR)")
    return load_seeds(load_stun_vectors(root / "stun-vectors.json"), FuzzMaterial(root))


# --- inputs as JSON ------------------------------------------------------------------------------


def to_json(value: Any) -> Any:
    """Bytes as hex, events as objects, sequences as lists."""
    if isinstance(value, bytes | bytearray):
        return {"hex": bytes(value).hex()}
    if isinstance(value, Event):
        return {"event": {k: to_json(v) for k, v in value._asdict().items()}}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return value


def from_json(value: Any) -> Any:
    if isinstance(value, dict) and "hex" in value:
        return bytes.fromhex(value["hex"])
    if isinstance(value, dict) and "event" in value:
        return Event(**{k: from_json(v) for k, v in value["event"].items()})
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


# --- the properties ------------------------------------------------------------------------------


def check_decoder(buffers: list[bytes]) -> int:
    for data in buffers:
        decode_or_reject(data)
    return len(buffers)


def check_packet(case: tuple[int, bytes, int, bytes]) -> int:
    run_packet(*case)
    return 2


def check_storm(events: list[Event]) -> int:
    return run_storm(list(events))


Property = tuple[Callable[[Seeds], st.SearchStrategy[Any]], Callable[[Any], int]]

PROPERTIES: dict[str, Property] = {
    "decoder": (
        lambda seeds: st.lists(mutants(seeds), min_size=1, max_size=DECODER_BATCH),
        check_decoder,
    ),
    "packet": (
        lambda seeds: st.tuples(
            st.integers(0, len(TUPLES) - 1),
            mutants(seeds),
            st.integers(0, len(PEERS) - 1),
            mutants(seeds),
        ),
        check_packet,
    ),
    "storm": (lambda seeds: storm_events(seeds, max_size=40), check_storm),
}


class Tally:
    """What ran: examples and inputs per property, failures saved."""

    def __init__(self) -> None:
        self.examples: Counter[str] = Counter()
        self.inputs: Counter[str] = Counter()
        self.failures: list[Path] = []


def save_crash(name: str, value: Any, error: str) -> Path:
    """Write a failing input (with the property and the traceback) under CRASHES."""
    CRASHES.mkdir(parents=True, exist_ok=True)
    document = {"property": name, "input": to_json(value), "traceback": error}
    text = json.dumps(document, indent=1)
    path = CRASHES / f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:16]}.json"
    path.write_text(text)
    return path


def run_batch(name: str, seeds: Seeds, examples: int, tally: Tally) -> None:
    """One hypothesis run of ``examples`` random examples of property ``name``."""
    strategy, check = PROPERTIES[name]
    last: list[Any] = []

    def body(value: Any) -> None:
        last[:] = [value]  # hypothesis replays the shrunk failure last
        tally.examples[name] += 1
        tally.inputs[name] += check(value)

    test = settings(
        derandomize=False,
        database=None,
        max_examples=examples,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )(given(strategy(seeds))(body))
    try:
        test()
    except Exception:
        error = traceback.format_exc()
        path = save_crash(name, last[0] if last else None, error)
        tally.failures.append(path)
        print(f"FAILURE in {name}: saved {path}\n{error}", flush=True)


def run_hypothesis(seeds: Seeds, seconds: float) -> Tally:
    tally = Tally()
    batch = dict.fromkeys(PROPERTIES, 20)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for name in PROPERTIES:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            started = time.monotonic()
            before = tally.examples[name]
            run_batch(name, seeds, batch[name], tally)
            elapsed = time.monotonic() - started
            done = tally.examples[name] - before
            per_example = elapsed / max(done, 1)
            target = min(BATCH_SECONDS, left - elapsed)
            batch[name] = max(5, int(target / per_example))
    return tally


def report_hypothesis(tally: Tally, seconds: float) -> None:
    print(f"\nhypothesis, {seconds:.0f} s (random seeds):")
    print(f"  {'property':<10} {'examples':>10} {'inputs':>10}")
    for name in PROPERTIES:
        print(f"  {name:<10} {tally.examples[name]:>10} {tally.inputs[name]:>10}")
    total = sum(tally.inputs.values())
    print(f"  {'total':<10} {sum(tally.examples.values()):>10} {total:>10}")
    print(f"inputs executed: {total} ({total / seconds:.0f}/s)")
    print(f"failures: {len(tally.failures)}" + "".join(f"\n  {p}" for p in tally.failures))


def replay(path: Path) -> int:
    """Run one saved failing input again (a JSON file of the hypothesis engine, or a libFuzzer
    ``crash-*`` file); its exception propagates."""
    if path.suffix != ".json":
        AtherisTarget(0).one(path.read_bytes())
    else:
        document = json.loads(path.read_text())
        value = from_json(document["input"])
        if document["property"] == "packet":
            value = tuple(value)
        PROPERTIES[document["property"]][1](value)
    print(f"{path}: no failure now")
    return 0


# --- mutate --------------------------------------------------------------------------------------

#: Inputs one core takes before the legitimate client is checked and a fresh core is prepared.
STORM_INPUTS = 5000
#: Inputs between two progress lines.
PROGRESS_EVERY = 100_000


def mutate(rng: random.Random, data: bytearray, seeds: Seeds) -> bytearray:
    """One byte-level mutation of ``data``: flip, truncate, insert (random or dictionary bytes),
    delete, splice with another seed, or rewrite the STUN length field."""
    kind = rng.randrange(6)
    position = rng.randrange(len(data) + 1)
    if kind == 0 and data:
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == 1:
        del data[position:]
    elif kind == 2:
        chunk = rng.choice(seeds.dictionary) if rng.random() < 0.5 else rng.randbytes(8)
        data[position:position] = chunk
    elif kind == 3:
        del data[position : position + rng.randrange(1, 9)]
    elif kind == 4:
        other = rng.choice(seeds.all)
        data[position:] = other[rng.randrange(len(other) + 1) :]
    elif len(data) >= 4:
        data[2:4] = rng.randrange(0x10000).to_bytes(2, "big")
    return data


def run_mutate(
    seeds: Seeds, inputs: int, seconds: float, seed: int
) -> tuple[int, int, Counter[str]]:
    """``inputs`` mutants (or as many as ``seconds`` allow): (inputs executed, failures, inputs
    by transport). A failure is saved like the hypothesis engine's."""
    rng = random.Random(seed)
    client_seeds, every_seed = seeds.by_origin["client"], seeds.all
    storm = Storm()
    done = failures = 0
    by_transport: Counter[str] = Counter()
    deadline = time.monotonic() + seconds
    while done < inputs and time.monotonic() < deadline:
        data = bytearray(rng.choice(client_seeds if rng.random() < 0.5 else every_seed))
        for _ in range(rng.randrange(1, 4)):
            data = mutate(rng, data, seeds)
        if rng.random() < 0.75:
            data = reseal(data)
        packet = bytes(data)
        index = done % len(TUPLES)
        event = (
            Event("peer", rng.randrange(2**32), rng.randrange(2**32), data=packet)
            if done % 8 == 7
            else Event("client", index, data=packet)
        )
        try:
            decode_or_reject(packet)
            storm.apply(event)
            if storm.inputs >= STORM_INPUTS:
                storm.drain()
                storm.check_still_serving()
                storm = Storm()
        except Exception:
            failures += 1
            path = save_crash("packet", (index, packet, 0, packet), traceback.format_exc())
            print(f"FAILURE: saved {path}", flush=True)
            storm = Storm()
        done += 1
        by_transport["peer" if event.kind == "peer" else TUPLES[index].transport.name] += 1
        if done % PROGRESS_EVERY == 0:
            print(f"  {done} inputs, {failures} failures", flush=True)
    storm.drain()
    storm.check_still_serving()
    return done, failures, by_transport


# --- atheris -------------------------------------------------------------------------------------


class AtherisTarget:
    """One libFuzzer input. Byte 0 picks the check: 0 the codecs on the rest; 1 the rest as one
    packet from 5-tuple ``byte 1`` (re-sealed when byte 2 is odd), then as a peer datagram at a
    live relay; 2 a storm, the rest cut at ``SEPARATOR`` into packets, each with a leading byte
    that picks the event, then the check that the legitimate client is still served.

    It ends the run itself at the deadline (libFuzzer's own exit skips Python's), printing the
    totals; on a failure it prints them and lets the exception reach libFuzzer, which saves the
    input."""

    SEPARATOR = b"\xfe\xed"
    KINDS = (
        "client",
        "client",
        "client",
        "peer",
        "relay_opened",
        "connection_closed",
        "peer_connected",
        "peer_connection_arrived",
        "peer_connection_closed",
        "timer",
    )

    def __init__(self, seconds: float) -> None:
        self.started = time.monotonic()
        self.deadline = self.started + seconds
        self.runs = 0
        self.inputs = 0

    def report(self) -> None:
        elapsed = time.monotonic() - self.started
        print(
            f"\natheris, {elapsed:.0f} s: {self.runs} libFuzzer runs, inputs executed:"
            f" {self.inputs} ({self.inputs / elapsed:.0f}/s)",
            flush=True,
        )

    def __call__(self, data: bytes) -> None:
        if time.monotonic() >= self.deadline:
            self.report()
            print("failures: 0")
            os._exit(0)
        self.runs += 1
        try:
            self.one(data)
        except BaseException:
            self.report()
            raise

    def one(self, data: bytes) -> None:
        mode = data[0] % 3 if data else 0
        if mode == 0:
            self.inputs += 1
            decode_or_reject(data[1:])
        elif mode == 1:
            self.inputs += 2
            packet = data[3:]
            if len(data) > 2 and data[2] % 2:
                packet = bytes(reseal(bytearray(packet)))
            index = data[1] if len(data) > 1 else 0
            run_packet(index % len(TUPLES), packet, index % len(PEERS), packet)
        else:
            storm = Storm()
            for chunk in data[1:].split(self.SEPARATOR):
                storm.apply(self.event(chunk))
            storm.drain()
            storm.check_still_serving()
            self.inputs += storm.inputs

    @classmethod
    def event(cls, chunk: bytes) -> Event:
        """An event from bytes: kind, index and other from the first three, data the rest."""
        head = chunk[:3].ljust(3, b"\x00")
        kind = cls.KINDS[head[0] % len(cls.KINDS)]
        return Event(kind, head[1], head[2], chunk[3:], float(head[1] * 4 + head[2] % 4))

    @classmethod
    def corpus(cls, seeds: Seeds) -> list[bytes]:
        """Seed inputs: each seed for the codecs, as a packet from each legitimate 5-tuple
        (plain and re-sealed), and the client packets as one storm."""
        out = []
        for seed in seeds.all:
            out.append(b"\x00" + seed)
            for index in (0, 1):
                out += [bytes((1, index, 0)) + seed, bytes((1, index, 1)) + seed]
        storm = [bytes((0, 0, 0)) + packet for packet in seeds.by_origin["client"]]
        out.append(b"\x02" + cls.SEPARATOR.join(storm))
        return out


#: Top-level packages whose code atheris instruments (instrumenting everything loaded, hypothesis
#: and pytest included, takes minutes).
INSTRUMENTED = ("stun", "auth", "turnd", "testkit")


def instrument_project(atheris: Any) -> int:
    """Instrument the project's functions already loaded; how many."""
    functions = [
        obj
        for obj in gc.get_objects()
        if isinstance(obj, types.FunctionType)
        and str(getattr(obj, "__module__", None)).split(".")[0] in INSTRUMENTED
    ]
    for function in functions:
        atheris.instrument_func(function)
    return len(functions)


def run_atheris(seeds: Seeds, seconds: float) -> int:
    try:
        import atheris  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        print(
            "atheris is unavailable here (pip install atheris: it ships wheels for some Python"
            " versions and platforms only); use --engine hypothesis"
        )
        return 2
    CRASHES.mkdir(parents=True, exist_ok=True)
    CORPUS.mkdir(parents=True, exist_ok=True)
    for data in AtherisTarget.corpus(seeds):
        (CORPUS / f"seed-{hashlib.sha1(data).hexdigest()}").write_bytes(data)
    print(f"atheris: instrumented {instrument_project(atheris)} functions", flush=True)
    atheris.Setup(
        [
            sys.argv[0],
            f"-max_total_time={int(seconds) + 30}",  # a backstop: the target stops itself
            f"-artifact_prefix={CRASHES}/",
            "-rss_limit_mb=4096",
            str(CORPUS),
        ],
        AtherisTarget(seconds),
    )
    atheris.Fuzz()
    return 0  # not reached: the target or libFuzzer exits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fuzz", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to run (60)")
    parser.add_argument(
        "--engine", choices=("hypothesis", "atheris", "mutate"), default="hypothesis"
    )
    parser.add_argument(
        "--inputs", type=int, default=1_000_000, help="mutate: how many inputs (1,000,000)"
    )
    parser.add_argument("--seed", type=int, default=1, help="mutate: the PRNG seed (1)")
    parser.add_argument("--replay", type=Path, help="run one saved failing input again")
    args = parser.parse_args(argv)
    if args.replay:
        return replay(args.replay)
    seeds = load()
    print(f"seeds: {', '.join(f'{k} {len(v)}' for k, v in seeds.by_origin.items())}")
    if args.engine == "atheris":
        return run_atheris(seeds, args.seconds)
    if args.engine == "mutate":
        started = time.monotonic()
        limit = args.seconds if "--seconds" in (argv or sys.argv) else float("inf")
        done, failures, by_transport = run_mutate(seeds, args.inputs, limit, args.seed)
        elapsed = time.monotonic() - started
        print(f"\nmutate, {elapsed:.0f} s (seed {args.seed}):")
        print("  " + ", ".join(f"{k} {v}" for k, v in sorted(by_transport.items())))
        print(f"inputs executed: {done} ({done / elapsed:.0f}/s)")
        print(f"failures: {failures}")
        return 1 if failures else 0
    started = time.monotonic()
    tally = run_hypothesis(seeds, args.seconds)
    report_hypothesis(tally, time.monotonic() - started)
    return 1 if tally.failures else 0


if __name__ == "__main__":
    sys.exit(main())
