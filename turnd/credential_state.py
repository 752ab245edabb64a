"""Credential state: static users, REST secrets, endpoint keys and revocations, and the
revocations' persistence in the state directory (``revoked.runtime``).

The authenticator itself is the core's (``core.auth.authenticator``); this module rebuilds it from
the configuration, the users file and the runtime files (turnctl's), keeping every revocation.
Revocations are written off the event loop by one thread, in order; a failed write is counted
(``state.write_failures``) and the next one rewrites the whole file, so none is lost.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

from auth.credentials import parse_rest_username
from stun.keys import unquote
from turnd.assembly import build_authenticator
from turnd.config import Config
from turnd.core.actions import Action, AllocationEnded
from turnd.host import ClusteredHost
from turnd.logs import event
from turnd.runtime import RuntimeCredentials
from turnd.state import StateError

#: Seconds between prunes of expired REST revocations: they can only grow on a revoke, so the
#: prune runs then, at most this often (an expired name costs memory only, never a wrong answer).
REVOCATION_PRUNE_INTERVAL = 600.0


class CredentialOwner(ClusteredHost, Protocol):
    """What the credential state asks of the service that holds it, beyond the configuration,
    the core whose authenticator it rebuilds and the cluster link (told of every revocation)."""

    def execute(self, actions: list[Action]) -> None:
        """Carry out the core's actions (the allocations a revocation ends)."""


