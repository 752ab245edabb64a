"""turnd.core_settings_map: every config limit reaches the core, through one mapping."""

import ipaddress
import pathlib
import re
from typing import Any

import attrs

from turnd.config import Config, LimitsConfig, RelayConfig, Secret
from turnd.config_values import ClusterNode, Endpoint
from turnd.core.settings import CoreSettings
from turnd.core_settings_map import (
    CORE_ONLY,
    DERIVED,
    SHELL_ONLY_LIMITS,
    core_links,
    core_settings,
)

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
LINKED = {path: link for path, _, link in core_links(Config.default())}


def other(value: Any) -> Any:
    """A valid value different from ``value``, of its type."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    assert isinstance(value, str), value
    return value + "-x"


def test_every_limit_is_linked_to_the_core_or_enforced_by_the_shell() -> None:
    """A [limits] field is either read by the core or named as the shell's own: none is lost."""
    linked = {path.partition(".")[2] for path in LINKED if path.startswith("limits.")}
    fields = {field.name for field in attrs.fields(LimitsConfig)}
    assert linked | SHELL_ONLY_LIMITS == fields
    assert not linked & SHELL_ONLY_LIMITS
    assert {f"relay.{field.name}" for field in attrs.fields(RelayConfig)} - set(LINKED) == {
        "relay.address",  # core_settings' relay_ipv4 argument (detected when unset)
        "relay.address6",  # derived: relay_ipv6
    }


def test_every_core_setting_is_linked_derived_or_core_only() -> None:
    """Each CoreSettings field has exactly one source: one config field, a derivation, or none."""
    linked = [link.core for link in LINKED.values()]
    assert len(linked) == len(set(linked))
    sources = [set(linked), DERIVED, CORE_ONLY]
    assert set.union(*sources) == {field.name for field in attrs.fields(CoreSettings)}
    assert sum(map(len, sources)) == len(attrs.fields(CoreSettings))


def test_linked_fields_take_their_default_from_the_core() -> None:
    """With the defaults the core gets its own defaults (server.software names the version)."""
    settings = core_settings(Config.default(), "192.0.2.1")
    expected = attrs.evolve(CoreSettings(), software=settings.software, relay_ipv4="192.0.2.1")
    assert settings == expected
    assert settings.software == Config.default().server.software != CoreSettings().software


def test_each_linked_field_reaches_its_core_setting() -> None:
    """Changing one linked config field changes its core setting, converted, and nothing else."""
    base = Config.default()
    before = core_settings(base, "192.0.2.1")
    for path, value, link in core_links(base):
        section, _, name = path.partition(".")
        changed = other(value)
        config = attrs.evolve(
            base, **{section: attrs.evolve(getattr(base, section), **{name: changed})}
        )
        after = core_settings(config, "192.0.2.1")
        assert getattr(after, link.core) == link.conversion.to_core(changed), path
        assert getattr(after, link.core) != getattr(before, link.core), path
        assert attrs.evolve(after, **{link.core: getattr(before, link.core)}) == before, path


def test_auth_failure_interval_becomes_a_rate() -> None:
    """limits.auth_failure_interval is seconds per failure earned back; the core takes a rate."""
    limits = attrs.evolve(Config.default().limits, auth_failure_interval=4.0)
    settings = core_settings(attrs.evolve(Config.default(), limits=limits), "192.0.2.1")
    assert settings.auth_failure_rate == 0.25


def test_derived_settings() -> None:
    """relay_ipv6 from relay.address6; in a cluster, no TCP relays and the node id prefix."""
    default = core_settings(Config.default(), "192.0.2.1")
    assert (default.relay_ipv4, default.relay_ipv6) == ("192.0.2.1", None)
    assert (default.tcp_relays, default.reservation_prefix) == (True, b"")
    relay = attrs.evolve(Config.default().relay, address6=ipaddress.IPv6Address("2001:db8::1"))
    cluster = attrs.evolve(
        Config.default().cluster,
        node_id=258,
        nodes=(ClusterNode(258, Endpoint("192.0.2.9", 7000)),),
        key=Secret("k" * 32),
    )
    settings = core_settings(attrs.evolve(Config.default(), relay=relay, cluster=cluster), "x")
    assert settings.relay_ipv6 == "2001:db8::1"
    assert (settings.tcp_relays, settings.reservation_prefix) == (False, b"\x01\x02")


def test_readme_limits_table_names_every_limit() -> None:
    """README's limits table names every [limits] field and the [relay] lifetimes."""
    text = README.read_text(encoding="utf-8")
    table = re.search(r"^\| limit \| default \| past it \|\n(?:\|.*\n)+", text, re.MULTILINE)
    assert table is not None
    names = set(re.findall(r"`(?:limits\.|relay\.)?(\w+)`", table.group()))
    lifetimes = {field.name for field in attrs.fields(RelayConfig) if "lifetime" in field.name}
    assert {field.name for field in attrs.fields(LimitsConfig)} | lifetimes <= names
