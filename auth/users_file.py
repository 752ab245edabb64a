"""Reading a static users file from disk: the I/O half of :func:`parse_users_file`."""

from __future__ import annotations

from pathlib import Path

from auth.credentials import Credential, parse_users_file

__all__ = ["load_users_file"]


def load_users_file(path: str | Path) -> dict[str, Credential]:
    """Read and parse the users file at ``path`` (UTF-8).

    Raises OSError when it cannot be read and ValueError, prefixed with the path, when the file is
    not UTF-8 or a line is wrong (see :func:`auth.credentials.parse_users_file`).
    """
    try:
        return parse_users_file(Path(path).read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
