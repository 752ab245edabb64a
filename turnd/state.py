"""The state directory: secrets turnd generates on first start, and what turnctl adds at run time.

Files are created with mode 0600 inside a 0700 directory; an existing file is reused, so a REST
secret handed to an application back end stays valid across restarts and upgrades.

Every state file is read with :func:`read_state` and replaced with :func:`write_atomic` (a
temporary file in the same directory, fsync, ``os.replace``, fsync of the directory), so a crash
or a full disk never leaves half a file. Whatever is wrong with one — a directory in its place,
no permission, not UTF-8, a bad line, no space left — is a :class:`StateFileError` naming the
file, what is wrong and what to do; start refuses with it and a reload keeps the old state.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import stat
from pathlib import Path

from turnd.logs import event

REST_SECRET_FILE = "rest-secret"
NONCE_KEY_FILE = "nonce-key"
#: 32 random bytes: the HMAC key size of SHA-256, beyond any brute force.
GENERATED_SECRET_BYTES = 32
#: Permission bits a secret file must not have: anyone but turnd's user may read or change it.
EXPOSED_BITS = 0o077
#: Of those, the ones that let anyone change the secret: refused, not just warned about.
WRITABLE_BITS = stat.S_IWGRP | stat.S_IWOTH


class StateError(RuntimeError):
    """The state directory cannot be used; the message says what to do."""


class StateFileError(StateError, ValueError):
    """One state file is unusable: ``path``, what is wrong with it and what to do about it.

    Also a ValueError, so that a control API request that meets one is refused with its message
    rather than answered 500."""

    def __init__(self, path: str | Path, problem: str, remedy: str) -> None:
        self.path = str(path)
        self.problem = problem
        self.remedy = remedy
        super().__init__(f"{path}: {problem}; {remedy}")


def _os_problem(exc: OSError) -> str:
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not a file"
    if exc.errno == errno.ENOSPC:
        return "no space left on the device"
    return exc.strerror or str(exc)


def read_state(path: str | Path, encoding: str = "utf-8") -> str | None:
    """The text of state file ``path``, None when it does not exist; StateFileError otherwise."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    except NotADirectoryError as exc:
        raise StateFileError(
            path, "a directory above it is a file", "set server.state_dir to a directory"
        ) from exc
    except OSError as exc:
        raise StateFileError(
            path, f"cannot read it: {_os_problem(exc)}", "make it a file turnd's user can read"
        ) from exc
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise StateFileError(
            path,
            f"not {encoding.upper()} text (byte {exc.start})",
            "restore it from a backup, or remove it if you can do without what it held",
        ) from exc


def write_atomic(
    path: str | Path, text: str | bytes, encoding: str = "utf-8", *, replace: bool = True
) -> None:
    """Replace ``path`` with ``text`` (mode 0600) all at once; StateFileError if it fails.

    The old content stays in place until the new one is on disk, also when the disk is full.
    With ``replace=False`` an existing ``path`` is kept and FileExistsError raised (two turnds
    creating the same secret at once agree on one).
    """
    target = Path(path)
    tmp: Path | None = None
    try:
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(text.encode(encoding) if isinstance(text, str) else text)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(tmp, target)
            tmp = None
        else:
            os.link(tmp, target)  # FileExistsError when another process made it first
        fsync_directory(target.parent)
    except FileExistsError:
        raise
    except OSError as exc:
        raise StateFileError(
            target,
            f"cannot write it: {_os_problem(exc)}",
            "free space or fix the permissions of its directory (server.state_dir); "
            "the previous content is unchanged",
        ) from exc
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def append_line(path: str | Path, line: str) -> None:
    """Append ``line`` and a newline to ``path`` (created 0600) and fsync it; StateFileError."""
    target = Path(path)
    try:
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (line + "\n").encode("utf-8"))  # one write: a line is never interleaved
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise StateFileError(
            target,
            f"cannot append to it: {_os_problem(exc)}",
            "free space or fix the permissions of its directory (server.state_dir)",
        ) from exc


def fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_private(path: Path) -> None:
    """Warn when secret file ``path`` is readable by others; refuse when others may write it."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return
    if mode & WRITABLE_BITS:
        raise StateFileError(
            path,
            f"mode {mode:04o}: others may change this secret",
            f"run chmod 600 {path} (and check nobody replaced it)",
        )
    if mode & EXPOSED_BITS:
        event(
            logging.WARNING,
            "state.exposed_secret",
            f"others may read this secret: run chmod 600 {path}",
            file=str(path),
            mode=f"{mode:04o}",
        )


def read_or_create_secret(state_dir: str | Path, name: str) -> tuple[str, bool]:
    """The secret kept in ``state_dir/name`` (created if missing) and whether it was created.

    An existing file must hold the secret: an empty one is an error (it was cut short), not a
    reason to make a new secret behind the back ends that hold the old one.
    """
    directory = Path(state_dir)
    path = directory / name
    existing = read_state(path, encoding="ascii")
    if existing is not None:
        value = existing.strip()
        if not value or any(c.isspace() for c in value):
            raise StateFileError(
                path,
                "empty" if not value else "holds more than one secret",
                "remove it to have turnd generate a new secret (back ends holding the old one "
                "must then be given the new one), or restore it from a backup",
            )
        check_private(path)
        return value, False
    value = secrets.token_urlsafe(GENERATED_SECRET_BYTES)
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StateError(
            f"cannot create {directory}: {exc.strerror} "
            "(set server.state_dir / --state-dir to a writable directory)"
        ) from exc
    try:
        write_atomic(path, value + "\n", encoding="ascii", replace=False)
    except FileExistsError:
        return read_or_create_secret(state_dir, name)  # now it exists: read, never recreate
    except StateFileError as exc:
        raise StateError(
            f"{exc} (or set server.state_dir / --state-dir to a writable directory)"
        ) from exc
    return value, True