class CredentialState:
    """Users, secrets, keys and revocations of one service, kept across reloads and restarts."""

    def __init__(self, owner: CredentialOwner) -> None:
        self._owner = owner
        config = owner.config
        self.runtime = RuntimeCredentials(config.server.state_dir)
        #: Revoked usernames: kept across reloads of the authenticator and, in the state
        #: directory, across restarts.
        self.revoked, damaged = self.runtime.revoked(
            accept_damaged=config.server.accept_damaged_revocations
        )
        self._revocations_pruned = time.time()
        #: A revocation write failed: the next one rewrites the whole file, so none is lost.
        self._revocations_unsaved = False
        #: Live revocations per credential endpoint key (api.max_revocations_per_key).
        self._revoked_per_key: Counter[str] = Counter()
        #: One thread writes revocations, in order, off the event loop.
        self._state_writer = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="turnd-state"
        )
        #: Told of every revocation made here that the rest of the node must make too (the
        #: supervisor's fan-out, with workers).
        self.on_revoke: Callable[[str], None] | None = None
        self.rebuild_authenticator()
        loaded = len(self.revoked)
        self._prune_revocations(time.time())
        if damaged:
            owner.core.stats["state.damaged_revocations"] += damaged
            event(
                logging.WARNING,
                "state.damaged_revocations_dropped",
                "server.accept_damaged_revocations: damaged lines dropped",
                file=str(self.runtime.revoked_path),
                lines=damaged,
            )
        if damaged or len(self.revoked) < loaded:
            self._compact_revocations()

    async def stop(self) -> None:
        """Wait until the revocations still queued reach the disk."""
        await asyncio.get_running_loop().run_in_executor(None, self._state_writer.shutdown)

    def rebuild_authenticator(self) -> None:
        """Users and secrets from the config, the users file and the runtime files, with the
        revocations so far."""
        self._owner.core.auth.authenticator = build_authenticator(
            self._owner.config, self.runtime, self.revoked
        )

    def authenticator_users(self) -> frozenset[str]:
        """The static users the authenticator knows (config, users file, runtime)."""
        return self._owner.core.auth.authenticator.static_usernames

    def api_keys(self, config: Config | None = None) -> dict[str, str]:
        """Credential endpoint keys: the config's, then turnctl's (which win on a clash)."""
        keys = {
            key: token.reveal() for key, token in (config or self._owner.config).api.keys.items()
        }
        keys.update(self.runtime.api_keys())
        return keys

    def secret_sources(self, config: Config | None = None) -> list[tuple[str, str]]:
        """REST secrets, newest first, with where each comes from ("runtime" or "config")."""
        return [(s, "runtime") for s in self.runtime.secrets()] + [
            (s.reveal(), "config") for s in (config or self._owner.config).auth.secrets
        ]

    def revoke(self, username: str, *, broadcast: bool = True, persist: bool = True) -> int:
        """Refuse ``username`` from now on and end its allocations here; how many ended.

        In a cluster (and with ``broadcast``) every other node is told to do the same, and so is
        every other worker of this node (:attr:`on_revoke`). Without ``persist`` the state file
        is left alone: another worker of this node writes it.
        """
        new = username not in self.revoked
        self.revoked.add(username)
        if broadcast and self._owner.cluster is not None:
            self._owner.cluster.send_all(self._owner.cluster.node.announce_revocation(username))
        if broadcast and self.on_revoke is not None:
            self.on_revoke(username)
        now = time.time()
        actions = self._owner.core.revoke(username, now)
        if new:
            key = _minted_for(username)
            if key is not None:
                self._revoked_per_key[key] += 1
            if persist:
                self._store_revocation(username, now)
        ended = {a.five_tuple for a in actions if isinstance(a, AllocationEnded)}
        self._owner.execute(actions)
        event(logging.INFO, "auth.revoked", username=username, allocations=len(ended))
        return len(ended)

    def unrevoke(self, username: str, *, persist: bool = True) -> None:
        """Accept ``username`` again (turnctl users add of a revoked name); the caller rebuilds
        the authenticator. Without ``persist`` the state file is left to another worker."""
        if username in self.revoked:
            self.revoked.discard(username)
            key = _minted_for(username)
            if key is not None:
                self._revoked_per_key[key] -= 1
            if persist:
                self._compact_revocations()

    def _store_revocation(self, username: str, now: float) -> None:
        """Append ``username`` to revoked.runtime; when a prune is due, prune and rewrite the
        file with the live names instead (the only way lines leave it, with :meth:`unrevoke`)."""
        if now - self._revocations_pruned >= REVOCATION_PRUNE_INTERVAL:
            self._prune_revocations(now)
            self._compact_revocations()
        elif self._revocations_unsaved:
            self._compact_revocations()
        else:
            self._write_state(self.runtime.append_revoked, username)

    def _prune_revocations(self, now: float) -> None:
        """Drop revoked REST usernames that have expired anyway (the authenticator's
        ``prune_revoked``)."""
        auth = self._owner.core.auth
        auth.authenticator = auth.authenticator.prune_revoked(now)
        kept = auth.authenticator.revoked
        self.revoked = {name for name in self.revoked if unquote(name) in kept}
        self._revocations_pruned = now
        keys = (_minted_for(name) for name in self.revoked)
        self._revoked_per_key = Counter(key for key in keys if key is not None)

    def revocations(self, key_id: str) -> int:
        """How many live revocations hold usernames minted for ``key_id`` (EndpointHooks)."""
        return self._revoked_per_key[key_id]

    def _compact_revocations(self) -> None:
        """Rewrite revoked.runtime with just :attr:`revoked`."""
        self._revocations_unsaved = False
        self._write_state(self.runtime.save_revoked, set(self.revoked))

    def _write_state(self, write: Callable[[Any], None], argument: Any) -> None:
        """Run ``write(argument)`` on the state writer thread (in the caller when no event loop
        runs); a failure is logged and counted, and the revocation holds until restart."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._state_written(None, write, argument)
            return
        try:
            loop.run_in_executor(self._state_writer, self._state_written, loop, write, argument)
        except RuntimeError:  # the writer has shut down (stop): write here, it is the last
            self._state_written(None, write, argument)

    def _state_written(
        self, loop: asyncio.AbstractEventLoop | None, write: Callable[[Any], None], argument: Any
    ) -> None:
        try:
            write(argument)
        except StateError as exc:
            if loop is None:
                self._state_not_saved(str(exc))
            else:
                loop.call_soon_threadsafe(self._state_not_saved, str(exc))

    def _state_not_saved(self, message: str) -> None:
        self._revocations_unsaved = True
        self._owner.core.stats["state.write_failures"] += 1
        event(logging.ERROR, "auth.revoked_not_saved", f"revocations hold until restart: {message}")


def _minted_for(username: str) -> str | None:
    """The endpoint key a REST username was minted for (auth.endpoint.credential_owner's rule,
    without importing aiohttp); None for other usernames."""
    rest = parse_rest_username(username)
    return rest.ident.partition(":")[0] if rest is not None and rest.ident else None
