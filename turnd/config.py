"""turnd configuration: the tree of frozen attrs classes, and the loader that fills it.

Theory of operation
-------------------
``Config`` holds one class per TOML section (``[server]``, ``[relay]``, ``[auth]``, ``[tls]``,
``[limits]``, ``[peers]``, ...), defined in :mod:`turnd.config_sections` and re-exported here.
Each field is documented once, right under it, with its default and why; its metadata holds its
*kind* (:mod:`turnd.config_values`), the one object that checks and converts its values.
``turnd.example.toml`` shows every field; a test keeps it in step.

Values come in three layers, each later one replacing earlier values field by field (a list or a
table is replaced whole): the TOML file (``load_config``) or text (``parse_config``); environment
variables ``TURND_<SECTION>_<FIELD>``; overrides keyed ``"section.field"`` (command-line flags).
All meet in ``config_from_mapping``, so a value is judged the same wherever it was written. TOML
values must have their TOML type (``port_min = "abc"`` is an error). *Text* values, every
environment variable and every ``str`` override, are converted: numbers; booleans true/false,
1/0, yes/no; lists as comma-separated items; ``auth.users`` as ``user:password`` items; empty
text leaves an optional field unset.

The first problem, in schema order, raises ``ConfigError``: the field's dotted path, what is
wrong, what is expected, and where the value came from. Then fields that must agree are checked
(``_ORDERED``, the TLS certificate and key). Unknown sections, fields, overrides and
``TURND_<SECTION>_*`` variables are errors with a "did you mean" hint; other ``TURND_*``
variables belong to someone else (the CLI). The classes are plain records: every check lives in
the loader and the kinds, and code that builds a ``Config`` by hand is trusted.

Secrets are ``Secret`` values: ``<secret>`` in ``repr``/``str``, ``to_dict(redact=True)``,
``describe()`` and error messages. Nothing here reads ``os.environ``, or any file but the one
config file.
"""

import ipaddress
import json
import tomllib
import types
from collections.abc import Iterator, Mapping
from typing import Any

import attrs

from turnd.config_sections import ApiConfig as ApiConfig  # Re-exported: the section classes
from turnd.config_sections import AuthConfig as AuthConfig  # are public names of this module.
from turnd.config_sections import ClusterConfig as ClusterConfig
from turnd.config_sections import ControlConfig as ControlConfig
from turnd.config_sections import FastpathConfig as FastpathConfig
from turnd.config_sections import LimitsConfig as LimitsConfig
from turnd.config_sections import MetricsConfig as MetricsConfig
from turnd.config_sections import PeersConfig as PeersConfig
from turnd.config_sections import RelayConfig as RelayConfig
from turnd.config_sections import ServerConfig as ServerConfig
from turnd.config_sections import TlsConfig as TlsConfig
from turnd.config_sections import UsageConfig as UsageConfig
from turnd.config_values import PORT_MAX as PORT_MAX  # Re-exported: the public names of
from turnd.config_values import USERNAME_MAX_BYTES as USERNAME_MAX_BYTES  # config_values.
from turnd.config_values import ClusterNode as ClusterNode
from turnd.config_values import Invalid, plain, show, suggest
from turnd.config_values import IPAddress as IPAddress
from turnd.config_values import IPNetwork as IPNetwork
from turnd.config_values import Listener as Listener
from turnd.config_values import LogFormat as LogFormat
from turnd.config_values import LogLevel as LogLevel
from turnd.config_values import Secret as Secret
from turnd.config_values import TlsVersion as TlsVersion
from turnd.config_values import Transport as Transport

DEFAULT_CONFIG_PATH = "/etc/turnd/turnd.toml"  # What turnd reads without --config (DESIGN.md).
ENV_PREFIX = "TURND_"  # Environment variables are TURND_<SECTION>_<FIELD>.


_EMPTY: Mapping[str, Any] = types.MappingProxyType({})


