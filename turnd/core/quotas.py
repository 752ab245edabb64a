"""Quotas: how many allocations a node, a user and a client IP hold, and the per-allocation limits
on permissions, channels and RFC 6062 peer connections (RFC 8656 §7.2 step 10, §9.2, §11.2).

Theory of operation: every quota check lives here and counts its refusal in the server's stats
under ``quota.<name>``. The allocation counts include allocations being opened (their relays are
still binding), so a client cannot exceed its quota by sending Allocates faster than the adapter
binds; each is counted by :meth:`AllocationQuotas.add` when its ports are taken and uncounted by
:meth:`AllocationQuotas.forget` exactly once, whichever way it ends.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from types import MappingProxyType

from turnd.core.allocation import Allocation
from turnd.core.request import StunError
from turnd.core.settings import CoreSettings


class AllocationQuotas:
    """Allocation counts per user and per client IP, and the checks against the settings."""

    def __init__(self, settings: CoreSettings, stats: Counter[str]) -> None:
        self.settings = settings
        self.stats = stats
        self._per_user: Counter[str] = Counter()
        self._per_ip: Counter[str] = Counter()
        #: Allocations the node's other workers hold (turnd.workers), per user, per client IP
        #: and in all: the quotas are the node's, so the checks count them too. The supervisor
        #: keeps them current; empty on a single process.
        self.elsewhere_user: Counter[str] = Counter()
        self.elsewhere_ip: Counter[str] = Counter()
        self.elsewhere_total = 0
        #: Told of every count this worker adds (+1) or forgets (-1): (username, host, delta).
        self.on_change: Callable[[str, str, int], None] | None = None

    @property
    def per_user(self) -> Mapping[str, int]:
        """Allocations (live or being opened) per username; a read-only view."""
        return MappingProxyType(self._per_user)

    @property
    def per_ip(self) -> Mapping[str, int]:
        """Allocations (live or being opened) per client IP; a read-only view."""
        return MappingProxyType(self._per_ip)

    def check_allocate(self, username: str, host: str, held: int, draining: bool) -> None:
        """§7.2 step 10 (486) and the node's capacity (508) for a new allocation of
        ``username`` from ``host``, the node holding ``held`` (live and being opened)."""
        settings = self.settings
        if draining:
            self.stats["quota.draining"] += 1
            raise StunError(508, "this server is draining: it takes no new allocations")
        if held + self.elsewhere_total >= settings.max_allocations:
            self.stats["quota.node"] += 1
            raise StunError(508, "node allocation limit reached")
        user_held = self._per_user[username] + self.elsewhere_user[username]
        if user_held >= settings.max_allocations_per_user:
            self.stats["quota.user"] += 1
            raise StunError(486)
        if self._per_ip[host] + self.elsewhere_ip[host] >= settings.max_allocations_per_ip:
            self.stats["quota.client_ip"] += 1
            raise StunError(486, "Allocation Quota Reached for this client address")

    def add(self, username: str, host: str) -> None:
        """One allocation more for ``username`` and ``host``."""
        self._per_user[username] += 1
        self._per_ip[host] += 1
        if self.on_change is not None:
            self.on_change(username, host, 1)

    def forget(self, username: str, host: str) -> None:
        """One allocation less for the quotas of ``username`` and ``host``."""
        for counter, key in ((self._per_user, username), (self._per_ip, host)):
            counter[key] -= 1
            if not counter[key]:
                del counter[key]
        if self.on_change is not None:
            self.on_change(username, host, -1)

    def count_elsewhere(self, username: str, host: str, delta: int) -> None:
        """Another worker of the node took (+1) or gave back (-1) an allocation."""
        for counter, key in ((self.elsewhere_user, username), (self.elsewhere_ip, host)):
            counter[key] += delta
            if counter[key] <= 0:
                del counter[key]
        self.elsewhere_total = max(0, self.elsewhere_total + delta)

    def check_permissions(self, alloc: Allocation, hosts: set[str]) -> None:
        """Refuse (508) what would take ``alloc`` past its permission limit (§9.2, §11.2)."""
        new = hosts - alloc.permissions.keys()
        if len(alloc.permissions) + len(new) > self.settings.max_permissions_per_allocation:
            self.stats["quota.permissions"] += 1
            raise StunError(508, "too many permissions on this allocation")

    def check_channel(self, alloc: Allocation, number: int) -> None:
        """Refuse (508) a new channel past ``alloc``'s channel limit (§11.2)."""
        if (
            number not in alloc.channels
            and len(alloc.channels) >= self.settings.max_channels_per_allocation
        ):
            self.stats["quota.channels"] += 1
            raise StunError(508, "too many channels on this allocation")

    def peer_connections_full(self, held: int) -> bool:
        """Whether an allocation holding ``held`` peer connections may open no more (RFC 6062
        §5.2, §5.3; counted when so)."""
        if held < self.settings.max_peer_connections_per_allocation:
            return False
        self.stats["quota.peer_connections"] += 1
        return True
