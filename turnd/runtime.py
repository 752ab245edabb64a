"""Users, REST secrets, keys and revocations made at run time with turnctl, kept in the state
directory.

The configuration file stays the operator's: turnctl never edits it. What turnctl adds lives in
``<state_dir>/users.runtime`` (``name:password`` lines, the users-file format) and
``<state_dir>/secrets.runtime`` (one secret a line, newest first). Both are 0600 and replaced
atomically, so a crash never leaves half a file; both are read again on every change and reload,
and merged with the configuration's users and secrets (a runtime user shadows a configured one of
the same name; runtime secrets come before configured ones, so the newest mints).
``<state_dir>/revoked.runtime`` holds revoked usernames (one JSON string a line), so a
revocation outlives a restart; REST usernames leave it once they have expired anyway.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from pathlib import Path

from auth.credentials import Password, parse_users_file, prepare_username
from stun.keys import opaque_string
from turnd.state import StateFileError, append_line, read_state, write_atomic

USERS_FILE = "users.runtime"
SECRETS_FILE = "secrets.runtime"
KEYS_FILE = "api-keys.runtime"
REVOKED_FILE = "revoked.runtime"
#: A credential endpoint key id: it is part of URLs and usernames (auth/endpoint.py's rule).
KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~@+=-]{0,63}")
#: Bytes of a generated secret: the SHA-1 block size used by the REST HMAC is 64; 32 random
#: bytes are beyond any search.
GENERATED_SECRET_BYTES = 32
#: What to do about a bad line in a runtime file.
_FIX_LINE = "fix or remove that line (turnctl writes these files; restore a backup if unsure)"


def secret_id(secret: str) -> str:
    """A short public name for a secret: the first 8 hex digits of its SHA-256."""
    return hashlib.sha256(secret.encode()).hexdigest()[:8]


def _printable_token(value: str) -> bool:
    """Non-empty printable ASCII without spaces: what a secret or token file line may hold (a
    NUL or another control character was accepted before, and written to the file)."""
    return bool(value) and value.isascii() and value.isprintable() and " " not in value


class RuntimeCredentials:
    """The runtime users and secrets of one state directory."""

    def __init__(self, state_dir: str | Path) -> None:
        self.users_path = Path(state_dir) / USERS_FILE
        self.secrets_path = Path(state_dir) / SECRETS_FILE
        self.keys_path = Path(state_dir) / KEYS_FILE
        self.revoked_path = Path(state_dir) / REVOKED_FILE

    def users(self) -> dict[str, str]:
        """Runtime users and their passwords."""
        text = read_state(self.users_path)
        if text is None:
            return {}
        try:
            parsed = parse_users_file(text)
        except ValueError as exc:
            raise StateFileError(self.users_path, str(exc), _FIX_LINE) from None
        return {name: cred.value for name, cred in parsed.items() if isinstance(cred, Password)}

    def add_user(self, name: str, password: str) -> None:
        """Add or replace a user. Raises ValueError for a name or password the file cannot hold."""
        if not name or ":" in name or name.strip() != name:
            raise ValueError("a username must be non-empty, without ':' or edge spaces")
        # The rules the users-file reader applies (OpaqueString refuses CR, LF, NUL and every
        # other control character): a name it would refuse must not reach the file, where it
        # would make the whole file unreadable, or a CR forge a line (GHSA-4g7c-p5wg-j4hp).
        if prepare_username(name) != name:
            raise ValueError("a username must be in OpaqueString form (NFC, no control characters)")
        if not password or password.strip() != password or opaque_string(password) != password:
            raise ValueError("a password must be in OpaqueString form (no control characters)")
        users = self.users()
        users[name] = password
        self._save_users(users)

    def remove_user(self, name: str) -> bool:
        """Remove a runtime user; False if there is none of that name."""
        users = self.users()
        if users.pop(name, None) is None:
            return False
        self._save_users(users)
        return True

    def _save_users(self, users: dict[str, str]) -> None:
        write_atomic(
            self.users_path, "".join(f"{name}:{pw}\n" for name, pw in sorted(users.items()))
        )

    def secrets(self) -> list[str]:
        """Runtime REST secrets, newest first."""
        text = read_state(self.secrets_path, encoding="ascii")
        return [] if text is None else [line.strip() for line in text.splitlines() if line.strip()]

    def add_secret(self, value: str | None) -> str:
        """Add a secret (generated when ``value`` is None) as the newest; return it."""
        secret = value if value is not None else secrets.token_urlsafe(GENERATED_SECRET_BYTES)
        if not _printable_token(secret):
            raise ValueError("a secret must be non-empty printable ASCII without spaces")
        current = [s for s in self.secrets() if s != secret]
        write_atomic(self.secrets_path, "".join(f"{s}\n" for s in [secret, *current]))
        return secret

    def remove_secret(self, identifier: str) -> bool:
        """Remove the runtime secret whose :func:`secret_id` is ``identifier``."""
        current = self.secrets()
        kept = [s for s in current if secret_id(s) != identifier]
        if len(kept) == len(current):
            return False
        write_atomic(self.secrets_path, "".join(f"{s}\n" for s in kept))
        return True

    def api_keys(self) -> dict[str, str]:
        """Credential endpoint keys added at run time: key id -> bearer token."""
        text = read_state(self.keys_path, encoding="ascii")
        keys: dict[str, str] = {}
        for number, line in enumerate(() if text is None else text.splitlines(), 1):
            key, colon, token = line.partition(":")
            if not line.strip():
                continue
            if not colon or not key.strip() or not token.strip():
                problem = f"line {number} is not key_id:token"
                raise StateFileError(self.keys_path, problem, _FIX_LINE)
            keys[key.strip()] = token.strip()
        return keys

    def add_key(self, key_id: str, token: str | None) -> str:
        """Add or replace key ``key_id`` (token generated when None); return the token."""
        if not KEY_ID.fullmatch(key_id):
            raise ValueError("a key id is 1-64 of A-Z a-z 0-9 . _ ~ @ + = -, starting alnum")
        value = token if token is not None else secrets.token_urlsafe(GENERATED_SECRET_BYTES)
        if not _printable_token(value):
            raise ValueError("a token must be non-empty printable ASCII without spaces")
        keys = self.api_keys()
        keys[key_id] = value
        self._save_keys(keys)
        return value

    def remove_key(self, key_id: str) -> bool:
        """Remove a runtime key; False if there is none of that id."""
        keys = self.api_keys()
        if keys.pop(key_id, None) is None:
            return False
        self._save_keys(keys)
        return True

    def _save_keys(self, keys: dict[str, str]) -> None:
        write_atomic(self.keys_path, "".join(f"{k}:{t}\n" for k, t in sorted(keys.items())))

    def revoked(self, *, accept_damaged: bool = False) -> tuple[set[str], int]:
        """Revoked usernames and how many damaged lines were skipped.

        A line that is not one JSON string (a truncated file, an edit gone wrong) is a
        StateFileError: skipping it would accept a revoked credential again. With
        ``accept_damaged`` such lines are skipped and counted instead.
        """
        text = read_state(self.revoked_path)
        names: set[str] = set()
        damaged: list[int] = []
        for number, line in enumerate(() if text is None else text.splitlines(), 1):
            try:
                name = json.loads(line)
            except ValueError:
                name = None
            if isinstance(name, str):
                names.add(name)
            elif line.strip():
                damaged.append(number)
        if damaged and not accept_damaged:
            lines = ", ".join(str(n) for n in damaged[:5]) + (", ..." if len(damaged) > 5 else "")
            raise StateFileError(
                self.revoked_path,
                f"damaged: line {lines} is not a JSON string, so a revoked credential would "
                "work again",
                "restore it from a backup or fix the lines, or start once with "
                "--accept-damaged-revocations (server.accept_damaged_revocations = true) to drop "
                "them",
            )
        return names, len(damaged)

    def save_revoked(self, names: set[str]) -> None:
        """Replace the revoked usernames (compaction)."""
        write_atomic(self.revoked_path, "".join(json.dumps(name) + "\n" for name in sorted(names)))

    def append_revoked(self, name: str) -> None:
        """Add one revoked username at the end of the file."""
        append_line(self.revoked_path, json.dumps(name))