class ConfigError(ValueError):
    """The configuration is wrong; the message says where, what, and what is expected.

    ``field`` is the dotted path of the bad field ("relay.port_min"), or None when the problem
    is not one field's (an unreadable file, a TOML syntax error, an unknown variable).
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@attrs.frozen
class Config:
    """The whole configuration: one attribute per TOML section."""

    server: ServerConfig = attrs.field(factory=ServerConfig)
    relay: RelayConfig = attrs.field(factory=RelayConfig)
    auth: AuthConfig = attrs.field(factory=AuthConfig)
    tls: TlsConfig = attrs.field(factory=TlsConfig)
    limits: LimitsConfig = attrs.field(factory=LimitsConfig)
    peers: PeersConfig = attrs.field(factory=PeersConfig)
    metrics: MetricsConfig = attrs.field(factory=MetricsConfig)
    usage: UsageConfig = attrs.field(factory=UsageConfig)
    control: ControlConfig = attrs.field(factory=ControlConfig)
    api: ApiConfig = attrs.field(factory=ApiConfig)
    cluster: ClusterConfig = attrs.field(factory=ClusterConfig)
    fastpath: FastpathConfig = attrs.field(factory=FastpathConfig)

    @classmethod
    def default(cls) -> "Config":
        """The embedded defaults: what turnd runs on with no file, no environment, no flags."""
        return cls()

    def listen_addresses(self) -> tuple[IPAddress, ...]:
        """Addresses the listeners bind: server.addresses, where in a cluster a wildcard of the
        service IP's family is the service IP (replies must leave from it)."""
        service_ip = self.cluster.service_ip
        if not self.cluster.enabled or service_ip is None:
            return self.server.addresses
        found: list[IPAddress] = []
        for address in self.server.addresses:
            if address.is_unspecified and address.version == service_ip.version:
                address = service_ip
            if address not in found:
                found.append(address)
        return tuple(found)

    def relay_address(self) -> ipaddress.IPv4Address | None:
        """relay.address, else the first concrete IPv4 listen address; None: detect at start."""
        if self.relay.address is not None:
            return self.relay.address
        for address in self.listen_addresses():
            if isinstance(address, ipaddress.IPv4Address) and not address.is_unspecified:
                return address
        return None

    def to_dict(self, redact: bool = True) -> dict[str, dict[str, Any]]:
        """Plain data, {section: {field: value}} as TOML would hold it, None for unset fields.

        With ``redact`` (the default) every secret is "<secret>". Without it, feeding the result
        to ``config_from_mapping`` gives this config back.
        """
        return {
            section: {
                field.name: plain(getattr(getattr(self, section), field.name), redact)
                for field in attrs.fields(cls)
            }
            for section, cls in _SECTIONS.items()
        }

    def describe(self) -> str:
        """The effective configuration for the log: "section.field = value" lines, redacted."""
        return "\n".join(
            f"{section}.{name} = {_describe(value)}"
            for section, fields in self.to_dict(redact=True).items()
            for name, value in fields.items()
        )


_SECTIONS: Mapping[str, type[Any]] = {
    section.name: section.type for section in attrs.fields(Config) if section.type
}
_FIELDS: "Mapping[str, attrs.Attribute[Any]]" = {
    f"{section}.{field.name}": field
    for section, cls in _SECTIONS.items()
    for field in attrs.fields(cls)
}


def _describe(value: object) -> str:
    return "unset" if value is None else json.dumps(value, ensure_ascii=False)


# The loader.

# Fields that must agree, checked once each passed its own check: (low, high) pairs. (And
# tls.cert_file with tls.key_file: both or neither.)
_ORDERED = (
    ("relay.port_min", "relay.port_max"),
    ("relay.allocation_lifetime", "relay.max_allocation_lifetime"),
)


