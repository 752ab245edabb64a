"""Configuration values and their kinds: what a config field may hold, and how it is checked.

Theory of operation
-------------------
Every field of the tree in :mod:`turnd.config` carries one *kind* in its metadata. A kind's
``parse(value, path, text)`` returns the value converted to the field's type, or raises
``Invalid(path, problem)``. ``text`` says the value is text to convert (an environment variable,
a ``str`` override) rather than typed TOML data, which must already have its TOML type.

Problems read "must be <expected>, got <value>", the value shown as the operator wrote it
(``show``); a secret kind shows only the type and length of what it got, never the value.

The value types fields hold (``Secret``, ``Listener``, the enums) live here too, so that the kinds
can build them, with the helpers that write values back out (``plain``) and name what an
operator may have meant (``suggest``); :mod:`turnd.config` re-exports the types. Nothing here
does I/O.
"""

import abc
import contextlib
import difflib
import enum
import ipaddress
import json
import math
import re
import types
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

import attrs

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

PORT_MAX = 65535  # The last TCP/UDP port.
USERNAME_MAX_BYTES = 508  # RFC 8489 §14.3: USERNAME MUST be fewer than 509 bytes.


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


class FastpathMode(enum.StrEnum):
    """Whether established UDP channels are relayed by the kernel program (turnd.fastpath)."""

    AUTO = "auto"
    ON = "on"
    OFF = "off"


class TlsVersion(enum.StrEnum):
    """The oldest TLS version the TLS listeners accept."""

    TLS_1_2 = "1.2"
    TLS_1_3 = "1.3"


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


class Invalid(Exception):
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


def show(value: object, secret: bool = False) -> str:
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
        return "[" + ", ".join(show(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_key(str(k))} = {show(v)}" for k, v in value.items()) + "}"
    return "nothing" if value is None else str(value)


def toml_key(name: str) -> str:
    """A TOML key: bare when it can be, quoted otherwise."""
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name, ensure_ascii=False)


def suggest(name: str, candidates: Sequence[str]) -> str:
    """' (did you mean X?)' when a candidate is close to ``name`` (or ends with it), else ''."""
    by_field = {candidate.rpartition(".")[2]: candidate for candidate in candidates}
    close = difflib.get_close_matches(name, candidates, 1, 0.7) or [
        by_field[match] for match in difflib.get_close_matches(name, list(by_field), 1, 0.7)
    ]
    return f" (did you mean {close[0]}?)" if close else ""


class Kind(abc.ABC):
    """Checks values of one field and converts them to the field's type."""

    expected = "a value"  # Completes "must be ...".
    secret = False  # Never show the value (errors, dumps).

    @abc.abstractmethod
    def parse(self, value: object, path: str, text: bool) -> Any:
        """The converted ``value``, or raise ``Invalid``."""

    def bad(self, path: str, value: object, expected: str | None = None) -> Invalid:
        """The standard complaint: must be <expected>, got <value>."""
        got = show(value, self.secret)
        return Invalid(path, f"must be {expected or self.expected}, got {got}")


class Str(Kind):
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


class SecretStr(Kind):
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


class Int(Kind):
    """An integer ``low``-``high`` (``high`` 0: no upper bound)."""

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


class Seconds(Kind):
    """A duration: a finite number of seconds above zero, integer or not; kept as a float."""

    expected = "a number of seconds > 0"

    def parse(self, value: object, path: str, text: bool) -> float:
        number = value
        if text and isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                raise self.bad(path, value) from None
        if not isinstance(number, int | float) or isinstance(number, bool):
            raise self.bad(path, value)
        if not (math.isfinite(number) and number > 0):
            raise self.bad(path, value)
        return float(number)


class Bool(Kind):
    """A boolean; as text, true/false, 1/0 or yes/no."""

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


class Choice(Kind):
    """One value of a ``StrEnum``, case-insensitive. Values that look like numbers ("1.2") are
    shown quoted, and a TOML number written for one is told to be quoted."""

    def __init__(self, choices: type[enum.StrEnum]) -> None:
        self.choices = choices
        quoted = any(not choice.isidentifier() for choice in choices)
        shown = (json.dumps(choice.value) if quoted else choice.value for choice in choices)
        self.expected = "one of " + ", ".join(shown)

    def parse(self, value: object, path: str, text: bool) -> enum.StrEnum:
        if isinstance(value, str) and value.strip().lower() in set(self.choices):
            return self.choices(value.strip().lower())
        if str(value) in set(self.choices):  # A TOML number: min_version = 1.2.
            raise self.bad(path, value, f'the string "{value}" (in quotes)')
        raise self.bad(path, value)


