"""turnd configuration: one tree of frozen attrs classes, and the loader that fills it.

Theory of operation
-------------------
``Config`` holds one class per TOML section: ``[server]``, ``[relay]``, ``[auth]``, ``[limits]``,
``[peers]``. Each field is documented once, right under it, with its default and why; its
metadata holds its *kind*, the one object that checks and converts its values.
``turnd.example.toml`` shows every field to operators; a test keeps it in step with this file.

Values come in three layers, each later one replacing earlier values field by field (a list or a
table is replaced whole, never merged):

1. the TOML file (``load_config``) or text (``parse_config``);
2. environment variables ``TURND_<SECTION>_<FIELD>``, e.g. ``TURND_RELAY_PORT_MIN``;
3. overrides keyed ``"section.field"``, e.g. from command-line flags.

All layers meet in ``config_from_mapping``, so a value is judged the same wherever it was
written. TOML values must have their TOML type (``port_min = "abc"`` is an error). *Text* values,
every environment variable and every ``str`` override, are converted: integers; booleans
true/false, 1/0, yes/no; lists as comma-separated items; ``auth.users`` as ``user:password``
items; empty text leaves an optional field unset.

The first problem, in schema order, raises ``ConfigError``: the field's dotted path, what is
wrong, what is expected, and where the value came from. Unknown sections, fields, overrides and
``TURND_<SECTION>_*`` variables of a known section are errors with a "did you mean" hint; other
``TURND_*`` variables belong to someone else (the CLI). The classes themselves are plain records:
every check lives here in the loader, and code that builds a ``Config`` by hand is trusted.

Secrets are ``Secret`` values: ``<secret>`` in ``repr``/``str``, in ``to_dict(redact=True)``, in
``describe()`` and in error messages. Nothing here reads ``os.environ``, or any file but the one
config file.
"""

import abc
import contextlib
import difflib
import enum
import importlib.metadata
import ipaddress
import json
import re
import tomllib
import types
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeAlias

import attrs

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_CONFIG_PATH = "/etc/turnd/turnd.toml"  # What turnd reads without --config (DESIGN.md).
ENV_PREFIX = "TURND_"  # Environment variables are TURND_<SECTION>_<FIELD>.

REALM_MAX_CHARS = 127  # RFC 8489 §14.9: REALM MUST be fewer than 128 characters.
SOFTWARE_MAX_CHARS = 127  # RFC 8489 §14.14: SOFTWARE MUST be fewer than 128 characters.
USERNAME_MAX_BYTES = 508  # RFC 8489 §14.3: USERNAME MUST be fewer than 509 bytes.
PORT_MAX = 65535  # The last TCP/UDP port.
RELAY_PORT_MIN = 1024  # Relay ports go to anyone authenticated: never privileged ones.
CHANNELS_MAX = 0x4FFF - 0x4000 + 1  # RFC 8656 §12: channel numbers 0x4000-0x4FFF, 4096 of them.
NONCE_KEY_MIN_CHARS = 16  # Shorter HMAC keys would let nonces be forged by brute force.
NEVER_ALLOWED_PEERS: tuple[IPNetwork, ...] = (
    # "This host": packets to 0.0.0.0/8 or :: reach the relay host itself, so no allow-list
    # may open them (DESIGN.md, security defaults).
    ipaddress.ip_network("0.0.0.0/8"),
    ipaddress.ip_network("::/128"),
)

_EMPTY: Mapping[str, Any] = types.MappingProxyType({})


def _package_version(distribution: str = "turnd") -> str:
    """The installed version of ``distribution``, or "dev" when running from a checkout."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "dev"


class ConfigError(ValueError):
    """The configuration is wrong; the message says where, what, and what is expected.

    ``field`` is the dotted path of the bad field ("relay.port_min"), or None when the problem
    is not one field's (an unreadable file, a TOML syntax error, an unknown variable).
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class Secret:
    """A string that never prints: ``repr``/``str`` give ``<secret>``; ``reveal()`` gives it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself, for the code that uses it (and only that code)."""
        return self._value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and self._value == other._value

    def __hash__(self) -> int:
        return hash(self._value)


