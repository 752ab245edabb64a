"""What turnctl shows people: terminal-safe text, aligned tables, readable times and sizes.

Pure formatting, no I/O: every command's human output is built from these. ``--json`` output
bypasses them and carries turnd's answer as is.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

#: Below this many seconds "last heard" shows tenths: heartbeats come every fraction of one.
PRECISE_SECONDS = 10


def printable(value: object) -> str:
    """``value`` as text for a terminal: control characters (CR, LF, TAB, NUL, ESC...) in a
    username or any other field a client chose are written as Python escapes, so a name cannot
    forge a row or a line, or drive the terminal (GHSA-4g7c-p5wg-j4hp); printable text is kept
    verbatim. ``--json`` output carries the exact value."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def table(rows: Iterable[Sequence[object]], headers: Sequence[str] | None = None) -> str:
    """Columns two spaces apart; numbers right-aligned, everything else left-aligned."""
    body = [list(row) for row in rows]
    cells = ([list(headers)] if headers else []) + [
        [printable(cell) for cell in row] for row in body
    ]
    if not cells:
        return ""
    width = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    numeric = [
        bool(body) and all(isinstance(row[i], int | float) for row in body)
        for i in range(len(width))
    ]
    lines = []
    for row in cells:
        padded = [
            cell.rjust(w) if right else cell.ljust(w)
            for cell, w, right in zip(row, width, numeric, strict=True)
        ]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def indent(text: str) -> str:
    """``text`` indented two spaces: a table under its heading."""
    return "\n".join("  " + line for line in text.splitlines())


def duration(seconds: float) -> str:
    """``3d 4h``, ``2h 05m``, ``4m 09s``, ``7s``: two units at most."""
    s = max(0, round(seconds))
    days, s = divmod(s, 86_400)
    hours, s = divmod(s, 3_600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {s:02d}s"
    return f"{s}s"


def size(octets: int) -> str:
    """Bytes in binary units: ``512 B``, ``1.5 KiB``, ``3.0 GiB``."""
    value, unit = float(octets), "B"
    for bigger in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{octets} B" if unit == "B" else f"{value:.1f} {unit}"


def stamp(when: Any) -> str:
    """A Unix time as ``2026-01-02 03:04:05Z``; anything else as its text."""
    if not isinstance(when, int | float):
        return str(when)
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(when))


def yes(flag: Any) -> str:
    """``yes`` or ``no``."""
    return "yes" if flag else "no"


def by_name(counts: Any) -> str:
    """``{"auth": 2, "short": 0}`` as ``auth 2``; ``none`` when nothing was counted."""
    if not isinstance(counts, dict) or not any(counts.values()):
        return "none"
    return ", ".join(f"{name} {count}" for name, count in sorted(counts.items()) if count)


def spans(ranges: Iterable[Sequence[int]]) -> str:
    """``[[49152, 49215], [49280, 49280]]`` as ``49152-49215 49280``."""
    return " ".join(f"{low}-{high}" if high != low else str(low) for low, high in ranges) or "-"


def last_heard(node: dict[str, Any]) -> str:
    """When a cluster node was last heard from: ``0.4s ago``, ``3m 02s ago``, ``never``."""
    if node.get("self"):
        return "-"
    ago = node.get("last_heard_ago")
    if not isinstance(ago, int | float):
        return "never"
    return f"{ago:.1f}s ago" if ago < PRECISE_SECONDS else f"{duration(ago)} ago"
