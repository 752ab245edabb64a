"""turnd.config: defaults, the example file, layering, every error, and secrets kept quiet."""

import ast
import ipaddress
import os
import pathlib
import re

import attrs
import pytest

from turnd import config, config_sections, config_values
from turnd.config import (
    Config,
    ConfigError,
    Listener,
    LogFormat,
    LogLevel,
    Secret,
    TlsVersion,
    Transport,
    config_from_mapping,
    load_config,
    parse_config,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "turnd.example.toml"
SOURCE = pathlib.Path(config_sections.__file__)
SOURCES = (pathlib.Path(config.__file__), SOURCE, pathlib.Path(config_values.__file__))
SECTIONS = (
    "server",
    "relay",
    "auth",
    "tls",
    "limits",
    "peers",
    "metrics",
    "usage",
    "control",
    "api",
    "cluster",
    "fastpath",
)
ALL_FIELDS = [
    f"{section}.{field.name}"
    for section in SECTIONS
    for field in attrs.fields(type(getattr(Config.default(), section)))
]


def error(text: str, environ: dict[str, str] | None = None) -> ConfigError:
    """The ConfigError that TOML ``text`` (and ``environ``) raise."""
    with pytest.raises(ConfigError) as caught:
        parse_config(text, environ or {})
    return caught.value


# Defaults -----------------------------------------------------------------------------------


def test_defaults_are_the_documented_ones() -> None:
    """Config.default() holds the defaults of DESIGN.md and RFC 8656."""
    c = Config.default()
    assert c.server.realm == "turnd"
    listen = "udp:3478 udp:53 tcp:3478 tcp:80 tls:5349 tls:443"
    assert [str(listener) for listener in c.server.listen] == listen.split()
    assert c.server.addresses == (ipaddress.IPv4Address("0.0.0.0"),)
    assert c.server.software.startswith("turnd/")
    assert c.server.state_dir == "/var/lib/turnd"
    assert (c.server.log_level, c.server.log_format) == (LogLevel.INFO, LogFormat.TEXT)
    assert (c.relay.address, c.relay.address6) == (None, None)
    assert (c.relay.port_min, c.relay.port_max) == (49152, 65535)
    assert (c.relay.allocation_lifetime, c.relay.max_allocation_lifetime) == (600, 3600)
    assert (c.relay.permission_lifetime, c.relay.channel_lifetime) == (300, 600)
    assert (c.auth.secrets, dict(c.auth.users), c.auth.users_file) == ((), {}, None)
    assert (c.auth.nonce_key, c.auth.nonce_lifetime) == (None, 600)
    assert c.auth.allow_anonymous_binding is True
    assert (c.tls.cert_file, c.tls.key_file, c.tls.min_version) == (None, None, TlsVersion.TLS_1_2)
    assert attrs.asdict(c.limits) == {
        "max_allocations": 100_000,
        "max_allocations_per_user": 100,
        "max_allocations_per_ip": 200,
        "max_permissions_per_allocation": 1000,
        "max_channels_per_allocation": 1000,
        "max_peer_connections_per_allocation": 100,
        "allocation_packet_rate": 50_000,
        "allocation_byte_rate": 12_500_000,
        "new_peer_rate": 50,
        "new_peer_burst": 100,
        "unauthenticated_rate": 500,
        "unauthenticated_burst": 1000,
        "unauthenticated_credit": 4096,
        "auth_failure_burst": 20,
        "auth_failure_interval": 5.0,
        "auth_failure_user_burst": 100,
        "max_connections": 10_000,
        "max_connections_per_ip": 64,
        "tls_handshake_timeout": 10,
        "side_max_connections": 64,
        "side_header_timeout": 10,
        "idle_timeout": 60,
        "max_message_size": 8192,
    }
    assert (c.peers.allow, c.peers.deny) == ((), ())


def test_no_file_no_environment_no_overrides_gives_the_defaults() -> None:
    """load_config(None, {}) runs on the embedded defaults."""
    assert load_config(None, {}) == Config.default()
    assert parse_config("", {}) == Config.default()


def test_defaults_pass_their_own_checks() -> None:
    """The defaults, written out unredacted, load back unchanged."""
    assert config_from_mapping(Config.default().to_dict(redact=False)) == Config.default()


def test_every_field_is_documented_right_under_it() -> None:
    """Each field of each section class is followed by its docstring (documented once)."""
    tree = ast.parse(SOURCE.read_text())
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    for section in SECTIONS:
        cls = type(getattr(Config.default(), section))
        body = classes[cls.__name__].body
        for index, node in enumerate(body):
            if isinstance(node, ast.AnnAssign):
                following = body[index + 1]
                assert isinstance(following, ast.Expr), ast.unparse(node)
                assert isinstance(following.value, ast.Constant), ast.unparse(node)
                assert "Default" in str(following.value.value), ast.unparse(node)


def test_software_version_falls_back_to_dev_outside_an_installation() -> None:
    """Without package metadata the SOFTWARE default still names turnd."""
    assert config_sections._package_version("no-such-distribution-for-turnd-tests") == "dev"
    assert config_sections._package_version("attrs") == attrs.__version__


# The example file ---------------------------------------------------------------------------


def example_settings() -> list[tuple[str, str]]:
    """("section.field", line) for every "#field = value" line of the example."""
    section, found = "", []
    for line in EXAMPLE.read_text().splitlines():
        if match := re.fullmatch(r"\[(\w+)\]", line):
            section = match[1]
        elif match := re.match(r"#(\w+) = ", line):
            found.append((f"{section}.{match[1]}", line))
    return found


def test_example_file_as_shipped_gives_the_defaults() -> None:
    """turnd.example.toml, all settings commented out, loads to the defaults."""
    assert load_config(str(EXAMPLE), {}) == Config.default()


def test_example_file_shows_every_field_exactly_once() -> None:
    """Every field appears once in the example, so the example never falls behind."""
    shown = [path for path, _ in example_settings()]
    assert sorted(shown) == sorted(ALL_FIELDS)


def test_example_file_values_are_valid_and_are_the_defaults() -> None:
    """Uncommented, the example loads; except example values, it states the real defaults."""
    examples = {"server.software", "relay.address", "relay.address6", "auth.users_file"}
    examples |= {"auth.secrets", "auth.users", "auth.nonce_key", "peers.allow", "peers.deny"}
    examples |= {"tls.cert_file", "tls.key_file", "usage.file", "control.listen", "control.token"}
    examples |= {"api.listen", "api.public_host", "api.keys"}
    examples |= {"cluster.node_id", "cluster.nodes", "cluster.service_ip", "cluster.key"}
    examples |= {"cluster.accept_keys", "fastpath.interfaces"}
    text = EXAMPLE.read_text()
    for _, line in example_settings():
        text = text.replace(line, line[1:])
    loaded = parse_config(text, {}).to_dict(redact=False)
    default = Config.default().to_dict(redact=False)
    for path in ALL_FIELDS:
        section, _, name = path.partition(".")
        if path in examples:
            assert loaded[section][name] != default[section][name], path
        else:
            assert loaded[section][name] == default[section][name], path


# Layers -------------------------------------------------------------------------------------

FILE = """
[server]
realm = "from-file"
listen = ["udp:3478", "tcp:3478"]
[relay]
address = "192.0.2.1"
port_min = 50000
"""


def test_environment_wins_over_the_file() -> None:
    """TURND_<SECTION>_<FIELD> replaces the file's value; other file values stay."""
    c = parse_config(FILE, {"TURND_SERVER_REALM": "from-env", "TURND_RELAY_PORT_MAX": "60000"})
    assert c.server.realm == "from-env"
    assert (c.relay.port_min, c.relay.port_max) == (50000, 60000)


def test_overrides_win_over_the_environment() -> None:
    """An override "section.field" replaces both the environment and the file."""
    environ = {"TURND_SERVER_REALM": "from-env"}
    c = parse_config(FILE, environ, {"server.realm": "from-flag", "relay.port_min": 55000})
    assert (c.server.realm, c.relay.port_min) == ("from-flag", 55000)


def test_lists_are_replaced_whole() -> None:
    """A list from the environment replaces the file's list; it is not merged."""
    c = parse_config(FILE, {"TURND_SERVER_LISTEN": "tls:443, udp:53 ,"})
    assert c.server.listen == (Listener(Transport.TLS, 443), Listener(Transport.UDP, 53))


def test_load_config_reads_the_file_then_environment_then_overrides(
    tmp_path: pathlib.Path,
) -> None:
    """load_config applies the same three layers to a file on disk."""
    path = tmp_path / "turnd.toml"
    path.write_text(FILE)
    c = load_config(str(path), {"TURND_LIMITS_MAX_ALLOCATIONS": "7"}, {"server.realm": "x"})
    assert (c.server.realm, c.relay.port_min, c.limits.max_allocations) == ("x", 50000, 7)


@pytest.mark.parametrize(
    ("name", "text", "path", "expected"),
    [
        ("TURND_RELAY_PORT_MIN", " 50000 ", "relay.port_min", 50000),
        ("TURND_AUTH_ALLOW_ANONYMOUS_BINDING", "no", "auth.allow_anonymous_binding", False),
        ("TURND_AUTH_ALLOW_ANONYMOUS_BINDING", "YES", "auth.allow_anonymous_binding", True),
        ("TURND_AUTH_ALLOW_ANONYMOUS_BINDING", "0", "auth.allow_anonymous_binding", False),
        ("TURND_SERVER_LOG_LEVEL", "DEBUG", "server.log_level", LogLevel.DEBUG),
        ("TURND_SERVER_ADDRESSES", "192.0.2.1,2001:db8::1", "server.addresses",
         (ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("2001:db8::1"))),
        ("TURND_AUTH_SECRETS", "new,old", "auth.secrets", (Secret("new"), Secret("old"))),
        ("TURND_AUTH_SECRETS", "", "auth.secrets", ()),
        ("TURND_AUTH_USERS", "alice:pw:1, bob:two,", "auth.users",
         {"alice": Secret("pw:1"), "bob": Secret("two")}),
        ("TURND_AUTH_USERS_FILE", "/etc/turnd/users", "auth.users_file", "/etc/turnd/users"),
        ("TURND_AUTH_NONCE_KEY", "k" * 16, "auth.nonce_key", Secret("k" * 16)),
        ("TURND_RELAY_ADDRESS", "", "relay.address", None),
        ("TURND_RELAY_ADDRESS6", "2001:db8::2", "relay.address6",
         ipaddress.IPv6Address("2001:db8::2")),
        ("TURND_SERVER_SOFTWARE", "", "server.software", ""),
        ("TURND_PEERS_ALLOW", "127.0.0.1/8,::1", "peers.allow",
         (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))),
        ("TURND_TLS_MIN_VERSION", " 1.3 ", "tls.min_version", TlsVersion.TLS_1_3),
        ("TURND_LIMITS_IDLE_TIMEOUT", " 2.5 ", "limits.idle_timeout", 2.5),
        ("TURND_LIMITS_TLS_HANDSHAKE_TIMEOUT", "5", "limits.tls_handshake_timeout", 5.0),
        ("TURND_LIMITS_MAX_MESSAGE_SIZE", "65535", "limits.max_message_size", 65535),
    ],
)  # fmt: skip
def test_environment_text_is_converted_to_the_field_type(
    name: str, text: str, path: str, expected: object
) -> None:
    """Environment values are text: ints, booleans, lists, users, optionals are converted."""
    section, _, field = path.partition(".")
    c = parse_config(FILE, {name: text})
    assert getattr(getattr(c, section), field) == expected


