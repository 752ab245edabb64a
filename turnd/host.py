"""The service as its satellites see it: the base Protocols their narrow interfaces extend.

Each satellite declares a Protocol of what it asks of :class:`turnd.service.TurnService`
(``CredentialOwner``, ``UsageOwner``, ``OperationsHost``, ``ClusterHost``, ...); what they share
— the current configuration and the core, and the cluster link — is declared here once, and
each extends one of these with only what it adds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from turnd.cluster import ClusterLink
    from turnd.config import Config
    from turnd.core.server import TurnServer


class ServiceHost(Protocol):
    """The service's current configuration and its core."""

    @property
    def config(self) -> Config:
        """The current configuration (a reload swaps it)."""

    @property
    def core(self) -> TurnServer:
        """The core: its state, its stats, its authenticator."""


class ClusteredHost(ServiceHost, Protocol):
    """A :class:`ServiceHost` that may be one node of a cluster."""

    @property
    def cluster(self) -> ClusterLink | None:
        """This node's cluster link, if any."""
