"""turnd configuration: one tree of frozen attrs classes, and the loader that fills it.

Theory of operation
-------------------
``Config`` holds one class per TOML section: ``[server]``, ``[relay]``, ``[auth]``, ``[tls]``,
``[limits]``, ``[peers]``. Each field is documented once, right under it, with its default and
why; its metadata holds its *kind* (:mod:`turnd.config_values`), the one object that checks and
converts its values. ``turnd.example.toml`` shows every field; a test keeps it in step.

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

import importlib.metadata
import ipaddress
import json
import tomllib
import types
from collections.abc import Iterator, Mapping
from typing import Any

import attrs

from turnd.config_values import PORT_MAX as PORT_MAX  # Re-exported: the public names of
from turnd.config_values import USERNAME_MAX_BYTES as USERNAME_MAX_BYTES  # config_values.
from turnd.config_values import (
    Address,
    Bool,
    Choice,
    ClusterNodeSpec,
    Endpoint,
    HostPort,
    Int,
    Invalid,
    Kind,
    ListenerSpec,
    ListOf,
    Network,
    Seconds,
    SecretStr,
    Str,
    Users,
    plain,
    show,
    suggest,
)
from turnd.config_values import ClusterNode as ClusterNode
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

REALM_MAX_CHARS = 127  # RFC 8489 §14.9: REALM MUST be fewer than 128 characters.
SOFTWARE_MAX_CHARS = 127  # RFC 8489 §14.14: SOFTWARE MUST be fewer than 128 characters.
RELAY_PORT_MIN = 1024  # Relay ports go to anyone authenticated: never privileged ones.
CHANNELS_MAX = 0x4FFF - 0x4000 + 1  # RFC 8656 §12: channel numbers 0x4000-0x4FFF, 4096 of them.
CLUSTER_KEY_MIN_CHARS = (
    32  # The backbone AEAD key is derived from it: 256 bits of entropy at least.
)
NONCE_KEY_MIN_CHARS = 16  # Shorter HMAC keys would let nonces be forged by brute force.
STREAM_MESSAGE_MIN = 1500  # A datagram of a full Ethernet MTU must fit in one stream frame.
STREAM_MESSAGE_MAX = 65535  # STUN and ChannelData lengths are 16 bits: no larger frame exists.
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


def _kind(kind: Kind) -> dict[str, Kind]:
    """Field metadata naming the field's kind."""
    return {"kind": kind}


# The tree. Each field: default and kind, then what it is, its default, and why.