def test_string_overrides_are_text_and_typed_overrides_are_data() -> None:
    """A str override converts like the environment; other values are taken as TOML data."""
    c = parse_config("", {}, {"auth.allow_anonymous_binding": "no", "peers.deny": ["10.0.0.0/8"]})
    assert c.auth.allow_anonymous_binding is False
    assert c.peers.deny == (ipaddress.ip_network("10.0.0.0/8"),)
    assert parse_config(FILE, {}, {"relay.address": None}).relay.address is None


def test_tls_certificate_and_key_are_set_together() -> None:
    """tls.cert_file and tls.key_file come as a pair from any layer; empty text unsets both."""
    c = parse_config("", {"TURND_TLS_CERT_FILE": "/c.pem", "TURND_TLS_KEY_FILE": "/k.pem"})
    assert (c.tls.cert_file, c.tls.key_file) == ("/c.pem", "/k.pem")
    text = '[tls]\ncert_file = "/c.pem"\nkey_file = "/k.pem"\n'
    c = parse_config(text, {"TURND_TLS_CERT_FILE": "", "TURND_TLS_KEY_FILE": " "})
    assert (c.tls.cert_file, c.tls.key_file) == (None, None)


def test_timeouts_take_integers_or_fractions_and_keep_floats() -> None:
    """Timeouts are seconds > 0, written 30 or 2.5; they load as floats and round-trip."""
    c = parse_config("[limits]\nidle_timeout = 30\ntls_handshake_timeout = 2.5", {})
    assert (c.limits.idle_timeout, c.limits.tls_handshake_timeout) == (30.0, 2.5)
    assert isinstance(c.limits.idle_timeout, float)
    assert c.to_dict()["limits"]["tls_handshake_timeout"] == 2.5
    assert config_from_mapping(c.to_dict(redact=False)) == c
    assert "limits.idle_timeout = 30.0" in c.describe().splitlines()


