"""Fixtures of the cluster tests: the namespace test bed, and throwaway namespaces.

Both skip, saying why, when the process is not root or the kernel will not make a network
namespace; a bed that fails to build for any other reason is a failure, not a skip.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from functools import cache

import pytest

from testkit.cluster_bed import TestBed, scratch_namespace

SKIP_REASON = "needs root and network namespaces"


@cache
def _namespaces_unavailable() -> str | None:
    """Why namespaces cannot be made here, or None if they can (tried once per session)."""
    if os.geteuid() != 0:
        return f"{SKIP_REASON}: not running as root"
    if shutil.which("ip") is None:
        return f"{SKIP_REASON}: iproute2's ip is not installed"
    try:
        import pyroute2  # noqa: F401
    except ImportError:
        return f"{SKIP_REASON}: pyroute2 is not installed"
    try:
        with scratch_namespace():
            pass
    except Exception as error:
        return f"{SKIP_REASON}: creating one failed: {error!r}"
    return None


def require_namespaces() -> None:
    """Skip the calling test unless network namespaces can be made."""
    reason = _namespaces_unavailable()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def testbed() -> Iterator[TestBed]:
    """A built three-node bed for the module, destroyed afterwards."""
    require_namespaces()
    with TestBed() as bed:
        yield bed


@pytest.fixture
def scratch_netns() -> Iterator[str]:
    """The name of an empty namespace, removed after the test."""
    require_namespaces()
    with scratch_namespace() as name:
        yield name