@attrs.frozen
class ServerConfig:
    """[server]: who the server says it is, where it listens, where it keeps state, logging."""

    realm: str = attrs.field(default="turnd", metadata=_kind(Str(max_chars=REALM_MAX_CHARS)))
    """REALM of the long-term credentials (RFC 8489 §9.2). Default "turnd". It is mixed into
    every long-term key, so changing it invalidates keys derived for the old realm."""

    listen: tuple[Listener, ...] = attrs.field(
        default=tuple(
            Listener.parse(spec)
            for spec in ("udp:3478", "udp:53", "tcp:3478", "tcp:80", "tls:5349", "tls:443")
        ),
        metadata=_kind(
            ListOf(ListenerSpec(), '"transport:port" strings', non_empty=True, unique=True)
        ),
    )
    """Listeners, "transport:port", each opened on every service address. Default udp:3478,
    udp:53, tcp:3478, tcp:80, tls:5349, tls:443: the standard ports and those firewalls let
    through. Ports under 1024 need CAP_NET_BIND_SERVICE; one that cannot be bound is skipped (the
    daemon says why). Port 0 picks a free port (tests)."""

    addresses: tuple[IPAddress, ...] = attrs.field(
        default=(ipaddress.IPv4Address("0.0.0.0"),),
        metadata=_kind(ListOf(Address(), "IP addresses", non_empty=True, unique=True)),
    )
    """Service addresses the listeners bind, IPv4 or IPv6 literals. Default ["0.0.0.0"]: every
    IPv4 address. An anycast node names its service IP, so that replies leave from it."""

    software: str = attrs.field(
        default=f"turnd/{_package_version()}",
        metadata=_kind(Str(allow_empty=True, max_chars=SOFTWARE_MAX_CHARS)),
    )
    """SOFTWARE attribute of responses (RFC 8489 §14.14). Default "turnd/<version>", which helps
    debugging; "" sends none, to tell scanners nothing."""

    state_dir: str = attrs.field(default="/var/lib/turnd", metadata=_kind(Str()))
    """Where the daemon keeps what it generates when the config leaves it out: the REST secret,
    the nonce key, the self-signed certificate. Default "/var/lib/turnd", systemd's
    StateDirectory."""

    accept_damaged_revocations: bool = attrs.field(default=False, metadata=_kind(Bool()))
    """Start even when <state_dir>/revoked.runtime has lines that are not JSON strings, dropping
    them (and so accepting again whatever they revoked); the next write rewrites the file.
    Default false: turnd refuses to start, naming the file, since a silently dropped line
    would let a revoked credential in again. Also the flag --accept-damaged-revocations."""

    log_level: LogLevel = attrs.field(default=LogLevel.INFO, metadata=_kind(Choice(LogLevel)))
    """Least severe level logged: debug, info, warning or error. Default "info"."""

    log_format: LogFormat = attrs.field(default=LogFormat.TEXT, metadata=_kind(Choice(LogFormat)))
    """"text" for people, or "json" (one object a line) for log pipelines. Default "text"."""

    full_gc_interval: int = attrs.field(default=3600, metadata=_kind(Int(0)))
    """Seconds between full garbage collections; 0: never. Default 3600. Python would otherwise
    make one whenever its long-lived objects grow by a quarter, stopping all relaying for up to
    0.5 s with 20,000 allocations; turnd's state needs none (it is freed as it goes), so they
    are rare and logged (gc.full_collection) as a safety net. Read at start."""


@attrs.frozen
class RelayConfig:
    """[relay]: relayed transport addresses, and the lifetimes of what hangs off them."""

    address: ipaddress.IPv4Address | None = attrs.field(
        default=None, metadata=_kind(Address(4, concrete=True))
    )
    """IPv4 address relay sockets bind and XOR-RELAYED-ADDRESS carries. Default unset: the service
    address if it is concrete (Config.relay_address()), otherwise detected at start."""

    address6: ipaddress.IPv6Address | None = attrs.field(
        default=None, metadata=_kind(Address(6, concrete=True))
    )
    """IPv6 relay address, for REQUESTED-ADDRESS-FAMILY IPv6 (RFC 8656 §7.2). Default unset: no
    IPv6 relaying."""

    port_min: int = attrs.field(default=49152, metadata=_kind(Int(RELAY_PORT_MIN, PORT_MAX)))
    """Lowest relay port. Default 49152, where the dynamic range starts (RFC 6335 §6)."""

    port_max: int = attrs.field(default=65535, metadata=_kind(Int(RELAY_PORT_MIN, PORT_MAX)))
    """Highest relay port, at least port_min. Default 65535: 16384 ports per relay address."""

    allocation_lifetime: int = attrs.field(default=600, metadata=_kind(Int(1)))
    """Seconds an allocation lives when the client asks for less, or nothing. Default 600, the
    RFC 8656 §7.2 default."""

    max_allocation_lifetime: int = attrs.field(default=3600, metadata=_kind(Int(1)))
    """Longest lifetime a LIFETIME request gets, at least allocation_lifetime. Default 3600, the
    maximum RFC 8656 §7.2 recommends."""

    permission_lifetime: int = attrs.field(default=300, metadata=_kind(Int(1)))
    """Seconds a permission lives unless refreshed. Default 300, which RFC 8656 §9 fixes: change
    it only in tests."""

    channel_lifetime: int = attrs.field(default=600, metadata=_kind(Int(1)))
    """Seconds a channel binding lives unless refreshed. Default 600, which RFC 8656 §12 fixes:
    change it only in tests."""


