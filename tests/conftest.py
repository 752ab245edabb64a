"""Shared test material: the STUN vectors, fuzz seed corpora and captures under ``shared/vectors``.

The ``shared/`` folder sits beside the repository (``../shared``); ``TURND_SHARED_DIR`` points
elsewhere. Tests that need it fail, with the path they looked at, when it is missing: a run
without the conformance vectors must not pass as if they had been checked.
Never paste bytes from these files into tests: go through the fixtures below.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import attrs
import pytest

SHARED_DIR_ENV = "TURND_SHARED_DIR"


def pytest_configure(config: pytest.Config) -> None:
    """Child Pythons (the turnd daemons, bench and matrix runs) turn warnings into errors too, as
    ``filterwarnings = ["error"]`` does in this process."""
    os.environ.setdefault("PYTHONWARNINGS", "error")


def shared_dir() -> Path:
    """The shared folder: ``$TURND_SHARED_DIR`` or ``shared/`` beside the repository."""
    override = os.environ.get(SHARED_DIR_ENV)
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / "shared"


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


@attrs.frozen
class StunVector:
    """One entry of stun-vectors.json, with its bytes and HMAC key worked out."""

    name: str
    data: bytes
    source: dict[str, Any]
    credentials: dict[str, Any]
    expected: dict[str, Any]

    @property
    def valid(self) -> bool:
        """False for the negative vectors (``expected.valid`` is false)."""
        return bool(self.expected.get("valid", True))

    @property
    def key(self) -> bytes:
        """The HMAC key: the UTF-8 password for short-term credentials (RFC 8489 §9.1.1), the
        long-term key the JSON gives precomputed otherwise (RFC 8489 §9.2.2)."""
        if "hmac_key_utf8" in self.credentials:
            return str(self.credentials["hmac_key_utf8"]).encode("utf-8")
        for field in ("long_term_key_md5", "long_term_key_sha256"):
            if self.expected.get(field):
                return bytes.fromhex(self.expected[field])
        raise LookupError(f"vector {self.name} gives no key")

    @property
    def pad(self) -> bytes:
        """The padding byte the sample uses: RFC 5769 §2.1-2.3 pad with spaces, the rest zeros."""
        rfc = self.source.get("rfc")
        section = str(self.source.get("section", ""))
        if rfc == "RFC 5769" and section.startswith(("2.1", "2.2", "2.3")):
            return b" "
        return b"\x00"


@cache
def _load_stun_vectors(path: Path) -> dict[str, StunVector]:
    document = json.loads(path.read_text(encoding="utf-8"))
    return {
        entry["name"]: StunVector(
            name=entry["name"],
            data=bytes.fromhex(entry["hex"]),
            source=entry.get("source", {}),
            credentials=entry.get("credentials", {}),
            expected=entry.get("expected", {}),
        )
        for entry in document["vectors"]
    }


def _stun_vectors_path() -> Path:
    return shared_dir() / "vectors" / "stun-vectors.json"


@pytest.fixture(scope="session")
def stun_vectors() -> dict[str, StunVector]:
    """Every vector of stun-vectors.json by name, valid and negative ones."""
    path = _stun_vectors_path()
    if not path.is_file():
        pytest.fail(_missing(path), pytrace=False)
    return _load_stun_vectors(path)


@pytest.fixture
def stun_vector(request: pytest.FixtureRequest, stun_vectors: dict[str, StunVector]) -> StunVector:
    """One valid vector; tests asking for it run once per valid vector."""
    return stun_vectors[request.param]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``stun_vector`` over the valid vectors' names (known at collection time)."""
    if "stun_vector" not in metafunc.fixturenames:
        return
    path = _stun_vectors_path()
    if path.is_file():
        names = [v.name for v in _load_stun_vectors(path).values() if v.valid]
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


