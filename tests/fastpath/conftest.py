"""Fixtures of the fast path tests: the three namespaces, and the program loaded in turnd's."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fastpath import topology as topo
from turnd.config_sections import FastpathConfig
from turnd.fastpath import OBJECT, FastPath


def fastpath_unavailable() -> str | None:
    """Why the kernel fast path cannot be tested here, or None."""
    reason = topo.unavailable()
    if reason is not None:
        return reason
    if not OBJECT.exists():
        return f"{OBJECT} is not built (scripts/test builds it when clang is installed)"
    return None


@pytest.fixture(scope="module")
def topologies() -> Iterator[tuple[topo.Topology, topo.Topology]]:
    """The client, turnd and peer namespaces (IPv4 view, IPv6 view)."""
    reason = fastpath_unavailable()
    if reason is not None:
        pytest.skip(reason)
    with topo.topology() as both:
        yield both


@pytest.fixture
def fastpath(topologies: tuple[topo.Topology, topo.Topology]) -> Iterator[FastPath]:
    """The program attached to turnd's two veths, as the service would attach it."""
    v4 = topologies[0]
    with topo.inside(v4.turnd):
        loaded = FastPath(FastpathConfig(), ["10.77.1.1", "10.77.2.1"])
    try:
        yield loaded
    finally:
        loaded.close()
