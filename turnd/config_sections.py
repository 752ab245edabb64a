"""The sections of turnd's configuration: one frozen attrs class per TOML table.

Each field is documented once, right under it: what it is, its default and why. Its metadata
holds its *kind* (:mod:`turnd.config_values`), which checks and converts its values. A field the
core reads is a ``core_field``: it takes its default from ``CoreSettings`` and carries the link
``turnd.core_settings_map`` follows, so its docstring gives the reason for the default, not the
number (turnd.example.toml shows the numbers; a test keeps it in step). The root ``Config`` and
the loader are in :mod:`turnd.config`.
"""

import importlib.metadata
import ipaddress
from collections.abc import Mapping
from typing import Any

import attrs

from turnd.config_values import (
    PORT_MAX,
    Address,
    Bool,
    Choice,
    ClusterNode,
    ClusterNodeSpec,
    Endpoint,
    FastpathMode,
    HostPort,
    Int,
    IPAddress,
    IPNetwork,
    Kind,
    Listener,
    ListenerSpec,
    ListOf,
    LogFormat,
    LogLevel,
    Network,
    Seconds,
    Secret,
    SecretStr,
    Str,
    TlsVersion,
    Users,
)
from turnd.core_settings_map import CORE_DEFAULTS, RECIPROCAL, SAME, WHOLE, Conversion, CoreLink

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


def _package_version(distribution: str = "turnd") -> str:
    """The installed version of ``distribution``, or "dev" when running from a checkout."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "dev"


def _kind(kind: Kind) -> dict[str, Kind]:
    """Field metadata naming the field's kind."""
    return {"kind": kind}


def core_field(core: str, kind: Kind, conversion: Conversion = SAME, default: object = None) -> Any:
    """A field of ``kind`` that sets ``CoreSettings.<core>`` through ``conversion``; its default
    is the core's, converted, unless ``default`` is given (server.software names the version)."""
    if default is None:
        default = conversion.to_config(getattr(CORE_DEFAULTS, core))
    return attrs.field(default=default, metadata={"kind": kind, "core": CoreLink(core, conversion)})


# The tree. Each field: default and kind, then what it is, its default, and why.


