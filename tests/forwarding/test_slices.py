"""Relay port slices (DESIGN.md "The cluster", peer side): each port of the relay range has one
owner, a node's ranges are merged and disjoint, and a joining node takes about 1/N of slices."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forwarding.slices import SliceTable

PROPERTY = settings(derandomize=True, max_examples=100, deadline=None)


@st.composite
def tables(draw: st.DrawFn) -> SliceTable:
    port_min = draw(st.integers(min_value=0, max_value=65535))
    port_max = draw(st.integers(min_value=port_min, max_value=min(65535, port_min + 3000)))
    slice_size = draw(st.integers(min_value=1, max_value=200))
    nodes = draw(st.sets(st.integers(min_value=1, max_value=65535), min_size=1, max_size=6))
    return SliceTable(port_min, port_max, nodes, slice_size)


def check_partition(table: SliceTable) -> None:
    """The nodes' ranges are sorted, merged, disjoint, cover the range exactly and agree with
    owner()."""
    covered: dict[int, int] = {}
    for node in table.nodes:
        ranges = table.ranges(node)
        assert list(ranges) == sorted(ranges)
        for (_, last), (first, _) in pairwise(ranges):
            assert first > last + 1, "adjacent ranges must be merged"
        for first, last in ranges:
            assert table.port_min <= first <= last <= table.port_max
            for port in range(first, last + 1):
                assert port not in covered, "ranges overlap"
                covered[port] = node
        assert table.share(node) == sum(last - first + 1 for first, last in ranges)
    assert sorted(covered) == list(range(table.port_min, table.port_max + 1))
    for port, node in covered.items():
        assert table.owner(port) == node


@PROPERTY
@given(tables())
def test_every_port_has_exactly_one_owner_and_ranges_agree(table: SliceTable) -> None:
    """Every port in range has one configured owner; ranges() partitions the range."""
    check_partition(table)
    assert sum(table.share(node) for node in table.nodes) == table.port_max - table.port_min + 1


@PROPERTY
@given(tables())
def test_ports_outside_the_range_have_no_owner(table: SliceTable) -> None:
    """owner() is None just below and just above the range."""
    if table.port_min > 0:
        assert table.owner(table.port_min - 1) is None
    assert table.owner(table.port_max + 1) is None


def test_default_range_split_in_64_port_slices() -> None:
    """49152..65535 in the default 64-port slices is 256 slices shared by three nodes."""
    table = SliceTable(49152, 65535, [1, 2, 3])
    assert table.slice_size == 64
    assert table.slice_count == 256
    check_partition(table)
    for node in (1, 2, 3):
        assert table.share(node) % 64 == 0
        assert 0.2 <= table.share(node) / 16384 <= 0.45


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_adding_a_node_moves_about_one_share_of_slices_only_to_it(count: int) -> None:
    """Slices that change owner when a node joins all go to it, about 1/(N+1) of them."""
    old = SliceTable(0, 65535, range(1, count + 1), slice_size=4)
    new = SliceTable(0, 65535, range(1, count + 2), slice_size=4)
    moved = [
        (before, after)
        for before, after in zip(old.slice_owners(), new.slice_owners(), strict=True)
        if before != after
    ]
    assert all(after == count + 1 for _, after in moved)
    expected = old.slice_count / (count + 1)
    assert 0.9 * expected <= len(moved) <= 1.1 * expected


def test_a_range_not_divisible_by_the_slice_size_ends_with_a_short_slice() -> None:
    """1000..1099 in slices of 64 is one full slice and one of 36 ports."""
    table = SliceTable(1000, 1099, [1, 2, 3, 4], slice_size=64)
    assert table.slice_count == 2
    first, last = table.owner(1000), table.owner(1099)
    assert table.owner(1063) == first and table.owner(1064) == last
    check_partition(table)
    shares = sorted(table.share(node) for node in {first, last})
    assert shares == ([100] if first == last else [36, 64])


def test_a_slice_larger_than_the_range_gives_the_whole_range_to_one_node() -> None:
    """One slice: one owner holds every port, the others none."""
    table = SliceTable(50000, 50009, [1, 2, 3], slice_size=64)
    assert table.slice_count == 1
    owner = table.owner(50000)
    assert owner is not None
    assert table.ranges(owner) == ((50000, 50009),)
    assert all(table.ranges(node) == () and table.share(node) == 0 for node in {1, 2, 3} - {owner})


def test_a_single_port_range_and_slices_of_one_port() -> None:
    """The degenerate sizes work: one port, and slices of a single port."""
    assert SliceTable(7, 7, [9]).ranges(9) == ((7, 7),)
    check_partition(SliceTable(100, 163, [1, 2], slice_size=1))


def test_an_unknown_node_owns_nothing() -> None:
    """ranges() and share() of a node not in the table are empty."""
    table = SliceTable(49152, 65535, [1, 2])
    assert table.ranges(3) == ()
    assert table.share(3) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((50000, 49999, [1]), "bad relay port range"),
        ((-1, 100, [1]), "bad relay port range"),
        ((0, 65536, [1]), "bad relay port range"),
        ((49152, 65535, [1], 0), "slice_size"),
        ((49152, 65535, [1], -64), "slice_size"),
        ((49152, 65535, []), "at least one node"),
        ((49152, 65535, [0]), "node id"),
    ],
)
def test_bad_arguments_are_refused_with_a_clear_message(
    args: tuple[Any, ...], message: str
) -> None:
    """Bad ranges, slice sizes and node sets raise ValueError naming the problem."""
    with pytest.raises(ValueError, match=message):
        SliceTable(*args)
