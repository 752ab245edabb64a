"""The state directory: secrets turnd generates on first start and keeps across restarts.

Files are created with mode 0600 inside a 0700 directory; an existing file is reused, so a REST
secret handed to an application back end stays valid across restarts and upgrades.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

REST_SECRET_FILE = "rest-secret"
NONCE_KEY_FILE = "nonce-key"
#: 32 random bytes: the HMAC key size of SHA-256, beyond any brute force.
GENERATED_SECRET_BYTES = 32


class StateError(RuntimeError):
    """The state directory cannot be used; the message says what to do."""


def read_or_create_secret(state_dir: str | Path, name: str) -> tuple[str, bool]:
    """The secret kept in ``state_dir/name`` (created if missing) and whether it was created."""
    directory = Path(state_dir)
    path = directory / name
    try:
        existing = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        existing = ""
    except OSError as exc:
        raise StateError(f"cannot read {path}: {exc.strerror}") from exc
    if existing:
        return existing, False
    value = secrets.token_urlsafe(GENERATED_SECRET_BYTES)
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(value + "\n")
    except FileExistsError:
        return read_or_create_secret(state_dir, name)
    except OSError as exc:
        raise StateError(
            f"cannot create {path}: {exc.strerror} "
            "(set server.state_dir / --state-dir to a writable directory)"
        ) from exc
    return value, True