def test_other_turnd_variables_are_left_alone() -> None:
    """TURND_* names outside a config section (say, the CLI's) are not the loader's business."""
    assert parse_config("", {"TURND_CONFIG": "/x", "PATH": "/bin"}) == Config.default()


def test_the_module_never_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the environ argument counts; os.environ is not even imported."""
    monkeypatch.setitem(os.environ, "TURND_SERVER_REALM", "leaked")
    assert load_config(None, {}).server.realm == "turnd"
    imported = {
        alias.name
        for source in SOURCES
        for node in ast.walk(ast.parse(source.read_text()))
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert "os" not in imported


# Errors -------------------------------------------------------------------------------------

BAD_VALUES = [
    # [server]
    (
        '[server]\nrealm = ""',
        "server.realm",
        'must be a non-empty string of at most 127 characters, got ""',
    ),
    ("[server]\nrealm = 5", "server.realm", "got 5"),
    (f'[server]\nrealm = "{"r" * 128}"', "server.realm", '..."'),
    (
        '[server]\nrealm = {a = 1, "b c" = [true, 1.5]}',
        "server.realm",
        'got {a = 1, "b c" = [true, 1.5]}',
    ),
    (
        '[server]\nlisten = "udp:3478"',
        "server.listen",
        'must be a list of "transport:port" strings, got "udp:3478"',
    ),
    ("[server]\nlisten = []", "server.listen", "must not be empty, got []"),
    (
        '[server]\nlisten = ["udp:3478", "sctp:1"]',
        "server.listen[1]",
        'must be "transport:port" with transport udp, tcp or tls and port 0-65535, got "sctp:1"',
    ),
    ('[server]\nlisten = ["udp:65536"]', "server.listen[0]", 'got "udp:65536"'),
    ('[server]\nlisten = ["udp:x"]', "server.listen[0]", 'got "udp:x"'),
    ("[server]\nlisten = [3478]", "server.listen[0]", "got 3478"),
    (
        '[server]\nlisten = ["udp:3478", "UDP:3478"]',
        "server.listen[1]",
        "duplicate of server.listen[0] (udp:3478)",
    ),
    (
        '[server]\naddresses = ["192.0.2.300"]',
        "server.addresses[0]",
        'must be an IP address, got "192.0.2.300"',
    ),
    ("[server]\naddresses = [1]", "server.addresses[0]", "must be an IP address, got 1"),
    (
        '[server]\naddresses = ["::", "0:0::0"]',
        "server.addresses[1]",
        "duplicate of server.addresses[0] (::)",
    ),
    (
        f'[server]\nsoftware = "{"s" * 128}"',
        "server.software",
        "must be a string of at most 127 characters",
    ),
    ('[server]\nstate_dir = ""', "server.state_dir", "must be a non-empty string"),
    (
        '[server]\nlog_level = "verbose"',
        "server.log_level",
        'must be one of debug, info, warning, error, got "verbose"',
    ),
    ("[server]\nlog_format = 1", "server.log_format", "must be one of text, json, got 1"),
    # [relay]
    (
        '[relay]\naddress = "::1"',
        "relay.address",
        'must be a concrete IPv4 address (not 0.0.0.0), got "::1"',
    ),
    ('[relay]\naddress = "0.0.0.0"', "relay.address", 'got "0.0.0.0"'),
    (
        '[relay]\naddress6 = "::"',
        "relay.address6",
        'must be a concrete IPv6 address (not ::), got "::"',
    ),
    ('[relay]\nport_min = "abc"', "relay.port_min", 'must be an integer 1024-65535, got "abc"'),
    ("[relay]\nport_min = 80", "relay.port_min", "must be an integer 1024-65535, got 80"),
    ("[relay]\nport_max = 65536", "relay.port_max", "must be an integer 1024-65535, got 65536"),
    ("[relay]\nport_min = 1.5", "relay.port_min", "got 1.5"),
    ("[relay]\nport_min = true", "relay.port_min", "got true"),
    (
        "[relay]\nallocation_lifetime = 0",
        "relay.allocation_lifetime",
        "must be an integer >= 1, got 0",
    ),
    ("[relay]\nmax_allocation_lifetime = -1", "relay.max_allocation_lifetime", "got -1"),
    ("[relay]\npermission_lifetime = [300]", "relay.permission_lifetime", "got [300]"),
    ('[relay]\nchannel_lifetime = "600"', "relay.channel_lifetime", 'got "600"'),
    (
        "[relay]\nport_max = 50000\nport_min = 50001",
        "relay.port_max",
        "must be >= relay.port_min (50001), got 50000",
    ),
    ("[relay]\nport_max = 2000", "relay.port_max", "must be >= relay.port_min (49152), got 2000"),
    (
        "[relay]\nallocation_lifetime = 7200",
        "relay.allocation_lifetime",
        "must be <= relay.max_allocation_lifetime (3600), got 7200",
    ),
    (
        "[relay]\nmax_allocation_lifetime = 60",
        "relay.max_allocation_lifetime",
        "must be >= relay.allocation_lifetime (600), got 60",
    ),
    # [auth]
    (
        '[auth]\nsecrets = "abc"',
        "auth.secrets",
        "must be a list of non-empty strings, got a string",
    ),
    (
        '[auth]\nsecrets = ["new", ""]',
        "auth.secrets[1]",
        "must be a non-empty string, got an empty string",
    ),
    ("[auth]\nsecrets = [7]", "auth.secrets[0]", "got an integer"),
    (
        '[auth]\nusers = "alice"',
        "auth.users",
        "must be a table of username = password, got a string",
    ),
    ('[auth.users]\nalice = ""', "auth.users.alice", "got an empty string"),
    ('[auth.users]\n"bob smith" = 1', 'auth.users."bob smith"', "got an integer"),
    ('[auth.users]\n"" = "pw"', "auth.users", 'usernames must be 1-508 bytes of UTF-8, got ""'),
    (f'[auth.users]\n{"u" * 509} = "pw"', "auth.users", "usernames must be 1-508 bytes"),
    ('[auth]\nusers_file = ""', "auth.users_file", 'must be a non-empty string, got ""'),
    (
        '[auth]\nnonce_key = "short"',
        "auth.nonce_key",
        "must be a string of at least 16 characters, got a string of 5 characters",
    ),
    ("[auth]\nnonce_key = 2024-01-01", "auth.nonce_key", "got a value"),
    ("[auth]\nnonce_lifetime = 0", "auth.nonce_lifetime", "must be an integer >= 1, got 0"),
    (
        '[auth]\nallow_anonymous_binding = "yes"',
        "auth.allow_anonymous_binding",
        'must be true or false, got "yes"',
    ),
    # [limits]
    ("[limits]\nmax_allocations = 0", "limits.max_allocations", "must be an integer >= 1, got 0"),
    ("[limits]\nmax_allocations_per_user = 0", "limits.max_allocations_per_user", "got 0"),
    ("[limits]\nmax_allocations_per_ip = 0", "limits.max_allocations_per_ip", "got 0"),
    (
        "[limits]\nmax_permissions_per_allocation = 0",
        "limits.max_permissions_per_allocation",
        "got 0",
    ),
    (
        "[limits]\nmax_channels_per_allocation = 4097",
        "limits.max_channels_per_allocation",
        "must be an integer 1-4096, got 4097",
    ),
    ("[limits]\nmax_connections = 0", "limits.max_connections", "must be an integer >= 1, got 0"),
    ("[limits]\nmax_connections_per_ip = 0", "limits.max_connections_per_ip", "got 0"),
    (
        "[limits]\ntls_handshake_timeout = 0",
        "limits.tls_handshake_timeout",
        "must be a number of seconds > 0, got 0",
    ),
    ("[limits]\nidle_timeout = -0.5", "limits.idle_timeout", "got -0.5"),
    ('[limits]\nidle_timeout = "60"', "limits.idle_timeout", 'got "60"'),
    ("[limits]\nidle_timeout = true", "limits.idle_timeout", "got true"),
    ("[limits]\nidle_timeout = inf", "limits.idle_timeout", "got inf"),
    ("[limits]\nidle_timeout = nan", "limits.idle_timeout", "got nan"),
    (
        "[limits]\nmax_message_size = 1499",
        "limits.max_message_size",
        "must be an integer 1500-65535, got 1499",
    ),
    ("[limits]\nmax_message_size = 65536", "limits.max_message_size", "got 65536"),
    # [tls]
    ('[tls]\ncert_file = ""', "tls.cert_file", 'must be a non-empty string, got ""'),
    ("[tls]\nkey_file = 1", "tls.key_file", "must be a non-empty string, got 1"),
    (
        '[tls]\nmin_version = "1.1"',
        "tls.min_version",
        'must be one of "1.2", "1.3", got "1.1"',
    ),
    (
        "[tls]\nmin_version = 1.3",
        "tls.min_version",
        'must be the string "1.3" (in quotes), got 1.3',
    ),
    ("[tls]\nmin_version = 1.1", "tls.min_version", 'must be one of "1.2", "1.3", got 1.1'),
    (
        '[tls]\ncert_file = "/etc/turnd/cert.pem"',
        "tls.key_file",
        "tls.key_file: must be set too, since tls.cert_file is: set both, or neither",
    ),
    (
        '[tls]\nkey_file = "/etc/turnd/key.pem"',
        "tls.cert_file",
        "tls.cert_file: must be set too, since tls.key_file is: set both, or neither",
    ),
    # [peers]
    (
        '[peers]\nallow = ["0.0.0.0/0"]',
        "peers.allow[0]",
        '"0.0.0.0/0" overlaps 0.0.0.0/8, which can never be allowed',
    ),
    ('[peers]\nallow = ["::1", "0.0.0.1"]', "peers.allow[1]", "overlaps 0.0.0.0/8"),
    (
        '[peers]\nallow = ["::/0"]',
        "peers.allow[0]",
        '"::/0" overlaps ::/128, which can never be allowed',
    ),
    (
        '[peers]\nallow = ["10.0.0.0/33"]',
        "peers.allow[0]",
        'must be a CIDR network such as 192.0.2.0/24 or 2001:db8::/32, got "10.0.0.0/33"',
    ),
    (
        "[peers]\ndeny = [10]",
        "peers.deny[0]",
        "must be a CIDR network such as 192.0.2.0/24 or 2001:db8::/32, got 10",
    ),
    (
        '[peers]\ndeny = "10.0.0.0/8"',
        "peers.deny",
        'must be a list of CIDR networks, got "10.0.0.0/8"',
    ),
    # Structure
    ('[serverr]\nrealm = "x"', "serverr", "unknown section [serverr] (did you mean [server]?)"),
    ("[quic]\nport = 1", "quic", "unknown section [quic]"),
    ("[tls]\ncert = 1", "tls.cert", "unknown field tls.cert (did you mean tls.cert_file?)"),
    ("[peer]\nallow = []", "peer", "unknown section [peer] (did you mean [peers]?)"),
    ("server = 5", "server", "server: must be a table ([server]), got 5"),
    (
        '[server]\nrealmm = "x"',
        "server.realmm",
        "unknown field server.realmm (did you mean server.realm?)",
    ),
    (
        "[relay]\nport_range = 1",
        "relay.port_range",
        "unknown field relay.port_range (did you mean relay.port_min?)",
    ),
    ("[limits]\nzzz = 1", "limits.zzz", "unknown field limits.zzz"),
]


@pytest.mark.parametrize(("text", "path", "fragment"), BAD_VALUES)
def test_bad_file_value_names_its_dotted_field(text: str, path: str, fragment: str) -> None:
    """Each check names the field by its dotted path and says what is expected."""
    caught = error(text)
    assert caught.field == path
    assert fragment in str(caught)
    assert str(caught).startswith(path) or str(caught).startswith("unknown")


def test_unknown_field_without_a_close_name_gets_no_guess() -> None:
    """No "did you mean" when nothing is close."""
    assert "did you mean" not in str(error("[limits]\nzzz = 1"))
    assert "did you mean" not in str(error("[quic]\nport = 1"))


BAD_TEXT = [
    (
        {"TURND_RELAY_PORT_MIN": "abc"},
        "relay.port_min",
        'relay.port_min: must be an integer 1024-65535, got "abc" (from TURND_RELAY_PORT_MIN)',
    ),
    (
        {"TURND_AUTH_ALLOW_ANONYMOUS_BINDING": "maybe"},
        "auth.allow_anonymous_binding",
        'must be one of true/false, 1/0, yes/no, got "maybe"',
    ),
    ({"TURND_SERVER_LISTEN": ""}, "server.listen", 'must not be empty, got ""'),
    (
        {"TURND_SERVER_LISTEN": "udp:1,bogus"},
        "server.listen[1]",
        'got "bogus" (from TURND_SERVER_LISTEN)',
    ),
    (
        {"TURND_AUTH_USERS": "alice"},
        "auth.users",
        "must be comma-separated user:password items, got a string of 5",
    ),
    ({"TURND_AUTH_USERS": ":pw"}, "auth.users", 'usernames must be 1-508 bytes of UTF-8, got ""'),
    ({"TURND_AUTH_USERS": "alice:"}, "auth.users.alice", "got an empty string"),
    ({"TURND_RELAY_PORT_MAX": "2000"}, "relay.port_max", "(from TURND_RELAY_PORT_MAX)"),
    (
        {"TURND_LIMITS_IDLE_TIMEOUT": "soon"},
        "limits.idle_timeout",
        'must be a number of seconds > 0, got "soon" (from TURND_LIMITS_IDLE_TIMEOUT)',
    ),
    ({"TURND_LIMITS_IDLE_TIMEOUT": "nan"}, "limits.idle_timeout", 'got "nan"'),
    ({"TURND_TLS_MIN_VERSION": "1.0"}, "tls.min_version", 'got "1.0"'),
    (
        {"TURND_TLS_KEY_FILE": "/k.pem"},
        "tls.cert_file",
        "must be set too, since tls.key_file is: set both, or neither "
        "(for a generated self-signed certificate) "
        "(from TURND_TLS_KEY_FILE)",
    ),
    (
        {"TURND_SERVER_REALMM": "x"},
        None,
        "unknown environment variable TURND_SERVER_REALMM (did you mean TURND_SERVER_REALM?)",
    ),
]


@pytest.mark.parametrize(("environ", "path", "fragment"), BAD_TEXT)
def test_bad_environment_value_names_field_and_variable(
    environ: dict[str, str], path: str | None, fragment: str
) -> None:
    """Environment errors name the dotted field and the variable the value came from."""
    caught = error("", environ)
    assert caught.field == path
    assert fragment in str(caught)


BAD_OVERRIDES = [
    ({"relay.port_min": "abc"}, "relay.port_min", 'got "abc" (from override)'),
    ({"relay.port_min": None}, "relay.port_min", "must be an integer 1024-65535, got nothing"),
    ({"auth.nonce_key": b"binary key bytes"}, "auth.nonce_key", "got a value"),
    ({"auth.users": {1: "pw"}}, "auth.users", "usernames must be 1-508 bytes of UTF-8, got 1"),
    (
        {"server.realmm": "x"},
        "server.realmm",
        "unknown override server.realmm (did you mean server.realm?)",
    ),
    ({"realm": "x"}, "realm", "unknown override realm (did you mean server.realm?)"),
    ({"relay.port_min": 60000, "relay.port_max": 50000}, "relay.port_max", "(from override)"),
]


@pytest.mark.parametrize(("overrides", "path", "fragment"), BAD_OVERRIDES)
def test_bad_override_names_its_field(
    overrides: dict[str, object], path: str, fragment: str
) -> None:
    """Override errors name the dotted field, and "override" as the source."""
    with pytest.raises(ConfigError) as caught:
        parse_config("", {}, overrides)
    assert caught.value.field == path
    assert fragment in str(caught.value)


def test_first_bad_field_in_schema_order_is_reported() -> None:
    """With several problems, the first field of the schema is named."""
    caught = error("[relay]\nport_max = 1\n[server]\nrealm = ''\n")
    assert caught.field == "server.realm"


def test_toml_syntax_error_gives_line_and_column(tmp_path: pathlib.Path) -> None:
    """A TOML syntax error says where, by line and column, and in which file."""
    caught = error('[server]\nrealm = "turnd"\nlisten = [udp:3478]\n')
    assert caught.field is None
    assert str(caught).startswith("TOML syntax error: ")
    assert "line 3, column 11" in str(caught)
    path = tmp_path / "turnd.toml"
    path.write_text("[server\n")
    with pytest.raises(
        ConfigError, match=rf"TOML syntax error \(in {re.escape(str(path))}\): .*line 1"
    ):
        load_config(str(path), {})


def test_file_errors_name_the_file(tmp_path: pathlib.Path) -> None:
    """Errors about the file's values say which file."""
    path = tmp_path / "turnd.toml"
    path.write_text("[relay]\nport_min = 1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), {})
    assert str(caught.value) == (
        f"relay.port_min: must be an integer 1024-65535, got 1 (in {path})"
    )
    path.write_text("[server]\nrealmm = 1\n")
    with pytest.raises(ConfigError, match=r"unknown field server\.realmm \(in .*\) \(did you"):
        load_config(str(path), {})


def test_missing_file_is_a_config_error(tmp_path: pathlib.Path) -> None:
    """An unreadable file is a ConfigError naming it and why."""
    path = tmp_path / "absent.toml"
    with pytest.raises(
        ConfigError, match=r"absent\.toml: cannot read the config file: No such file"
    ):
        load_config(str(path), {})


def test_file_that_is_not_utf8_is_a_config_error(tmp_path: pathlib.Path) -> None:
    """TOML is UTF-8; anything else is refused, saying where the first bad byte is."""
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[server]\nrealm = "caf\xe9"\n')
    with pytest.raises(ConfigError, match=r"latin1.toml: not UTF-8 \(at line 2, column 13\)$"):
        load_config(str(path), {})


# Secrets ------------------------------------------------------------------------------------

SECRET_FILE = """
[auth]
secrets = ["rest-secret-value"]
nonce_key = "nonce-key-value-0123"
[auth.users]
alice = "alice-password"
"""
SECRET_VALUES = ("rest-secret-value", "nonce-key-value-0123", "alice-password")


def test_secrets_are_redacted_in_repr_str_and_describe() -> None:
    """No secret value appears in repr, str, describe() or to_dict(); reveal() gives it."""
    c = parse_config(SECRET_FILE, {})
    for shown in (repr(c), str(c), c.describe(), repr(c.to_dict()), str(c.auth)):
        for value in SECRET_VALUES:
            assert value not in shown
        assert "<secret>" in shown
    assert 'auth.nonce_key = "<secret>"' in c.describe()
    assert c.to_dict()["auth"]["users"] == {"alice": "<secret>"}
    assert c.auth.secrets[0].reveal() == "rest-secret-value"
    assert c.auth.users["alice"].reveal() == "alice-password"
    assert str(Secret("x")) == repr(Secret("x")) == "<secret>"


def test_unredacted_dict_round_trips() -> None:
    """to_dict(redact=False) feeds back into config_from_mapping unchanged."""
    c = parse_config(SECRET_FILE + '[relay]\naddress = "192.0.2.7"\n', {})
    assert config_from_mapping(c.to_dict(redact=False)) == c


def test_errors_never_show_a_secret() -> None:
    """An error about a secret field gives the type, never the value."""
    for text, environ in [
        ('[auth]\nnonce_key = "too-short"', {}),
        ("", {"TURND_AUTH_NONCE_KEY": "short-key"}),
        ("", {"TURND_AUTH_USERS": "alice-password"}),
    ]:
        with pytest.raises(ConfigError) as caught:
            parse_config(text, environ)
        for value in ("too-short", "short-key", "alice-password"):
            assert value not in str(caught.value)


def test_secrets_compare_and_hash_by_value() -> None:
    """Two Secrets with one value are equal, so configs compare by content."""
    assert Secret("a") == Secret("a") != Secret("b")
    assert Secret("a") != "a"
    assert len({Secret("a"), Secret("a")}) == 1


# Describing ---------------------------------------------------------------------------------


def test_describe_lists_every_field_once() -> None:
    """describe() has a "section.field = value" line per field, "unset" for None."""
    lines = Config.default().describe().splitlines()
    assert [line.partition(" = ")[0] for line in lines] == ALL_FIELDS
    assert "relay.address = unset" in lines
    assert (
        'server.listen = ["udp:3478", "udp:53", "tcp:3478", "tcp:80", "tls:5349", "tls:443"]'
        in lines
    )
    assert "auth.allow_anonymous_binding = true" in lines
    assert 'server.log_level = "info"' in lines


# Helpers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[relay]\naddress = "192.0.2.9"', "192.0.2.9"),
        ('[server]\naddresses = ["2001:db8::1", "0.0.0.0", "198.51.100.1"]', "198.51.100.1"),
        ('[server]\naddresses = ["0.0.0.0", "::"]', None),
    ],
)
def test_relay_address_defaults_to_a_concrete_service_address(
    text: str, expected: str | None
) -> None:
    """relay.address, else the first concrete IPv4 service address, else None (detect)."""
    address = parse_config(text, {}).relay_address()
    assert address == (ipaddress.IPv4Address(expected) if expected else None)