@attrs.frozen
class AuthConfig:
    """[auth]: who may allocate. Secrets here print as <secret>."""

    secrets: tuple[Secret, ...] = attrs.field(
        default=(), metadata=_kind(ListOf(SecretStr(), "non-empty strings"))
    )
    """REST shared secrets for ephemeral credentials (username "<expiry>:<id>", password
    base64(HMAC-SHA1(secret, username))), newest first: credentials are minted with the first and
    accepted with any, so rotate by putting a new one in front, then dropping the old one once
    its credentials have expired. Default []: one is generated into state_dir."""

    users: Mapping[str, Secret] = attrs.field(factory=dict, metadata=_kind(Users()))
    """Static long-term users, username = password (RFC 8489 §9.2). Default {}: none."""

    users_file: str | None = attrs.field(default=None, metadata=_kind(Str()))
    """A file of "user:password" lines, more static users. Default unset: none."""

    nonce_key: Secret | None = attrs.field(
        default=None, metadata=_kind(SecretStr(NONCE_KEY_MIN_CHARS))
    )
    """HMAC key of the stateless nonces, at least 16 characters. Default unset: generated into
    state_dir. Give every node of a cluster the same key, so that a retry landing on another node
    still validates."""

    nonce_lifetime: int = attrs.field(default=600, metadata=_kind(Int(1)))
    """Seconds a nonce stays valid; then the client gets 438 Stale Nonce and retries with a new
    one. Default 600."""

    allow_anonymous_binding: bool = attrs.field(default=True, metadata=_kind(Bool()))
    """Whether a STUN Binding request needs no credentials. Default true: ICE agents send plain
    Bindings to learn their server-reflexive address."""


@attrs.frozen
class TlsConfig:
    """[tls]: the certificate of the TLS listeners (RFC 8656 §3.1; ALPN "stun.turn", RFC 7443)."""

    cert_file: str | None = attrs.field(default=None, metadata=_kind(Str()))
    """PEM certificate chain, leaf first, for the TLS listeners; set it with key_file, or
    neither. Default unset: a self-signed certificate is generated into <state_dir>/tls/ at start,
    with a warning, since browsers and most clients will not trust it. Re-read on SIGHUP."""

    key_file: str | None = attrs.field(default=None, metadata=_kind(Str()))
    """The unencrypted PEM private key of cert_file; set it with cert_file, or neither. Default
    unset: see cert_file."""

    min_version: TlsVersion = attrs.field(
        default=TlsVersion.TLS_1_2, metadata=_kind(Choice(TlsVersion))
    )
    """Oldest TLS version accepted, "1.2" or "1.3"; older ones never are (RFC 8996). Default
    "1.2": coturn's client tools and many browsers' TURN clients need it."""


@attrs.frozen
class MetricsConfig:
    """[metrics]: the Prometheus exposition of counters and gauges."""

    listen: Endpoint | None = attrs.field(
        default=Endpoint("127.0.0.1", 9641), metadata=_kind(HostPort())
    )
    """Where GET /metrics is served, as "address:port"; "" turns it off. Default
    "127.0.0.1:9641": local only, for a Prometheus agent on the host; expose it deliberately."""


@attrs.frozen
class ControlConfig:
    """[control]: the control API that turnctl talks to (HTTP + JSON)."""

    socket: str = attrs.field(
        default="/run/turnd/control.sock", metadata=_kind(Str(allow_empty=True))
    )
    """Unix socket of the control API (mode 0600: whoever may open it operates turnd); "" turns
    it off. Default /run/turnd/control.sock (systemd's RuntimeDirectory=turnd)."""

    listen: Endpoint | None = attrs.field(default=None, metadata=_kind(HostPort()))
    """Also serve the control API on TCP "address:port", with control.token required. Default
    unset: the Unix socket only."""

    token: Secret | None = attrs.field(default=None, metadata=_kind(SecretStr()))
    """Bearer token the TCP control listener requires. Default unset (needed with listen)."""


