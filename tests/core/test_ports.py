"""Relay port bookkeeping (RFC 8656 §7.2: relayed ports are chosen by the server, unpredictably,
within the configured range; EVEN-PORT asks for an even port, with R=1 for port+1 as well)."""

from __future__ import annotations

import pytest

from tests.core.harness import counter_rng
from turnd.core.ports import RANDOM_PROBES, PortPool


def constant_rng(n: int) -> bytes:
    """An rng that always says 0: every random probe lands on the lowest port."""
    return bytes(n)


@pytest.mark.parametrize(("low", "high"), [(0, 10), (10, 9), (1, 65536), (-5, 5)])
def test_bad_ranges_are_refused(low: int, high: int) -> None:
    """A range must lie within 1-65535 and not be empty."""
    with pytest.raises(ValueError, match="bad relay port range"):
        PortPool(low, high, constant_rng)


def test_picks_stay_within_the_range_and_vary() -> None:
    """Picked ports are inside [low, high] and spread over it (unpredictable, RFC 6056)."""
    pool = PortPool(50000, 50099, counter_rng())
    ports = [pool.pick() for _ in range(200)]
    assert all(p is not None and 50000 <= p <= 50099 for p in ports)
    assert len(set(ports)) > 50
    assert pool.size == 100


def test_taken_ports_are_not_picked_until_released() -> None:
    """A taken port is never picked again; released, it is available again."""
    pool = PortPool(60000, 60003, counter_rng())
    taken = []
    for _ in range(4):
        port = pool.pick()
        assert port is not None and port not in taken
        pool.take(port)
        taken.append(port)
    assert sorted(taken) == [60000, 60001, 60002, 60003]
    assert pool.pick() is None
    pool.release(60002)
    assert pool.pick() == 60002


def test_even_pair_is_an_even_port_with_its_successor_free() -> None:
    """EVEN-PORT: the pick is even and port+1 is free too (so R=1 can reserve it)."""
    pool = PortPool(40001, 40100, counter_rng())
    for _ in range(20):
        port = pool.pick(even_pair=True)
        assert port is not None and port % 2 == 0 and 40001 <= port < 40100
        assert port + 1 not in pool.taken
        pool.take(port)
        pool.take(port + 1)


def test_scan_finds_the_last_free_port_when_random_probes_miss() -> None:
    """After RANDOM_PROBES misses the pool scans, so a free port is always found if one exists."""
    pool = PortPool(1000, 1009, constant_rng)
    pool.take(1000)
    assert RANDOM_PROBES > 0
    assert pool.pick() == 1001


def test_scan_for_an_even_pair_skips_odd_ports_and_respects_the_low_bound() -> None:
    """The even-pair scan skips odd ports and never rounds below an odd low bound."""
    pool = PortPool(101, 110, constant_rng)
    assert pool.pick(even_pair=True) == 102
    pool.take(103)
    assert pool.pick(even_pair=True) == 104


@pytest.mark.parametrize(("low", "high"), [(100, 100), (101, 101), (101, 102)])
def test_no_even_pair_in_a_range_without_one_is_none(low: int, high: int) -> None:
    """Without an even port whose successor is free and in range, an even pick is None."""
    assert PortPool(low, high, constant_rng).pick(even_pair=True) is None


def test_release_of_a_free_port_is_harmless() -> None:
    """Releasing twice (or a port never taken) changes nothing."""
    pool = PortPool(5000, 5001, constant_rng)
    pool.release(5000)
    pool.take(5001)
    pool.release(5001)
    pool.release(5001)
    assert pool.taken == set()


def test_a_restricted_pool_picks_only_its_own_slices() -> None:
    """A cluster node picks relay ports only from the slices it owns (DESIGN.md, the cluster)."""
    pool = PortPool(50000, 50099, counter_rng())
    pool.restrict([(50090, 50099), (50000, 50009), (50005, 50012)])
    assert pool.ranges == [(50000, 50012), (50090, 50099)]
    assert pool.size == 23
    picks = {pool.pick() for _ in range(300)}
    assert picks == set(range(50000, 50013)) | set(range(50090, 50100))


def test_a_restricted_pool_scans_its_slices_when_probes_miss() -> None:
    """The fallback scan walks the owned ports only, and even pairs stay inside them."""
    pool = PortPool(1000, 1099, constant_rng)
    pool.restrict([(1011, 1013), (1050, 1051)])
    pool.take(1011)
    assert pool.pick() == 1012
    assert pool.pick(even_pair=True) == 1012
    pool.take(1012)
    assert pool.pick(even_pair=True) == 1050
    pool.take(1050)
    assert pool.pick(even_pair=True) is None
    for port in (1013, 1051):
        pool.take(port)
    assert pool.pick() is None


def test_restricting_to_nothing_or_outside_the_range() -> None:
    """No owned slice: nothing to pick (the node relays no new allocation); outside: refused."""
    pool = PortPool(2000, 2099, constant_rng)
    pool.restrict([])
    assert pool.size == 0
    assert pool.pick() is None
    with pytest.raises(ValueError, match="outside 2000-2099"):
        pool.restrict([(1990, 2010)])