def test_listener_parse_and_str() -> None:
    """Listener specs are "transport:port", case-insensitive, and print back the same way."""
    assert Listener.parse(" TLS:443 ") == Listener(Transport.TLS, 443)
    assert str(Listener(Transport.UDP, 0)) == "udp:0"
    for spec in ("udp", "udp:", "quic:443", "udp:-1", "udp:70000", "udp:٣"):
        with pytest.raises(ValueError):
            Listener.parse(spec)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('"127.0.0.1:9641"', "127.0.0.1:9641"),
        ('"[::1]:9641"', "[::1]:9641"),
        ('"0.0.0.0:0"', "0.0.0.0:0"),
        ('""', None),
    ],
)
def test_metrics_listen_takes_address_port_or_off(text: str, expected: str | None) -> None:
    """metrics.listen is "address:port" ("[v6]:port"), or "" to turn metrics off."""
    listen = parse_config(f"[metrics]\nlisten = {text}\n", {}).metrics.listen
    assert (None if listen is None else str(listen)) == expected


@pytest.mark.parametrize(
    "text", ['"9641"', '"::1:9641"', '"[127.0.0.1]:9641"', '"127.0.0.1:99999"', '"host:80"', "9641"]
)
def test_bad_metrics_listen_names_the_field(text: str) -> None:
    """A malformed metrics.listen is refused, naming the field and the expected form."""
    with pytest.raises(ConfigError, match=r"metrics\.listen: must be an \"address:port\""):
        parse_config(f"[metrics]\nlisten = {text}\n", {})