@attrs.frozen
class ApiConfig:
    """[api]: the credential REST endpoint application back ends call (HTTP + JSON)."""

    listen: Endpoint | None = attrs.field(default=None, metadata=_kind(HostPort()))
    """Where the endpoint listens, "address:port". Default unset: off."""

    public_host: str | None = attrs.field(default=None, metadata=_kind(Str()))
    """Host name or address put in the stun:/turn:/turns: URLs it returns. Default unset: the
    relay address."""

    keys: Mapping[str, Secret] = attrs.field(factory=dict, metadata=_kind(Users()))
    """Key ids and their bearer tokens, { key_id = "token" }: a back end calls
    /v1/turn/keys/<key_id>/... with "Authorization: Bearer <token>". Default {}."""

    max_ttl: int = attrs.field(default=172_800, metadata=_kind(Int(1, 172_800)))
    """Longest credential lifetime a caller may ask for, seconds. Default 172800 (48 h)."""

    max_revocations_per_key: int = attrs.field(default=10_000, metadata=_kind(Int(1, 1_000_000)))
    """Live revocations one key may hold; past it a revoke is 429. Default 10000: far more than
    the credentials an application revokes within max_ttl, and a bound on the list (and on
    revoked.runtime) a leaked key can grow."""


@attrs.frozen
class UsageConfig:
    """[usage]: accounting, one JSON line per ended allocation."""

    file: str | None = attrs.field(default=None, metadata=_kind(Str()))
    """File that receives one JSON object per line when an allocation ends (username, key id,
    customIdentifier, transport, bytes and packets each way, start, duration). Default unset:
    the same fields go only to the log (event allocation.ended)."""