class ListOf(Kind):
    """A TOML array, or comma-separated text; each item checked by ``item``."""

    def __init__(self, item: Kind, what: str, *, non_empty: bool = False, unique: bool = False):
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
            raise Invalid(path, f"must not be empty, got {show(value)}")
        parsed: list[Any] = []
        for index, item in enumerate(items):
            converted = self.item.parse(item, f"{path}[{index}]", text)
            if self.unique and converted in parsed:
                first = parsed.index(converted)
                raise Invalid(f"{path}[{index}]", f"duplicate of {path}[{first}] ({converted})")
            parsed.append(converted)
        return tuple(parsed)


class ListenerSpec(Kind):
    """A ``Listener`` written "transport:port"."""

    expected = '"transport:port" with transport udp, tcp or tls and port 0-65535'

    def parse(self, value: object, path: str, text: bool) -> Listener:
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return Listener.parse(value)
        raise self.bad(path, value)


class Address(Kind):
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


@attrs.frozen
class Endpoint:
    """A local TCP listener of an auxiliary service (metrics): address and port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class HostPort(Kind):
    """An :class:`Endpoint` written ``address:port`` (``[v6]:port``); "" means off (None)."""

    expected = 'an "address:port" such as "127.0.0.1:9641" or "[::1]:9641", or "" (off)'

    def parse(self, value: object, path: str, text: bool) -> Endpoint | None:
        if value == "" or value is None:
            return None
        if isinstance(value, str) and ":" in value:
            host, _, port = value.strip().rpartition(":")
            bracketed = host.startswith("[") and host.endswith("]")
            with contextlib.suppress(ValueError):
                address = ipaddress.ip_address(host[1:-1] if bracketed else host)
                number = int(port)
                if 0 <= number <= PORT_MAX and (address.version == 4) != bracketed:
                    return Endpoint(str(address), number)
        raise self.bad(path, value)


@attrs.frozen
class ClusterNode:
    """One node of the cluster: its id and its backbone address ("1=10.0.0.1:7478")."""

    id: int
    backbone: Endpoint

    def __str__(self) -> str:
        return f"{self.id}={self.backbone}"


class ClusterNodeSpec(Kind):
    """A :class:`ClusterNode` written "id=address:port", id 1-65535."""

    expected = '"id=address:port" with id 1-65535, such as "1=10.0.0.1:7478"'
    _backbone = HostPort()

    def parse(self, value: object, path: str, text: bool) -> ClusterNode:
        if isinstance(value, str) and "=" in value:
            node, _, where = value.strip().partition("=")
            with contextlib.suppress(ValueError, Invalid):
                number = int(node)
                endpoint = self._backbone.parse(where.strip(), path, text)
                if 1 <= number <= PORT_MAX and endpoint is not None and endpoint.port:
                    return ClusterNode(number, endpoint)
        raise self.bad(path, value)


class Network(Kind):
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
                raise Invalid(
                    path,
                    f"{show(value)} overlaps {forbidden}, which can never be allowed: "
                    "0.0.0.0/8 and ::/128 reach the relay host itself",
                )
        return network


class Users(Kind):
    """username -> password: a TOML table, or text ``user:password,user:password``."""

    secret = True
    expected = "a table of username = password"
    _password = SecretStr()

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
                raise Invalid(path, f"{problem}, got {show(name)}")
            users[name] = self._password.parse(secret, f"{path}.{toml_key(name)}", text)
        return users


def plain(value: object, redact: bool) -> Any:
    """``value`` as TOML/JSON data: addresses, listeners, enums as strings; tuples as lists."""
    if isinstance(value, Secret):
        return "<secret>" if redact else value.reveal()
    if isinstance(value, tuple):
        return [plain(item, redact) for item in value]
    if isinstance(value, Mapping):
        return {key: plain(item, redact) for key, item in value.items()}
    if value is None or isinstance(value, int | float) or type(value) is str:
        return value
    return str(value)  # StrEnum, Listener, addresses, networks.
