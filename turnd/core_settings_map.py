"""The one mapping from the configuration to the core's settings (``CoreSettings``).

Theory of operation
-------------------
A config field that the core reads is declared with ``config_sections.core_field``: its
metadata holds a ``CoreLink`` (which ``CoreSettings`` field, which ``Conversion``), and its
default is that field's ``CoreSettings`` default converted back. So each setting has one
default (``CoreSettings``'s) and one doc (the config field's docstring), and ``core_settings``
fills the core by walking the links; a field cannot be linked and forgotten.

Beside the links, a few core settings are ``DERIVED`` from other facts (the detected relay
address, the cluster), and a few are ``CORE_ONLY`` (fixed by an RFC or set by the cluster
code). The ``[limits]`` the I/O shell enforces itself (connections, handshakes, side servers,
frame sizes) are ``SHELL_ONLY_LIMITS``. A test holds every ``[limits]`` field to "linked or
shell-only" and every ``CoreSettings`` field to "linked, derived or core-only".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import attrs

from turnd.core.settings import CoreSettings

if TYPE_CHECKING:
    from turnd.config import Config

#: The core's defaults, where every linked config field takes its own from.
CORE_DEFAULTS = CoreSettings()


def _same(value: Any) -> Any:
    return value


def _reciprocal(value: Any) -> float:
    return 1.0 / float(value)


@attrs.frozen
class Conversion:
    """How a config value becomes the core's (``to_core``), and back (``to_config``, for the
    config field's default)."""

    to_core: Callable[[Any], Any]
    to_config: Callable[[Any], Any]


#: The same value on both sides.
SAME = Conversion(_same, _same)
#: A whole number in the config (a TOML integer), a float in the core's arithmetic.
WHOLE = Conversion(float, int)
#: Seconds per event in the config (easier to read), events per second in the core.
RECIPROCAL = Conversion(_reciprocal, _reciprocal)


@attrs.frozen
class CoreLink:
    """Config field metadata (key "core"): the ``CoreSettings`` field it sets, and how."""

    core: str
    conversion: Conversion = SAME


#: Core settings computed in ``core_settings`` from facts other than one config field.
DERIVED = frozenset({"relay_ipv4", "relay_ipv6", "tcp_relays", "reservation_prefix"})
#: Core settings no config field sets: RFC-fixed or recommended values, and the cluster's.
CORE_ONLY = frozenset({"port_ranges", "reservation_lifetime", "auth_failure_user_rate"})
#: [limits] fields the I/O shell enforces itself; the core never sees them.
SHELL_ONLY_LIMITS = frozenset(
    {
        "max_connections",
        "max_connections_per_ip",
        "tls_handshake_timeout",
        "side_max_connections",
        "side_header_timeout",
        "idle_timeout",
        "max_message_size",
    }
)


def core_links(config: Config) -> Iterator[tuple[str, Any, CoreLink]]:
    """("section.field", value, link) for every config field that sets a core setting."""
    for section in attrs.fields(type(config)):
        values = getattr(config, section.name)
        for field in attrs.fields(type(values)):
            link = field.metadata.get("core")
            if link is not None:
                yield f"{section.name}.{field.name}", getattr(values, field.name), link


def core_settings(config: Config, relay_ipv4: str) -> CoreSettings:
    """The core's settings for ``config``, relaying IPv4 on ``relay_ipv4`` (detected at start
    when the config leaves it out)."""
    linked = {link.core: link.conversion.to_core(value) for _, value, link in core_links(config)}
    address6, cluster = config.relay.address6, config.cluster
    return CoreSettings(
        relay_ipv4=relay_ipv4,
        relay_ipv6=str(address6) if address6 is not None else None,
        # RFC 6062 relays only outside a cluster: a peer's TCP connection may reach any node.
        tcp_relays=not cluster.enabled,
        reservation_prefix=cluster.node_id.to_bytes(2, "big") if cluster.enabled else b"",
        **linked,
    )