@attrs.frozen
class LimitsConfig:
    """[limits]: quotas, so that no one user or host can take the node's resources."""

    max_allocations: int = attrs.field(default=100_000, metadata=_kind(Int(1)))
    """Allocations on this node, all users together. Default 100000: memory, relay ports (16384 a
    relay address with the default range) and file descriptors run out around there."""

    max_allocations_per_user: int = attrs.field(default=100, metadata=_kind(Int(1)))
    """Allocations per username. Default 100: a leaked credential cannot take the node."""

    max_allocations_per_ip: int = attrs.field(default=200, metadata=_kind(Int(1)))
    """Allocations per client IP address. Default 200: room for a NAT full of clients, not for
    one host to drain the relay ports."""

    max_permissions_per_allocation: int = attrs.field(default=1000, metadata=_kind(Int(1)))
    """Permissions per allocation. Default 1000: far more peers than an ICE session has, and a
    cap on the memory one allocation holds."""

    max_channels_per_allocation: int = attrs.field(
        default=1000, metadata=_kind(Int(1, CHANNELS_MAX))
    )
    """Channel bindings per allocation, at most 4096 (the channel numbers of RFC 8656 §12).
    Default 1000, for the same reason as permissions."""

    max_peer_connections_per_allocation: int = attrs.field(default=100, metadata=_kind(Int(1)))
    """RFC 6062 peer TCP connections per TCP allocation, made by Connect or accepted from peers.
    Default 100: each is a socket and buffers; past it Connect gets 403 and peers are refused."""

    allocation_packet_rate: int = attrs.field(default=50_000, metadata=_kind(Int(0)))
    """Relayed packets per second per allocation, both directions together; 0: no limit.
    Default 50000: far above any call; past it packets are dropped and counted."""

    allocation_byte_rate: int = attrs.field(default=12_500_000, metadata=_kind(Int(0)))
    """Relayed payload bytes per second per allocation; 0: no limit. Default 12500000 (100
    Mbit/s): a 4K screen share fits; one allocation cannot take the node's uplink."""

    new_peer_rate: int = attrs.field(default=50, metadata=_kind(Int(1)))
    """New peer addresses per second one allocation may start using (a port-scan guard); past it
    Send drops and CreatePermission/ChannelBind get 403. Default 50."""

    new_peer_burst: int = attrs.field(default=100, metadata=_kind(Int(1)))
    """New peer addresses at once before new_peer_rate applies (ICE starts with a burst).
    Default 100."""

    unauthenticated_rate: int = attrs.field(default=500, metadata=_kind(Int(1)))
    """Answers per second to one source IP that has not authenticated (Binding, 401, 400 before
    credentials). Default 500: many ICE clients share a NAT address; past it requests from that
    address are dropped and counted (drops{reason="unauthenticated_rate"})."""

    unauthenticated_burst: int = attrs.field(default=1000, metadata=_kind(Int(1)))
    """How many such answers one source may get at once before the rate applies. Default 1000."""

    unauthenticated_credit: int = attrs.field(default=4096, metadata=_kind(Int(0)))
    """Bytes one source IP may be answered beyond the bytes it sent, before it authenticates.
    Default 4096: a browser's first 401 fits; a forged source's victim gets at most 1x what the
    attacker spends plus this (refilled in 60 s, and at once when the source authenticates).
    Past it answers are dropped and counted (drops{reason="unauthenticated_credit"})."""

    auth_failure_burst: int = attrs.field(default=20, metadata=_kind(Int(1)))
    """Failed authentications (wrong password, unknown user) one source IP may make at once.
    Default 20; past it that source's signed requests, the right password included, are dropped
    and counted (auth_failure{reason="throttled"}) until it earns a failure back."""

    auth_failure_interval: float = attrs.field(default=5.0, metadata=_kind(Seconds()))
    """Seconds in which a source earns back one failed authentication. Default 5 (so 20 guesses
    a burst, then one per 5 s): online password guessing at 0.2/s instead of 25,000/s."""

    auth_failure_user_burst: int = attrs.field(default=100, metadata=_kind(Int(1)))
    """Failed authentications one username may take from all sources together (guessing spread
    over many addresses); past it each failing source is throttled at its next failure, while
    sources that do not fail are never throttled. Default 100, earned back at one a second."""

    max_connections: int = attrs.field(default=10_000, metadata=_kind(Int(1)))
    """TCP and TLS client connections on this node, all listeners together. Default 10000: each
    holds a file descriptor and buffers; past that, new connections are closed at once."""

    max_connections_per_ip: int = attrs.field(default=64, metadata=_kind(Int(1)))
    """TCP and TLS connections per client IP address. Default 64: room for a NAT of browsers,
    each opening a few, not for one host to take every connection. Both connection limits count
    a TLS connection from its TCP accept, during its handshake too."""

    tls_handshake_timeout: float = attrs.field(default=10.0, metadata=_kind(Seconds()))
    """Seconds a client has to complete the TLS handshake. Default 10: ample over a slow mobile
    link, short enough that stalled handshakes cannot pile up."""

    side_max_connections: int = attrs.field(default=64, metadata=_kind(Int(1)))
    """Open connections each side HTTP server (metrics, credential API, control over TCP and
    over its socket) accepts; past that, new ones are closed at accept and counted. Default 64:
    ample for a scraper and a few operators, and together far fewer file descriptors than the
    relays need."""

    side_header_timeout: float = attrs.field(default=10.0, metadata=_kind(Seconds()))
    """Seconds a side HTTP connection may go without a complete request head (on connecting,
    and idle between requests) before the server closes it. Default 10: a scraper or turnctl
    sends its request at once; a slow-header client cannot hold a connection longer."""

    idle_timeout: float = attrs.field(default=60.0, metadata=_kind(Seconds()))
    """Seconds a TCP/TLS connection may stay open without an allocation and without sending
    anything; one holding an allocation lives as long as the allocation. Default 60: a client
    allocates within seconds of connecting, so an idle connection is a scanner or a leak."""

    max_message_size: int = attrs.field(
        default=8192, metadata=_kind(Int(STREAM_MESSAGE_MIN, STREAM_MESSAGE_MAX))
    )
    """Bytes of one STUN or ChannelData frame on a TCP/TLS connection, 1500-65535; a larger one
    closes the connection. Default 8192: media datagrams stay under the path MTU, and this bounds
    what one connection makes the node buffer."""


