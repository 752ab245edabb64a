"""Shared test material: the STUN vectors, fuzz seed corpora and captures under ``shared/vectors``.

The ``shared/`` folder sits beside the repository (``../shared``); ``TURND_SHARED_DIR`` points
elsewhere. Tests that need it fail, with the path they looked at, when it is missing: a run
without the conformance vectors must not pass as if they had been checked.
Never paste bytes from these files into tests: go through the fixtures below.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from testkit.vectors import (
    SHARED_DIR_ENV,
    load_stun_vectors,
    shared_dir,
    stun_vectors_path,
)
from testkit.vectors import FuzzMaterial as FuzzMaterial
from testkit.vectors import StunVector as StunVector
from testkit.vectors import go_quoted_bytes as go_quoted_bytes
from testkit.vectors import read_go_fuzz_file as read_go_fuzz_file


def pytest_configure(config: pytest.Config) -> None:
    """Child Pythons (the turnd daemons, bench and matrix runs) turn warnings into errors too, as
    ``filterwarnings = ["error"]`` does in this process."""
    os.environ.setdefault("PYTHONWARNINGS", "error")


def _missing(path: Path) -> str:
    return (
        f"test vectors not found at {path}: check out the project's shared/ folder beside the"
        f" repository (../shared) or set {SHARED_DIR_ENV} to where it is"
    )


def _vectors_dir_or_fail() -> Path:
    path = shared_dir() / "vectors"
    if not path.is_dir():
        pytest.fail(_missing(path), pytrace=False)
    return path


# --- stun-vectors.json -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def stun_vectors() -> dict[str, StunVector]:
    """Every vector of stun-vectors.json by name, valid and negative ones."""
    path = stun_vectors_path()
    if not path.is_file():
        pytest.fail(_missing(path), pytrace=False)
    return load_stun_vectors(path)


@pytest.fixture
def stun_vector(request: pytest.FixtureRequest, stun_vectors: dict[str, StunVector]) -> StunVector:
    """One valid vector; tests asking for it run once per valid vector."""
    return stun_vectors[request.param]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``stun_vector`` over the valid vectors' names (known at collection time)."""
    if "stun_vector" not in metafunc.fixturenames:
        return
    path = stun_vectors_path()
    if path.is_file():
        names = [v.name for v in load_stun_vectors(path).values() if v.valid]
    else:
        names = ["missing"]  # the stun_vectors fixture then fails, saying where it looked
    metafunc.parametrize("stun_vector", names, indirect=True)


# --- hand-built wire messages ------------------------------------------------------------------

TEST_TRANSACTION_ID = b"turnd-tests!"


def raw_stun(
    attributes: Iterable[tuple[int, bytes]] = (),
    *,
    msg_type: int = 0x0001,
    transaction_id: bytes = TEST_TRANSACTION_ID,
    cookie: int = 0x2112A442,
    length: int | None = None,
    pad: bytes = b"\x00",
) -> bytes:
    """Assemble a STUN message by hand, bypassing the encoder: (type, value) attributes are
    padded with ``pad``; ``length`` overrides the header length field."""
    body = bytearray()
    for attr_type, value in attributes:
        body += struct.pack("!HH", attr_type, len(value)) + value + pad * (-len(value) % 4)
    size = len(body) if length is None else length
    return struct.pack("!HHI", msg_type, size, cookie) + transaction_id + bytes(body)


# --- fuzz seeds and captures -------------------------------------------------------------------


@pytest.fixture(scope="session")
def fuzz_material() -> FuzzMaterial:
    """Access to the fuzz seeds and captures (fails when the shared folder is missing)."""
    return FuzzMaterial(_vectors_dir_or_fail())


@pytest.fixture(scope="session")
def go_literal() -> Any:
    """The Go string-literal decoder used to read pion's corpus (exposed for its own tests)."""
    return go_quoted_bytes