class Transport(enum.StrEnum):
    """Client transports a listener can serve."""

    UDP = "udp"
    TCP = "tcp"
    TLS = "tls"


class LogLevel(enum.StrEnum):
    """How much the daemon logs."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class LogFormat(enum.StrEnum):
    """Log lines for people (text) or for a log pipeline (json)."""

    TEXT = "text"
    JSON = "json"


@attrs.frozen
class Listener:
    """One listening socket per service address: a transport and a port ("udp:3478")."""

    transport: Transport
    port: int

    @classmethod
    def parse(cls, spec: str) -> "Listener":
        """``"transport:port"``, transport udp, tcp or tls, port 0-65535; else ValueError."""
        name, _, port = spec.strip().lower().partition(":")
        if name not in {t.value for t in Transport} or not (port.isascii() and port.isdigit()):
            raise ValueError(f"not a listener: {spec!r}")
        if int(port) > PORT_MAX:
            raise ValueError(f"port out of range: {spec!r}")
        return cls(Transport(name), int(port))

    def __str__(self) -> str:
        return f"{self.transport}:{self.port}"


# Kinds: how a field's values are checked and converted. Each sits in its field's metadata.
# ``parse(value, path, text)`` returns the converted value or raises ``_Invalid``; ``text`` says
# the value is text to convert (environment, str override) rather than typed TOML data.


class _Invalid(Exception):
    """A value failed its kind: ``path`` names it, ``problem`` says what is wrong."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(path, problem)
        self.path = path
        self.problem = problem


_TOML_TYPE_NAMES = (
    (bool, "a boolean"),  # Before int: a bool is an int.
    (int, "an integer"),
    (float, "a float"),
    (str, "a string"),
    (list, "an array"),
    (dict, "a table"),
)


def _show(value: object, secret: bool = False) -> str:
    """``value`` as the operator would have written it; a secret shows only its type, length."""
    if secret and isinstance(value, str):
        return f"a string of {len(value)} characters" if value else "an empty string"
    if secret:
        return next((name for kind, name in _TOML_TYPE_NAMES if isinstance(value, kind)), "a value")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        shown = json.dumps(value, ensure_ascii=False)
        return shown if len(shown) <= 60 else shown[:56] + '..."'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_show(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(str(k))} = {_show(v)}" for k, v in value.items()) + "}"
    return "nothing" if value is None else str(value)


def _key(name: str) -> str:
    """A TOML key: bare when it can be, quoted otherwise."""
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name, ensure_ascii=False)


class _Kind(abc.ABC):
    """Checks values of one field and converts them to the field's type."""

    expected = "a value"  # Completes "must be ...".
    secret = False  # Never show the value (errors, dumps).

    @abc.abstractmethod
    def parse(self, value: object, path: str, text: bool) -> Any:
        """The converted ``value``, or raise ``_Invalid``."""

    def bad(self, path: str, value: object, expected: str | None = None) -> _Invalid:
        """The standard complaint: must be <expected>, got <value>."""
        got = _show(value, self.secret)
        return _Invalid(path, f"must be {expected or self.expected}, got {got}")


class _Str(_Kind):
    """A string, non-empty unless ``allow_empty``, of at most ``max_chars`` (0: any) characters."""

    def __init__(self, *, allow_empty: bool = False, max_chars: int = 0) -> None:
        self.allow_empty, self.max_chars = allow_empty, max_chars
        self.expected = "a string" if allow_empty else "a non-empty string"
        self.expected += f" of at most {max_chars} characters" if max_chars else ""

    def parse(self, value: object, path: str, text: bool) -> str:
        if not isinstance(value, str) or not (value or self.allow_empty):
            raise self.bad(path, value)
        if self.max_chars and len(value) > self.max_chars:
            raise self.bad(path, value)
        return value


