"""bench.hotpath relays every datagram of each row, and refuses a figure when one is lost.

Nothing is timed against a threshold: the figures are only checked to exist.
"""

from __future__ import annotations

import pytest

from bench import hotpath


def test_every_row_relays_each_datagram_to_its_destination() -> None:
    """A short run of each row returns a figure; Bed.run raises if any datagram went missing
    or somewhere else, so getting figures back means every datagram was relayed."""
    figures = hotpath.time_rows(datagrams=300, repeat=1)
    assert set(figures) == set(hotpath.ROWS)
    assert all(figure > 0 for figure in figures.values())


def test_a_row_whose_datagrams_are_dropped_gets_no_figure() -> None:
    """With the channel gone, client ChannelData is dropped by the core: the row is refused."""

    def unbind_then_run(bed: hotpath.Bed) -> None:
        [allocation] = bed.service.core.allocations.values()
        allocation.channels.clear()
        bed.run("client-channel", 10)

    with pytest.raises(RuntimeError, match="0 of 10 datagrams relayed"):
        hotpath.run_async(unbind_then_run)
