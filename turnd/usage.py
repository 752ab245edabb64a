"""Usage accounting: what happens when an allocation ends.

The core reports each ended allocation (``AllocationEnded``, with its traffic counts and, as
``kernel_*``, the part of them the kernel fast path relayed); this module tells the other cluster
nodes, appends one JSON line to ``[usage] file`` when one is configured (reopened per line, so
logrotate can move it; a failed write is counted as ``usage.write_failures``), and logs an
``allocation.ended`` event. When the endpoint keys cannot
be read (a damaged api-keys.runtime) the line is still written, without a ``key_id``, and the
failure is counted as ``usage.keys_unreadable``.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from typing import Protocol

from turnd.core.actions import AllocationEnded
from turnd.credential_state import CredentialState
from turnd.host import ClusteredHost
from turnd.logs import event
from turnd.state import StateError


class UsageOwner(ClusteredHost, Protocol):
    """What usage accounting asks of the service that holds it, beyond ``[usage] file``, the
    core's stats (failed writes) and the cluster link (told of every ended allocation)."""

    @property
    def credentials(self) -> CredentialState:
        """The endpoint keys, to tell minted usernames from others."""


class UsageLog:
    """Accounting of ended allocations for one service."""

    def __init__(self, owner: UsageOwner) -> None:
        self._owner = owner

    def allocation_ended(self, ended: AllocationEnded) -> None:
        """Tell the cluster, write the usage line, log the event."""
        cluster = self._owner.cluster
        if cluster is not None:
            cluster.send_all(cluster.node.allocation_ended(ended.five_tuple))
        usage_file = self._owner.config.usage.file
        if usage_file:
            self.write_usage(usage_file, ended)
        event(
            logging.INFO,
            "allocation.ended",
            username=ended.username,
            client=str(ended.five_tuple.client),
            relay=str(ended.relay),
            reason=ended.reason,
            seconds=round(ended.ended - ended.started, 1),
            packets_to_peer=ended.packets_to_peer,
            bytes_to_peer=ended.bytes_to_peer,
            packets_to_client=ended.packets_to_client,
            bytes_to_client=ended.bytes_to_client,
            kernel_packets_to_peer=ended.kernel_packets_to_peer,
            kernel_bytes_to_peer=ended.kernel_bytes_to_peer,
            kernel_packets_to_client=ended.kernel_packets_to_client,
            kernel_bytes_to_client=ended.kernel_bytes_to_client,
        )

    def write_usage(self, path: str, ended: AllocationEnded) -> None:
        """Append one JSON line of accounting for an ended relay; a write failure is logged.

        Unreadable endpoint keys are counted and logged, and the name is taken as not minted by
        the endpoint: the line is still written (this runs from the core's timer, where a raise
        would lose the rest of the batch)."""
        key_id, tag = None, ended.rest_id or None
        if ended.rest_id and ended.rest_id.split(":", 1)[0] in self._endpoint_keys():
            key_id, _, tag = ended.rest_id.partition(":")  # minted by the credential endpoint
        record = {
            "username": ended.username,
            "key_id": key_id,
            "customIdentifier": tag or None,
            "transport": ended.five_tuple.transport.value,
            "client": str(ended.five_tuple.client),
            "relay": str(ended.relay),
            "reason": ended.reason,
            "start": round(ended.started, 3),
            "duration": round(ended.ended - ended.started, 3),
            "packets_to_peer": ended.packets_to_peer,
            "bytes_to_peer": ended.bytes_to_peer,
            "packets_to_client": ended.packets_to_client,
            "bytes_to_client": ended.bytes_to_client,
            "kernel_packets_to_peer": ended.kernel_packets_to_peer,
            "kernel_bytes_to_peer": ended.kernel_bytes_to_peer,
            "kernel_packets_to_client": ended.kernel_packets_to_client,
            "kernel_bytes_to_client": ended.kernel_bytes_to_client,
        }
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        try:
            # Reopened per line: survives logrotate. One O_APPEND write per line: the workers of
            # a node append to the same file, and no line is cut into another.
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                written = os.write(fd, line)
            finally:
                os.close(fd)
            if written != len(line):
                raise OSError(errno.ENOSPC, f"wrote {written} of {len(line)} bytes")
        except OSError as exc:
            self._owner.core.stats["usage.write_failures"] += 1
            event(logging.ERROR, "usage.write_failed", path=path, reason=exc.strerror or str(exc))

    def _endpoint_keys(self) -> dict[str, str]:
        """The credential endpoint's keys; none (counted, logged) when they cannot be read."""
        try:
            return self._owner.credentials.api_keys()
        except StateError as exc:
            self._owner.core.stats["usage.keys_unreadable"] += 1
            event(logging.ERROR, "usage.keys_unreadable", str(exc))
            return {}