@attrs.frozen
class PeersConfig:
    """[peers]: which peer addresses relays may reach, beside the built-in deny-list."""

    allow: tuple[IPNetwork, ...] = attrs.field(
        default=(), metadata=_kind(ListOf(Network(NEVER_ALLOWED_PEERS), "CIDR networks"))
    )
    """Networks allowed although the built-in deny-list has them (private, loopback, link-local,
    ...), e.g. ["127.0.0.0/8"] in tests. Default []. Never 0.0.0.0/8 or ::/128, nor a network
    overlapping them: those reach the relay host itself."""

    deny: tuple[IPNetwork, ...] = attrs.field(
        default=(), metadata=_kind(ListOf(Network(), "CIDR networks"))
    )
    """Networks denied beside the built-in deny-list, e.g. your own infrastructure. Default []."""


@attrs.frozen
class ClusterConfig:
    """[cluster]: many nodes behind one anycast service IP (DESIGN.md, "The cluster").

    With no nodes listed, turnd is a cluster of one: no backbone socket, no forwarding cost.
    Every node gets the same section, except node_id."""

    node_id: int = attrs.field(default=0, metadata=_kind(Int(0, PORT_MAX)))
    """This node's id, one of the ids in nodes. Default 0: no cluster."""

    nodes: tuple[ClusterNode, ...] = attrs.field(
        default=(),
        metadata=_kind(ListOf(ClusterNodeSpec(), '"id=address:port" strings', unique=True)),
    )
    """Every node that may run, "id=backbone-address:port", this one included. Default []: no
    cluster. List spare nodes too: relay port slices are cut among all listed nodes, so a node
    that starts later owns its slices at once (adding a node not listed needs a reload on every
    node)."""

    service_ip: IPAddress | None = attrs.field(default=None, metadata=_kind(Address(concrete=True)))
    """The anycast service IP every node holds (needed with nodes). Listeners bind it in place of
    a wildcard server address, so replies leave from it, and relayed addresses carry it. Default
    unset."""

    key: Secret | None = attrs.field(default=None, metadata=_kind(SecretStr(CLUSTER_KEY_MIN_CHARS)))
    """Shared secret sealing the backbone (ChaCha20-Poly1305 under a key derived from it), at
    least 32 characters: `openssl rand -base64 32` makes one. Needed with nodes. Default unset."""

    accept_keys: tuple[Secret, ...] = attrs.field(
        default=(),
        metadata=_kind(ListOf(SecretStr(CLUSTER_KEY_MIN_CHARS), "secrets of 32+ characters")),
    )
    """Older keys still accepted from other nodes during a key rotation. Default []. Rotate by
    adding the new key here on every node, then making it the key, then dropping the old one;
    a reload (SIGHUP, turnctl reload) applies each step."""

    heartbeat_interval: float = attrs.field(default=0.5, metadata=_kind(Seconds()))
    """Seconds between heartbeats to every other node. Default 0.5."""

    dead_after: float = attrs.field(default=2.0, metadata=_kind(Seconds()))
    """Seconds without a heartbeat before a node leaves the view (its flows move to the others),
    more than heartbeat_interval. Default 2: four heartbeats lost."""

    slice_size: int = attrs.field(default=64, metadata=_kind(Int(1, PORT_MAX)))
    """Relay ports in one slice of the relay range; slices are shared among the listed nodes.
    Default 64: fine-grained enough to balance, coarse enough to list."""

    setup_service_ip: bool = attrs.field(default=True, metadata=_kind(Bool()))
    """Put service_ip on the loopback interface at start when it is missing (needs
    CAP_NET_ADMIN). Default true; false when the network setup does it."""

    @property
    def enabled(self) -> bool:
        """True when this node is part of a cluster (nodes are listed)."""
        return bool(self.nodes)


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