@attrs.frozen
class ServerConfig:
    """[server]: who the server says it is, where it listens, where it keeps state, logging."""

    realm: str = core_field("realm", Str(max_chars=REALM_MAX_CHARS))
    """REALM of the long-term credentials (RFC 8489 §9.2). Default: the program's name. It is
    mixed into every long-term key, so changing it invalidates keys derived for the old realm."""

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

    software: str = core_field(
        "software",
        Str(allow_empty=True, max_chars=SOFTWARE_MAX_CHARS),
        default=f"turnd/{_package_version()}",
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

    workers: int = attrs.field(default=1, metadata=_kind(Int(0, 256)))
    """Worker processes that relay side by side, each on its own core with its own share of the
    relay ports, behind one supervisor (the main PID) that serves turnctl and the metrics for all
    of them; 0: one per usable core. Default 1: one process, as before. With more than one, the
    listeners are shared with SO_REUSEPORT and each client flow stays on one worker for its
    whole life; the relay port range is split evenly, so each worker holds its share of
    ``relay.port_max - relay.port_min + 1`` ports. Read at start."""

    upgrade_linger: int = attrs.field(default=3600, metadata=_kind(Int(0, 86400)))
    """Seconds a worker replaced by an upgrade in place (turnctl upgrade, SIGUSR2) goes on
    serving the TCP and TLS connections it holds, which cannot move to its successor, before
    it ends them; it exits as soon as the last one closes. Default 3600; 0 ends them at once.
    UDP allocations move to the successor whatever this says."""

    socket_rcvbuf: int = attrs.field(default=4 * 1024 * 1024, metadata=_kind(Int(0, 1 << 30)))
    """Bytes of receive buffer asked for on every UDP listener and relay socket (SO_RCVBUF):
    what a burst may queue while turnd is busy before the kernel drops it (counted as
    UdpRcvbufErrors). Default 4 MiB; 0 keeps the kernel's default. Linux caps it at
    net.core.rmem_max (208 KiB unless raised: systemd/turnd-sysctl.conf raises it to 16 MiB);
    turnd logs socket.buffers_capped at start when it gets less. Read at start and for each
    new relay socket."""

    socket_sndbuf: int = attrs.field(default=4 * 1024 * 1024, metadata=_kind(Int(0, 1 << 30)))
    """Bytes of send buffer asked for on every UDP listener and relay socket (SO_SNDBUF),
    capped by net.core.wmem_max. Default 4 MiB; 0 keeps the kernel's default."""

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

    port_min: int = core_field("port_min", Int(RELAY_PORT_MIN, PORT_MAX))
    """Lowest relay port. Default: where the dynamic range starts (RFC 6335 §6)."""

    port_max: int = core_field("port_max", Int(RELAY_PORT_MIN, PORT_MAX))
    """Highest relay port, at least port_min. Default: the last port, so the dynamic range has
    16384 ports per relay address."""

    allocation_lifetime: int = core_field("allocation_lifetime", Int(1), WHOLE)
    """Seconds an allocation lives when the client asks for less, or nothing. Default: the RFC
    8656 §7.2 default."""

    max_allocation_lifetime: int = core_field("max_allocation_lifetime", Int(1), WHOLE)
    """Longest lifetime a LIFETIME request gets, at least allocation_lifetime. Default: the
    maximum RFC 8656 §7.2 recommends."""

    permission_lifetime: int = core_field("permission_lifetime", Int(1), WHOLE)
    """Seconds a permission lives unless refreshed. Default: what RFC 8656 §9 fixes; change it
    only in tests."""

    channel_lifetime: int = core_field("channel_lifetime", Int(1), WHOLE)
    """Seconds a channel binding lives unless refreshed. Default: what RFC 8656 §12 fixes;
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

    allow_anonymous_binding: bool = core_field("allow_anonymous_binding", Bool())
    """Whether a STUN Binding request needs no credentials. Default: it does not, since ICE
    agents send plain Bindings to learn their server-reflexive address."""


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

    max_allocations: int = core_field("max_allocations", Int(1))
    """Allocations on this node, all users together. Default: about where memory, relay ports
    (16384 a relay address with the default range) and file descriptors run out."""

    max_allocations_per_user: int = core_field("max_allocations_per_user", Int(1))
    """Allocations per username. Default: enough for any application's user, too few for a
    leaked credential to take the node."""

    max_allocations_per_ip: int = core_field("max_allocations_per_ip", Int(1))
    """Allocations per client IP address. Default: room for a NAT full of clients, not for one
    host to drain the relay ports."""

    max_permissions_per_allocation: int = core_field("max_permissions_per_allocation", Int(1))
    """Permissions per allocation. Default: far more peers than an ICE session has, and a cap
    on the memory one allocation holds."""

    max_channels_per_allocation: int = core_field(
        "max_channels_per_allocation", Int(1, CHANNELS_MAX)
    )
    """Channel bindings per allocation, at most 4096 (the channel numbers of RFC 8656 §12).
    Default: as many as permissions, for the same reason."""

    max_peer_connections_per_allocation: int = core_field(
        "max_peer_connections_per_allocation", Int(1)
    )
    """RFC 6062 peer TCP connections per TCP allocation, made by Connect or accepted from peers.
    Default: a few ICE sessions' worth, since each is a socket and buffers; past it Connect gets
    403 and peers are refused."""

    allocation_packet_rate: int = core_field("allocation_packet_rate", Int(0), WHOLE)
    """Relayed packets per second per allocation, both directions together; 0: no limit.
    Default: far above any call; past it packets are dropped and counted."""

    allocation_byte_rate: int = core_field("allocation_byte_rate", Int(0), WHOLE)
    """Relayed payload bytes per second per allocation; 0: no limit. Default: 100 Mbit/s, so a
    4K screen share fits and one allocation cannot take the node's uplink."""

    new_peer_rate: int = core_field("new_peer_rate", Int(1), WHOLE)
    """New peer addresses per second one allocation may start using (a port-scan guard); past it
    Send drops and CreatePermission/ChannelBind get 403. Default: far above ICE's pace."""

    new_peer_burst: int = core_field("new_peer_burst", Int(1), WHOLE)
    """New peer addresses at once before new_peer_rate applies. Default: two seconds' worth,
    since ICE starts with a burst."""

    unauthenticated_rate: int = core_field("unauthenticated_rate", Int(1), WHOLE)
    """Answers per second to one source IP that has not authenticated (Binding, 401, 400 before
    credentials); past it requests from that address are dropped and counted
    (drops{reason="unauthenticated_rate"}). Default: generous, since many ICE clients share a
    NAT address."""

    unauthenticated_burst: int = core_field("unauthenticated_burst", Int(1), WHOLE)
    """How many such answers one source may get at once before the rate applies. Default: two
    seconds' worth."""

    unauthenticated_credit: int = core_field("unauthenticated_credit", Int(0))
    """Bytes one source IP may be answered beyond the bytes it sent, before it authenticates.
    Default: a browser's first 401 fits; a forged source's victim gets at most 1x what the
    attacker spends plus this (refilled in 60 s, and at once when the source authenticates).
    Past it answers are dropped and counted (drops{reason="unauthenticated_credit"})."""

    auth_failure_burst: int = core_field("auth_failure_burst", Int(1), WHOLE)
    """Failed authentications (wrong password, unknown user) one source IP may make at once;
    past it that source's signed requests, the right password included, are dropped and counted
    (auth_failure{reason="throttled"}) until it earns a failure back. Default: room for typos."""

    auth_failure_interval: float = core_field("auth_failure_rate", Seconds(), RECIPROCAL)
    """Seconds in which a source earns back one failed authentication. Default: a few seconds,
    which turns online password guessing from 25,000/s into a fraction of one a second."""

    auth_failure_user_burst: int = core_field("auth_failure_user_burst", Int(1), WHOLE)
    """Failed authentications one username may take from all sources together (guessing spread
    over many addresses); past it each failing source is throttled at its next failure, while
    sources that do not fail are never throttled. Default: five sources' bursts, earned back at
    one a second."""

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


FASTPATH_ROUTES_MAX = 1 << 20  # Two map entries of 120 bytes each per route: 250 MB at most.


@attrs.frozen
class FastpathConfig:
    """[fastpath]: the kernel data path for established UDP channels (eBPF at tc ingress)."""

    mode: FastpathMode = attrs.field(
        default=FastpathMode.AUTO, metadata=_kind(Choice(FastpathMode))
    )
    """"auto": relay established UDP channels in the kernel when the kernel, the privileges
    (CAP_BPF, CAP_NET_ADMIN) and the compiled program allow it, else say why in one log line and
    relay in userspace; "on": refuse to start without it; "off": userspace only. Default "auto"."""

    interfaces: tuple[str, ...] = attrs.field(
        default=(), metadata=_kind(ListOf(Str(), "interface names", unique=True))
    )
    """Interfaces the program is attached to. Default []: those that carry a listener or relay
    address, lo included; every interface up when one is a wildcard address or an address held
    on lo that is not a loopback one (a cluster's service IP)."""

    max_routes: int = attrs.field(default=65_536, metadata=_kind(Int(1, FASTPATH_ROUTES_MAX)))
    """Channels the kernel holds at once; the next ones are relayed in userspace. Default
    65536: one per channel of 16 allocations of 4096 channels, and 15 MB of kernel memory."""


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