class _Secret(_Kind):
    """A string of at least ``min_chars`` characters, kept as a ``Secret``."""

    secret = True

    def __init__(self, min_chars: int = 1) -> None:
        self.min_chars = min_chars
        self.expected = f"a string of at least {min_chars} characters"
        if min_chars == 1:
            self.expected = "a non-empty string"

    def parse(self, value: object, path: str, text: bool) -> Secret:
        if not isinstance(value, str) or len(value) < self.min_chars:
            raise self.bad(path, value)
        return Secret(value)


class _Int(_Kind):
    def __init__(self, low: int, high: int = 0) -> None:
        self.low, self.high = low, high
        self.expected = f"an integer {low}-{high}" if high else f"an integer >= {low}"

    def parse(self, value: object, path: str, text: bool) -> int:
        number = value
        if text and isinstance(value, str):
            try:
                number = int(value.strip())
            except ValueError:
                raise self.bad(path, value) from None
        if not isinstance(number, int) or isinstance(number, bool) or number < self.low:
            raise self.bad(path, value)
        if self.high and number > self.high:
            raise self.bad(path, value)
        return number


class _Bool(_Kind):
    expected = "true or false"
    _TEXT = types.MappingProxyType(
        {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    )

    def parse(self, value: object, path: str, text: bool) -> bool:
        if isinstance(value, bool):
            return value
        if text and isinstance(value, str) and value.strip().lower() in self._TEXT:
            return self._TEXT[value.strip().lower()]
        raise self.bad(path, value, "one of true/false, 1/0, yes/no" if text else None)


class _Choice(_Kind):
    def __init__(self, choices: type[enum.StrEnum]) -> None:
        self.choices = choices
        self.expected = "one of " + ", ".join(choices)

    def parse(self, value: object, path: str, text: bool) -> enum.StrEnum:
        if isinstance(value, str) and value.strip().lower() in set(self.choices):
            return self.choices(value.strip().lower())
        raise self.bad(path, value)


class _List(_Kind):
    """A TOML array, or comma-separated text; each item checked by ``item``."""

    def __init__(self, item: _Kind, what: str, *, non_empty: bool = False, unique: bool = False):
        self.item, self.non_empty, self.unique = item, non_empty, unique
        self.secret = item.secret
        self.expected = f"a list of {what}"

    def parse(self, value: object, path: str, text: bool) -> tuple[Any, ...]:
        items: Sequence[object]
        if text and isinstance(value, str):
            items = [item.strip() for item in value.split(",") if item.strip()]
        elif isinstance(value, list | tuple):
            items = value
        else:
            raise self.bad(path, value)
        if self.non_empty and not items:
            raise _Invalid(path, f"must not be empty, got {_show(value)}")
        parsed: list[Any] = []
        for index, item in enumerate(items):
            converted = self.item.parse(item, f"{path}[{index}]", text)
            if self.unique and converted in parsed:
                first = parsed.index(converted)
                raise _Invalid(f"{path}[{index}]", f"duplicate of {path}[{first}] ({converted})")
            parsed.append(converted)
        return tuple(parsed)


class _Listener(_Kind):
    expected = '"transport:port" with transport udp, tcp or tls and port 0-65535'

    def parse(self, value: object, path: str, text: bool) -> Listener:
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return Listener.parse(value)
        raise self.bad(path, value)


class _Address(_Kind):
    """An IP address literal; ``version`` 4 or 6 to insist; ``concrete``: not 0.0.0.0 / ::."""

    def __init__(self, version: int = 0, *, concrete: bool = False) -> None:
        self.version, self.concrete = version, concrete
        family = f"IPv{version}" if version else "IP"
        self.expected = f"an {family} address"
        if concrete:
            self.expected = (
                f"a concrete {family} address (not {'::' if version == 6 else '0.0.0.0'})"
            )

    def parse(self, value: object, path: str, text: bool) -> IPAddress:
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                address = ipaddress.ip_address(value.strip())
                if self.version in (0, address.version) and not (
                    self.concrete and address.is_unspecified
                ):
                    return address
        raise self.bad(path, value)


class _Network(_Kind):
    """A CIDR network (host bits allowed: 10.1.2.3/8 is 10.0.0.0/8), not touching ``never``."""

    expected = "a CIDR network such as 192.0.2.0/24 or 2001:db8::/32"

    def __init__(self, never: Sequence[IPNetwork] = ()) -> None:
        self.never = tuple(never)

    def parse(self, value: object, path: str, text: bool) -> IPNetwork:
        if not isinstance(value, str):
            raise self.bad(path, value)
        try:
            network = ipaddress.ip_network(value.strip(), strict=False)
        except ValueError:
            raise self.bad(path, value) from None
        for forbidden in self.never:
            if forbidden.version == network.version and network.overlaps(forbidden):
                raise _Invalid(
                    path,
                    f"{_show(value)} overlaps {forbidden}, which can never be allowed: "
                    "0.0.0.0/8 and ::/128 reach the relay host itself",
                )
        return network


class _Users(_Kind):
    """username -> password: a TOML table, or text ``user:password,user:password``."""

    secret = True
    expected = "a table of username = password"
    _password = _Secret()

    def parse(self, value: object, path: str, text: bool) -> Mapping[str, Secret]:
        pairs: list[tuple[object, object]] = []
        if text and isinstance(value, str):
            for item in filter(str.strip, value.split(",")):
                user, colon, password = item.partition(":")
                if not colon:
                    raise self.bad(path, value, "comma-separated user:password items")
                pairs.append((user.strip(), password))
        elif isinstance(value, dict):
            pairs.extend(value.items())
        else:
            raise self.bad(path, value)
        users: dict[str, Secret] = {}
        for name, secret in pairs:
            if not isinstance(name, str) or not name or len(name.encode()) > USERNAME_MAX_BYTES:
                problem = f"usernames must be 1-{USERNAME_MAX_BYTES} bytes of UTF-8"
                raise _Invalid(path, f"{problem}, got {_show(name)}")
            users[name] = self._password.parse(secret, f"{path}.{_key(name)}", text)
        return users


def _kind(kind: _Kind) -> dict[str, _Kind]:
    """Field metadata naming the field's kind."""
    return {"kind": kind}


# The tree. Each field: default and kind, then what it is, its default, and why.


@attrs.frozen
class ServerConfig:
    """[server]: who the server says it is, where it listens, where it keeps state, logging."""

    realm: str = attrs.field(default="turnd", metadata=_kind(_Str(max_chars=REALM_MAX_CHARS)))
    """REALM of the long-term credentials (RFC 8489 §9.2). Default "turnd". It is mixed into
    every long-term key, so changing it invalidates keys derived for the old realm."""

    listen: tuple[Listener, ...] = attrs.field(
        default=tuple(
            Listener.parse(spec)
            for spec in ("udp:3478", "udp:53", "tcp:3478", "tcp:80", "tls:5349", "tls:443")
        ),
        metadata=_kind(_List(_Listener(), '"transport:port" strings', non_empty=True, unique=True)),
    )
    """Listeners, "transport:port", each opened on every service address. Default udp:3478,
    udp:53, tcp:3478, tcp:80, tls:5349, tls:443: the standard ports and those firewalls let
    through. Ports under 1024 need CAP_NET_BIND_SERVICE; one that cannot be bound is skipped (the
    daemon says why). Port 0 picks a free port (tests)."""

    addresses: tuple[IPAddress, ...] = attrs.field(
        default=(ipaddress.IPv4Address("0.0.0.0"),),
        metadata=_kind(_List(_Address(), "IP addresses", non_empty=True, unique=True)),
    )
    """Service addresses the listeners bind, IPv4 or IPv6 literals. Default ["0.0.0.0"]: every
    IPv4 address. An anycast node names its service IP, so that replies leave from it."""

    software: str = attrs.field(
        default=f"turnd/{_package_version()}",
        metadata=_kind(_Str(allow_empty=True, max_chars=SOFTWARE_MAX_CHARS)),
    )
    """SOFTWARE attribute of responses (RFC 8489 §14.14). Default "turnd/<version>", which helps
    debugging; "" sends none, to tell scanners nothing."""

    state_dir: str = attrs.field(default="/var/lib/turnd", metadata=_kind(_Str()))
    """Where the daemon keeps what it generates when the config leaves it out: the REST secret,
    the nonce key, the self-signed certificate. Default "/var/lib/turnd", systemd's
    StateDirectory."""

    log_level: LogLevel = attrs.field(default=LogLevel.INFO, metadata=_kind(_Choice(LogLevel)))
    """Least severe level logged: debug, info, warning or error. Default "info"."""

    log_format: LogFormat = attrs.field(default=LogFormat.TEXT, metadata=_kind(_Choice(LogFormat)))
    """"text" for people, or "json" (one object a line) for log pipelines. Default "text"."""


@attrs.frozen
class RelayConfig:
    """[relay]: relayed transport addresses, and the lifetimes of what hangs off them."""

    address: ipaddress.IPv4Address | None = attrs.field(
        default=None, metadata=_kind(_Address(4, concrete=True))
    )
    """IPv4 address relay sockets bind and XOR-RELAYED-ADDRESS carries. Default unset: the service
    address if it is concrete (Config.relay_address()), otherwise detected at start."""

    address6: ipaddress.IPv6Address | None = attrs.field(
        default=None, metadata=_kind(_Address(6, concrete=True))
    )
    """IPv6 relay address, for REQUESTED-ADDRESS-FAMILY IPv6 (RFC 8656 §7.2). Default unset: no
    IPv6 relaying."""

    port_min: int = attrs.field(default=49152, metadata=_kind(_Int(RELAY_PORT_MIN, PORT_MAX)))
    """Lowest relay port. Default 49152, where the dynamic range starts (RFC 6335 §6)."""

    port_max: int = attrs.field(default=65535, metadata=_kind(_Int(RELAY_PORT_MIN, PORT_MAX)))
    """Highest relay port, at least port_min. Default 65535: 16384 ports per relay address."""

    allocation_lifetime: int = attrs.field(default=600, metadata=_kind(_Int(1)))
    """Seconds an allocation lives when the client asks for less, or nothing. Default 600, the
    RFC 8656 §7.2 default."""

    max_allocation_lifetime: int = attrs.field(default=3600, metadata=_kind(_Int(1)))
    """Longest lifetime a LIFETIME request gets, at least allocation_lifetime. Default 3600, the
    maximum RFC 8656 §7.2 recommends."""

    permission_lifetime: int = attrs.field(default=300, metadata=_kind(_Int(1)))
    """Seconds a permission lives unless refreshed. Default 300, which RFC 8656 §9 fixes: change
    it only in tests."""

    channel_lifetime: int = attrs.field(default=600, metadata=_kind(_Int(1)))
    """Seconds a channel binding lives unless refreshed. Default 600, which RFC 8656 §12 fixes:
    change it only in tests."""


@attrs.frozen
class AuthConfig:
    """[auth]: who may allocate. Secrets here print as <secret>."""

    secrets: tuple[Secret, ...] = attrs.field(
        default=(), metadata=_kind(_List(_Secret(), "non-empty strings"))
    )
    """REST shared secrets for ephemeral credentials (username "<expiry>:<id>", password
    base64(HMAC-SHA1(secret, username))), newest first: credentials are minted with the first and
    accepted with any, so rotate by putting a new one in front, then dropping the old one once
    its credentials have expired. Default []: one is generated into state_dir."""

    users: Mapping[str, Secret] = attrs.field(factory=dict, metadata=_kind(_Users()))
    """Static long-term users, username = password (RFC 8489 §9.2). Default {}: none."""

    users_file: str | None = attrs.field(default=None, metadata=_kind(_Str()))
    """A file of "user:password" lines, more static users. Default unset: none."""

    nonce_key: Secret | None = attrs.field(
        default=None, metadata=_kind(_Secret(NONCE_KEY_MIN_CHARS))
    )
    """HMAC key of the stateless nonces, at least 16 characters. Default unset: generated into
    state_dir. Give every node of a cluster the same key, so that a retry landing on another node
    still validates."""

    nonce_lifetime: int = attrs.field(default=600, metadata=_kind(_Int(1)))
    """Seconds a nonce stays valid; then the client gets 438 Stale Nonce and retries with a new
    one. Default 600."""

    allow_anonymous_binding: bool = attrs.field(default=True, metadata=_kind(_Bool()))
    """Whether a STUN Binding request needs no credentials. Default true: ICE agents send plain
    Bindings to learn their server-reflexive address."""


@attrs.frozen
class LimitsConfig:
    """[limits]: quotas, so that no one user or host can take the node's resources."""

    max_allocations: int = attrs.field(default=100_000, metadata=_kind(_Int(1)))
    """Allocations on this node, all users together. Default 100000: memory, relay ports (16384 a
    relay address with the default range) and file descriptors run out around there."""

    max_allocations_per_user: int = attrs.field(default=100, metadata=_kind(_Int(1)))
    """Allocations per username. Default 100: a leaked credential cannot take the node."""

    max_allocations_per_ip: int = attrs.field(default=200, metadata=_kind(_Int(1)))
    """Allocations per client IP address. Default 200: room for a NAT full of clients, not for
    one host to drain the relay ports."""

    max_permissions_per_allocation: int = attrs.field(default=1000, metadata=_kind(_Int(1)))
    """Permissions per allocation. Default 1000: far more peers than an ICE session has, and a
    cap on the memory one allocation holds."""

    max_channels_per_allocation: int = attrs.field(
        default=1000, metadata=_kind(_Int(1, CHANNELS_MAX))
    )
    """Channel bindings per allocation, at most 4096 (the channel numbers of RFC 8656 §12).
    Default 1000, for the same reason as permissions."""


@attrs.frozen
class PeersConfig:
    """[peers]: which peer addresses relays may reach, beside the built-in deny-list."""

    allow: tuple[IPNetwork, ...] = attrs.field(
        default=(), metadata=_kind(_List(_Network(NEVER_ALLOWED_PEERS), "CIDR networks"))
    )
    """Networks allowed although the built-in deny-list has them (private, loopback, link-local,
    ...), e.g. ["127.0.0.0/8"] in tests. Default []. Never 0.0.0.0/8 or ::/128, nor a network
    overlapping them: those reach the relay host itself."""

    deny: tuple[IPNetwork, ...] = attrs.field(
        default=(), metadata=_kind(_List(_Network(), "CIDR networks"))
    )
    """Networks denied beside the built-in deny-list, e.g. your own infrastructure. Default []."""


@attrs.frozen
class Config:
    """The whole configuration: one attribute per TOML section."""

    server: ServerConfig = attrs.field(factory=ServerConfig)
    relay: RelayConfig = attrs.field(factory=RelayConfig)
    auth: AuthConfig = attrs.field(factory=AuthConfig)
    limits: LimitsConfig = attrs.field(factory=LimitsConfig)
    peers: PeersConfig = attrs.field(factory=PeersConfig)

    @classmethod
    def default(cls) -> "Config":
        """The embedded defaults: what turnd runs on with no file, no environment, no flags."""
        return cls()

    def relay_address(self) -> ipaddress.IPv4Address | None:
        """relay.address, else the first concrete IPv4 service address; None: detect at start."""
        if self.relay.address is not None:
            return self.relay.address
        for address in self.server.addresses:
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
                field.name: _plain(getattr(getattr(self, section), field.name), redact)
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


def _plain(value: object, redact: bool) -> Any:
    """``value`` as TOML/JSON data: addresses, listeners, enums as strings; tuples as lists."""
    if isinstance(value, Secret):
        return "<secret>" if redact else value.reveal()
    if isinstance(value, tuple):
        return [_plain(item, redact) for item in value]
    if isinstance(value, Mapping):
        return {key: _plain(item, redact) for key, item in value.items()}
    if value is None or isinstance(value, int) or type(value) is str:
        return value
    return str(value)  # StrEnum, Listener, addresses, networks.


def _describe(value: object) -> str:
    return "unset" if value is None else json.dumps(value, ensure_ascii=False)


# The loader.


@attrs.frozen
class _Raw:
    """A value before checking: ``text`` to convert or typed TOML data; ``origin`` for errors
    ("in <file>", "from TURND_X", "from override")."""

    value: object
    text: bool
    origin: str | None


def _where(origin: str | None) -> str:
    return f" ({origin})" if origin else ""


def _suggest(name: str, candidates: Sequence[str]) -> str:
    """' (did you mean X?)' when a candidate is close to ``name`` (or ends with it), else ''."""
    by_field = {candidate.rpartition(".")[2]: candidate for candidate in candidates}
    close = difflib.get_close_matches(name, candidates, 1, 0.7) or [
        by_field[match] for match in difflib.get_close_matches(name, list(by_field), 1, 0.7)
    ]
    return f" (did you mean {close[0]}?)" if close else ""


def _from_data(data: Mapping[str, object], origin: str | None) -> Iterator[tuple[str, _Raw]]:
    for section, table in data.items():
        if section not in _SECTIONS:
            hint = _suggest(f"[{section}]", [f"[{name}]" for name in _SECTIONS])
            raise ConfigError(f"unknown section [{section}]{_where(origin)}{hint}", section)
        if not isinstance(table, Mapping):
            got = f"must be a table ([{section}]), got {_show(table)}"
            raise ConfigError(f"{section}: {got}{_where(origin)}", section)
        for name, value in table.items():
            path = f"{section}.{name}"
            if path not in _FIELDS:
                hint = _suggest(path, list(_FIELDS))
                raise ConfigError(f"unknown field {path}{_where(origin)}{hint}", path)
            yield path, _Raw(value, False, origin)


def _from_environ(environ: Mapping[str, str]) -> Iterator[tuple[str, _Raw]]:
    known = {ENV_PREFIX + path.replace(".", "_").upper(): path for path in _FIELDS}
    ours = tuple(f"{ENV_PREFIX}{section.upper()}_" for section in _SECTIONS)
    for name in sorted(environ):
        if name in known:
            yield known[name], _Raw(environ[name], True, f"from {name}")
        elif name.startswith(ours):
            raise ConfigError(f"unknown environment variable {name}{_suggest(name, list(known))}")


def _from_overrides(overrides: Mapping[str, object]) -> Iterator[tuple[str, _Raw]]:
    for path, value in overrides.items():
        if path not in _FIELDS:
            raise ConfigError(f"unknown override {path}{_suggest(path, list(_FIELDS))}", path)
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
        except _Invalid as exc:
            raise ConfigError(f"{exc.path}: {exc.problem}{_where(item.origin)}", exc.path) from None
        values[path.partition(".")[0]][field.name] = value
    config = Config(**{section: _SECTIONS[section](**fields) for section, fields in values.items()})
    relay = config.relay
    _ordered(raw, "relay.port_min", relay.port_min, "relay.port_max", relay.port_max)
    _ordered(
        raw,
        "relay.allocation_lifetime",
        relay.allocation_lifetime,
        "relay.max_allocation_lifetime",
        relay.max_allocation_lifetime,
    )
    return config


def _ordered(raw: Mapping[str, _Raw], low: str, low_value: int, high: str, high_value: int) -> None:
    """Raise unless ``low_value <= high_value``, naming the one set (``high`` if both were)."""
    if low_value <= high_value:
        return
    if high not in raw:
        problem = f"must be <= {high} ({high_value}), got {low_value}"
        raise ConfigError(f"{low}: {problem}{_where(raw[low].origin)}", low)
    problem = f"must be >= {low} ({low_value}), got {high_value}"
    raise ConfigError(f"{high}: {problem}{_where(raw[high].origin)}", high)


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