@attrs.frozen
class _Raw:
    """A value before checking: ``text`` to convert or typed TOML data; ``origin`` for errors
    ("in <file>", "from TURND_X", "from override")."""

    value: object
    text: bool
    origin: str | None


def _where(origin: str | None) -> str:
    return f" ({origin})" if origin else ""


def _from_data(data: Mapping[str, object], origin: str | None) -> Iterator[tuple[str, _Raw]]:
    for section, table in data.items():
        if section not in _SECTIONS:
            hint = suggest(f"[{section}]", [f"[{name}]" for name in _SECTIONS])
            raise ConfigError(f"unknown section [{section}]{_where(origin)}{hint}", section)
        if not isinstance(table, Mapping):
            got = f"must be a table ([{section}]), got {show(table)}"
            raise ConfigError(f"{section}: {got}{_where(origin)}", section)
        for name, value in table.items():
            path = f"{section}.{name}"
            if path not in _FIELDS:
                hint = suggest(path, list(_FIELDS))
                raise ConfigError(f"unknown field {path}{_where(origin)}{hint}", path)
            yield path, _Raw(value, False, origin)


def _from_environ(environ: Mapping[str, str]) -> Iterator[tuple[str, _Raw]]:
    known = {ENV_PREFIX + path.replace(".", "_").upper(): path for path in _FIELDS}
    ours = tuple(f"{ENV_PREFIX}{section.upper()}_" for section in _SECTIONS)
    for name in sorted(environ):
        if name in known:
            yield known[name], _Raw(environ[name], True, f"from {name}")
        elif name.startswith(ours):
            raise ConfigError(f"unknown environment variable {name}{suggest(name, list(known))}")


def _from_overrides(overrides: Mapping[str, object]) -> Iterator[tuple[str, _Raw]]:
    for path, value in overrides.items():
        if path not in _FIELDS:
            raise ConfigError(f"unknown override {path}{suggest(path, list(_FIELDS))}", path)
        yield path, _Raw(value, isinstance(value, str), "from override")


def config_from_mapping(
    data: Mapping[str, object],
    environ: Mapping[str, str] = _EMPTY,
    overrides: Mapping[str, object] = _EMPTY,
    *,
    origin: str | None = None,
) -> Config:
    """Check and convert TOML-shaped ``data``, then ``environ``, then ``overrides``.

    ``data`` is {section: {field: value}} as ``tomllib`` gives it; None leaves an optional field
    unset. Only ``TURND_<SECTION>_<FIELD>`` names are read from ``environ``. ``overrides`` maps
    "section.field" to a value; a ``str`` is text, converted as an environment variable is.
    ``origin`` (e.g. "in /etc/turnd/turnd.toml") tags errors about ``data``. Raises
    ``ConfigError`` for the first problem, in schema order.
    """
    raw = dict(_from_data(data, origin))
    raw.update(_from_environ(environ))
    raw.update(_from_overrides(overrides))
    values: dict[str, dict[str, Any]] = {section: {} for section in _SECTIONS}
    for path, field in _FIELDS.items():
        if path not in raw:
            continue
        item = raw[path]
        unset = item.value is None or (item.text and not str(item.value).strip())
        try:
            if field.default is None and unset:
                value = None
            else:
                value = field.metadata["kind"].parse(item.value, path, item.text)
        except Invalid as exc:
            raise ConfigError(f"{exc.path}: {exc.problem}{_where(item.origin)}", exc.path) from None
        values[path.partition(".")[0]][field.name] = value
    config = Config(**{section: _SECTIONS[section](**fields) for section, fields in values.items()})
    for low, high in _ORDERED:
        _ordered(raw, config, low, high)
    if (config.tls.cert_file is None) != (config.tls.key_file is None):
        given, missing = "tls.cert_file", "tls.key_file"
        if config.tls.cert_file is None:
            given, missing = missing, given
        problem = f"must be set too, since {given} is: set both, or neither"
        problem += " (for a generated self-signed certificate)"
        raise ConfigError(f"{missing}: {problem}{_where(raw[given].origin)}", missing)
    if config.control.listen is not None and config.control.token is None:
        where = _where(raw["control.listen"].origin)
        problem = "must be set when control.listen is: the TCP control API needs a bearer token"
        raise ConfigError(f"control.token: {problem}{where}", "control.token")
    _check_cluster(raw, config)
    return config


