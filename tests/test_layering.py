"""The sans-I/O rule (DESIGN.md "Layering"): pure modules import no I/O, clock or randomness.

Walks every module of the pure packages with ``ast`` — nothing is imported or executed — and
reports each offending import with its file and line.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: Top-level modules a pure module must not import: event loops, sockets, clocks, randomness,
#: processes and threads, network setup and HTTP.
BANNED = frozenset(
    {
        "asyncio",
        "asyncio_dgram",
        "socket",
        "selectors",
        "time",
        "random",
        "secrets",
        "os",
        "pyroute2",
        "scapy",
        "aiohttp",
        "subprocess",
        "threading",
    }
)

#: Pure packages (walked recursively) and the I/O modules inside them that are allowed, by file
#: name: the credential endpoint (aiohttp) and the service IP's netlink setup (pyroute2).
PURE_PACKAGES: dict[str, tuple[str, ...]] = {
    "stun": (),
    "auth": ("endpoint.py",),
    "forwarding": ("netsetup.py",),
    "turnd/core": (),
}


def pure_modules() -> list[Path]:
    """Every ``.py`` file of the pure packages, minus the allowed I/O modules."""
    found = []
    for package, exempt in PURE_PACKAGES.items():
        for path in sorted((REPO / package).rglob("*.py")):
            if path.name not in exempt:
                found.append(path)
    return found


def _banned(module: str | None) -> bool:
    return module is not None and module.split(".", 1)[0] in BANNED


def banned_imports(source: str, filename: str) -> list[str]:
    """``file:line: import X`` for each banned import in ``source``.

    Catches ``import X``, ``import X.y``, ``from X import y``, ``from X.y import z`` anywhere in
    the module (also inside functions and ``if TYPE_CHECKING`` blocks), and
    ``importlib.import_module("X")`` / ``__import__("X")`` with a literal name.
    """
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            dynamic = (isinstance(func, ast.Name) and func.id == "__import__") or (
                isinstance(func, ast.Attribute) and func.attr == "import_module"
            )
            first = node.args[0]
            if dynamic and isinstance(first, ast.Constant) and isinstance(first.value, str):
                names = [first.value]
        found += [f"{filename}:{node.lineno}: imports {name}" for name in names if _banned(name)]
    return found


def test_walk_finds_the_stun_modules() -> None:
    """The walk is not empty: it sees at least the STUN codec, so the rule cannot pass vacuously."""
    names = {path.relative_to(REPO).as_posix() for path in pure_modules()}
    expected = {
        "stun/__init__.py",
        "stun/addresses.py",
        "stun/attributes.py",
        "stun/channeldata.py",
        "stun/errors.py",
        "stun/framing.py",
        "stun/message.py",
    }
    assert expected <= names


def test_pure_modules_import_no_io() -> None:
    """No pure module imports asyncio, sockets, clocks, randomness, processes, threads or HTTP."""
    offences = []
    for path in pure_modules():
        rel = path.relative_to(REPO).as_posix()
        offences += banned_imports(path.read_text(encoding="utf-8"), rel)
    assert not offences, "I/O imports in pure modules:\n" + "\n".join(offences)


def test_checker_catches_every_import_form() -> None:
    """The checker itself flags each spelling of an import, and only banned modules."""
    source = "\n".join(
        [
            "import os.path",
            "from time import monotonic",
            "import json, socket as s",
            "def f():",
            "    import secrets",
            "    return __import__('random')",
            "import importlib",
            "importlib.import_module('asyncio')",
            "from . import time",
            "import timeit",
            "from hashlib import sha1",
        ]
    )
    assert sorted(banned_imports(source, "m.py")) == [
        "m.py:1: imports os.path",
        "m.py:2: imports time",
        "m.py:3: imports socket",
        "m.py:5: imports secrets",
        "m.py:6: imports random",
        "m.py:8: imports asyncio",
    ]


def test_exempt_io_modules_are_skipped() -> None:
    """Only the named I/O adapters of auth/ and forwarding/ are exempt from the walk."""
    names = {path.relative_to(REPO).as_posix() for path in pure_modules()}
    assert not names & {"auth/endpoint.py", "forwarding/netsetup.py"}
    assert {"auth/nonce.py", "auth/users_file.py", "forwarding/hashing.py"} <= names


def test_every_exemption_is_a_real_io_module() -> None:
    """Each exempt name is a file that exists and does import I/O: no stale exemptions."""
    for package, exempt in PURE_PACKAGES.items():
        for name in exempt:
            path = REPO / package / name
            assert path.is_file(), f"{package}: exempts {name}, which does not exist"
            source = path.read_text(encoding="utf-8")
            assert banned_imports(source, name), f"{package}/{name} needs no exemption"