def test_control_listen_needs_a_token() -> None:
    """A TCP control listener without control.token is refused, naming the missing field."""
    with pytest.raises(ConfigError, match=r"^control\.token: must be set when control\.listen"):
        parse_config('[control]\nlisten = "127.0.0.1:9642"\n', {})
    config = parse_config('[control]\nlisten = "127.0.0.1:9642"\ntoken = "t0ken"\n', {})
    assert config.control.token is not None and config.control.token.reveal() == "t0ken"


# The cluster ---------------------------------------------------------------------------------

CLUSTER = """
[cluster]
node_id = 2
nodes = ["1=10.77.1.2:7478", "2=10.77.2.2:7478", "3=[fd77::3]:7478"]
service_ip = "10.77.255.1"
key = "0123456789abcdef0123456789abcdef"
"""


def test_no_cluster_section_is_a_cluster_of_one() -> None:
    """The default lists no nodes: not a cluster, listeners on server.addresses as written."""
    config = Config.default()
    assert not config.cluster.enabled
    assert config.listen_addresses() == config.server.addresses


def test_a_cluster_node_listens_and_relays_on_the_service_ip() -> None:
    """Nodes parse to ids and backbone endpoints; the wildcard becomes the service IP."""
    config = parse_config(CLUSTER, {})
    cluster = config.cluster
    assert cluster.enabled and cluster.node_id == 2
    assert [str(node) for node in cluster.nodes] == [
        "1=10.77.1.2:7478",
        "2=10.77.2.2:7478",
        "3=[fd77::3]:7478",
    ]
    assert cluster.nodes[2].backbone.host == "fd77::3"
    assert [str(a) for a in config.listen_addresses()] == ["10.77.255.1"]
    assert str(config.relay_address()) == "10.77.255.1"
    assert "<secret>" in config.describe() and "0123456789abcdef" not in config.describe()


