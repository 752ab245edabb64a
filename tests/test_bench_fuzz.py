"""bench.fuzz's mutate engine: it runs the count it is asked for over UDP, TCP and TLS 5-tuples and
peer datagrams, and a failure in the core is caught, saved and counted, not lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import fuzz
from testkit.fuzz import Event, Seeds, Storm


@pytest.fixture
def seeds() -> Seeds:
    try:
        return fuzz.load()
    except SystemExit as exc:  # the shared vectors are missing: fail, as the fixtures do
        pytest.fail(str(exc), pytrace=False)


def test_mutate_runs_every_input_across_transports(seeds: Seeds) -> None:
    """2,000 mutants: all executed, none failing, each transport and the peer side fed."""
    done, failures, by_transport = fuzz.run_mutate(seeds, 2000, float("inf"), seed=7)
    assert (done, failures) == (2000, 0)
    assert set(by_transport) == {"UDP", "TCP", "TLS", "peer"}
    assert sum(by_transport.values()) == 2000


def test_mutate_counts_and_saves_a_failure(
    seeds: Seeds, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An exception out of the core is a counted failure with its input saved."""
    monkeypatch.setattr(fuzz, "CRASHES", tmp_path)
    original = Storm.apply

    def apply(self: Storm, event: Event) -> None:
        if self.inputs == 3:
            raise RuntimeError("planted")
        original(self, event)

    monkeypatch.setattr(Storm, "apply", apply)
    done, failures, _ = fuzz.run_mutate(seeds, 10, float("inf"), seed=7)
    assert done == 10 and failures >= 1
    saved = list(tmp_path.glob("packet-*.json"))
    assert saved and "planted" in saved[0].read_text()