def _check_cluster(raw: Mapping[str, _Raw], config: Config) -> None:
    """With nodes listed: node_id among them, ids unique, service_ip and key set, timing sane."""
    cluster = config.cluster
    if not cluster.enabled:
        return
    where = _where(raw["cluster.nodes"].origin)
    ids = [node.id for node in cluster.nodes]
    for index, node in enumerate(cluster.nodes):
        if ids.index(node.id) != index:
            problem = f"node id {node.id} is listed twice"
            path = f"cluster.nodes[{index}]"
            raise ConfigError(f"{path}: {problem}{where}", path)
    if cluster.node_id not in ids:
        problem = f"must be one of the ids in cluster.nodes ({', '.join(map(str, ids))})"
        raise ConfigError(f"cluster.node_id: {problem}, got {cluster.node_id}", "cluster.node_id")
    for name in ("service_ip", "key"):
        if getattr(cluster, name) is None:
            problem = f"must be set when cluster.nodes is (every node needs the same {name})"
            raise ConfigError(f"cluster.{name}: {problem}", f"cluster.{name}")
    if cluster.dead_after <= cluster.heartbeat_interval:
        problem = (
            f"must be more than cluster.heartbeat_interval ({cluster.heartbeat_interval}), "
            f"got {cluster.dead_after}"
        )
        raise ConfigError(f"cluster.dead_after: {problem}", "cluster.dead_after")
    service_ip = cluster.service_ip
    assert service_ip is not None
    if service_ip not in config.listen_addresses():
        problem = (
            f"must include the cluster service_ip {service_ip} (or a wildcard of its family): "
            "clients reach every node there"
        )
        raise ConfigError(f"server.addresses: {problem}", "server.addresses")


def _ordered(raw: Mapping[str, _Raw], config: Config, low: str, high: str) -> None:
    """Raise unless ``low`` <= ``high``, naming the one that was set (``high`` if both were)."""
    low_value, high_value = (_value(config, path) for path in (low, high))
    if low_value <= high_value:
        return
    if high not in raw:
        problem = f"must be <= {high} ({high_value}), got {low_value}"
        raise ConfigError(f"{low}: {problem}{_where(raw[low].origin)}", low)
    problem = f"must be >= {low} ({low_value}), got {high_value}"
    raise ConfigError(f"{high}: {problem}{_where(raw[high].origin)}", high)


def _value(config: Config, path: str) -> Any:
    section, _, name = path.partition(".")
    return getattr(getattr(config, section), name)


def parse_config(
    text: str,
    environ: Mapping[str, str],
    overrides: Mapping[str, object] = _EMPTY,
    *,
    origin: str | None = None,
) -> Config:
    """``config_from_mapping`` on TOML ``text``; a syntax error becomes a ``ConfigError``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"TOML syntax error{_where(origin)}: {exc}") from None
    return config_from_mapping(data, environ, overrides, origin=origin)


def load_config(
    path: str | None,
    environ: Mapping[str, str],
    overrides: Mapping[str, object] = _EMPTY,
) -> Config:
    """The TOML file at ``path`` (None: embedded defaults), then ``environ``, then ``overrides``.

    Reading the file is the only I/O. Raises ``ConfigError``, also when the file cannot be read.
    """
    if path is None:
        return config_from_mapping({}, environ, overrides)
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - data.rfind(b"\n", 0, exc.start)
        raise ConfigError(f"{path}: not UTF-8 (at line {line}, column {column})") from None
    return parse_config(text, environ, overrides, origin=f"in {path}")