def test_cluster_nodes_come_from_the_environment_as_text() -> None:
    """TURND_CLUSTER_NODES is comma-separated "id=address:port" items."""
    config = parse_config(CLUSTER, {"TURND_CLUSTER_NODES": "2=10.0.0.2:9000, 5=10.0.0.5:9000"})
    assert [node.id for node in config.cluster.nodes] == [2, 5]


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ('nodes = ["1=10.0.0.1"]', "cluster.nodes[0]", "id=address:port"),
        ('nodes = ["0=10.0.0.1:7478"]', "cluster.nodes[0]", "id 1-65535"),
        ('nodes = ["x=10.0.0.1:7478"]', "cluster.nodes[0]", "id=address:port"),
        ('nodes = ["1=10.0.0.1:0"]', "cluster.nodes[0]", "id=address:port"),
        ('nodes = ["1=10.0.0.1:1", "1=10.0.0.2:1"]', "cluster.nodes[1]", "listed twice"),
        ("node_id = 7", "cluster.node_id", "one of the ids in cluster.nodes (1, 2, 3)"),
        ('key = "short"', "cluster.key", "at least 32 characters"),
        ("dead_after = 0.25", "cluster.dead_after", "more than cluster.heartbeat_interval"),
        ('service_ip = "0.0.0.0"', "cluster.service_ip", "concrete"),
    ],
)
def test_cluster_mistakes_name_the_field(change: str, field: str, words: str) -> None:
    """Each wrong [cluster] value is refused with its field and what is expected."""
    name = change.partition(" = ")[0]
    text = "\n".join(
        change if line.startswith(name + " = ") else line for line in CLUSTER.splitlines()
    )
    if change not in text:
        text += "\n" + change
    caught = error(text)
    assert caught.field == field
    assert words in str(caught)


@pytest.mark.parametrize("missing", ["service_ip", "key"])
def test_a_cluster_needs_a_service_ip_and_a_key(missing: str) -> None:
    """Without the service IP or the key, the message says every node needs the same one."""
    text = "\n".join(line for line in CLUSTER.splitlines() if not line.startswith(missing))
    caught = error(text)
    assert caught.field == f"cluster.{missing}"
    assert "every node needs the same" in str(caught)


def test_a_cluster_node_must_listen_on_the_service_ip() -> None:
    """server.addresses without the service IP (or a wildcard of its family) is refused."""
    caught = error(CLUSTER + '[server]\naddresses = ["10.9.9.9"]\n')
    assert caught.field == "server.addresses"
    assert "10.77.255.1" in str(caught)