def go_quoted_bytes(literal: str) -> bytes:
    """Decode a Go interpreted string literal (with its quotes) into the bytes it denotes.

    Covers the escapes of the Go spec: ``\\a \\b \\f \\n \\r \\t \\v \\\\ \\" \\'``, ``\\xHH``,
    octal ``\\OOO``, ``\\uHHHH`` and ``\\UHHHHHHHH`` (UTF-8 encoded); other characters stand for
    their UTF-8 encoding, which is how Go prints valid multi-byte sequences.
    """
    if len(literal) < 2 or literal[0] != '"' or literal[-1] != '"':
        raise ValueError(f"not a Go string literal: {literal[:20]!r}")
    body = literal[1:-1]
    simple = {
        "a": 7,
        "b": 8,
        "f": 12,
        "n": 10,
        "r": 13,
        "t": 9,
        "v": 11,
        "\\": 92,
        '"': 34,
        "'": 39,
    }
    out = bytearray()
    i = 0
    while i < len(body):
        char = body[i]
        if char != "\\":
            out += char.encode("utf-8")
            i += 1
            continue
        escape = body[i + 1]
        if escape in simple:
            out.append(simple[escape])
            i += 2
        elif escape == "x":
            out.append(int(body[i + 2 : i + 4], 16))
            i += 4
        elif escape in "01234567":
            out.append(int(body[i + 1 : i + 4], 8))
            i += 4
        elif escape in "uU":
            width = 4 if escape == "u" else 8
            out += chr(int(body[i + 2 : i + 2 + width], 16)).encode("utf-8")
            i += 2 + width
        else:
            raise ValueError(f"unknown Go escape \\{escape}")
    return bytes(out)


def read_go_fuzz_file(text: str) -> bytes:
    """The payload of a ``go test fuzz v1`` corpus file holding one ``[]byte("...")`` value."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "go test fuzz v1":
        raise ValueError("not a 'go test fuzz v1' file")
    value = lines[1].strip()
    prefix = "[]byte("
    if not value.startswith(prefix) or not value.endswith(")"):
        raise ValueError(f"expected a []byte literal, got {value[:20]!r}")
    return go_quoted_bytes(value[len(prefix) : -1])


@attrs.frozen
class FuzzMaterial:
    """The seed corpora and captures of ``shared/vectors``, as bytes keyed by relative path."""

    root: Path

    def coturn_seeds(self) -> dict[str, bytes]:
        """Every file of coturn's ``*_seed_corpus`` folders (server and client parsers)."""
        return {
            str(path.relative_to(self.root)): path.read_bytes()
            for path in sorted((self.root / "fuzz" / "coturn").glob("*_seed_corpus/*"))
            if path.is_file()
        }

    def coturn_seed(self, name: str) -> bytes:
        """One file of coturn's server-side corpus, e.g. ``"16.raw"``."""
        return (self.root / "fuzz" / "coturn" / "FuzzStun_seed_corpus" / name).read_bytes()

    def pion_channel_data(self) -> dict[str, bytes]:
        """pion/turn's FuzzChannelData corpus, each file's payload decoded."""
        folder = self.root / "fuzz" / "pion-turn" / "FuzzChannelData"
        return {
            path.name: read_go_fuzz_file(path.read_text(encoding="utf-8"))
            for path in sorted(folder.iterdir())
            if path.is_file()
        }

    def coturn_dictionary(self) -> list[bytes]:
        """The tokens of coturn's libFuzzer dictionary (``name="value"`` lines, C escapes)."""
        text = (self.root / "fuzz" / "coturn" / "stun.dict").read_text(encoding="utf-8")
        tokens = []
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                tokens.append(go_quoted_bytes(line[line.index("=") + 1 :]))
        return tokens

    def capture(self, name: str) -> list[bytes]:
        """A pion/turn capture: one message per non-empty hex line, e.g. ``"02_chandata"``."""
        text = (self.root / "captures" / "pion-turn" / f"{name}.hex").read_text(encoding="ascii")
        return [bytes.fromhex(line) for line in text.split() if line]


@pytest.fixture(scope="session")
def fuzz_material() -> FuzzMaterial:
    """Access to the fuzz seeds and captures (fails when the shared folder is missing)."""
    return FuzzMaterial(_vectors_dir_or_fail())


@pytest.fixture(scope="session")
def go_literal() -> Any:
    """The Go string-literal decoder used to read pion's corpus (exposed for its own tests)."""
    return go_quoted_bytes
