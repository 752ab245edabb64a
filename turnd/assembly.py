"""Assembly from the configuration: the relay address, the host's networks, the peer policy, the
core with its authenticator, and the secrets generated into the state directory.

Everything here runs once at start (and again on a reload, for the authenticator); nothing is on
the packet path.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import logging
import os
import socket
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs

from auth.credentials import Authenticator
from auth.nonce import NonceManager, SecurityFeature
from auth.users_file import load_users_file
from turnd.config import Config, Secret
from turnd.core.peer_policy import PeerPolicy
from turnd.core.server import TurnServer
from turnd.core_settings_map import core_settings
from turnd.logs import event
from turnd.runtime import RuntimeCredentials
from turnd.state import NONCE_KEY_FILE, REST_SECRET_FILE, read_or_create_secret


class StartupError(RuntimeError):
    """The service cannot start; the message says why and what to do."""


def detect_relay_address() -> str:
    """The first global IPv4 address of this host, or 127.0.0.1 if there is none.

    Asks the kernel over netlink (pyroute2) in a worker thread: pyroute2's blocking API refuses
    to run on a thread whose event loop is running, and turnd asks from inside its loop.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(_first_global_ipv4).result()


def _first_global_ipv4() -> str:
    try:
        from pyroute2 import IPRoute  # imported here: the package works without it
    except ImportError:
        return "127.0.0.1"
    with IPRoute() as ipr:
        for msg in ipr.get_addr(family=socket.AF_INET):
            address = msg.get_attr("IFA_ADDRESS")
            if address and not ipaddress.ip_address(address).is_loopback:
                return str(address)
    return "127.0.0.1"


def detect_local_networks() -> list[str]:
    """Every network the kernel delivers to this host (its local routes, 127.0.0.0/8 and each
    interface address among them), as CIDRs; only loopback's if netlink cannot be asked."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(_local_routes).result()


def _local_routes() -> list[str]:
    fallback = ["127.0.0.0/8", "::1/128"]
    try:
        from pyroute2 import IPRoute  # imported here: the package works without it
    except ImportError:
        return fallback
    found: list[str] = []
    try:
        with IPRoute() as ipr:
            for msg in ipr.get_routes(table=RT_TABLE_LOCAL):
                if msg["type"] == RTN_LOCAL and msg.get_attr("RTA_DST"):
                    found.append(f"{msg.get_attr('RTA_DST')}/{msg['dst_len']}")
    except OSError as exc:
        event(
            logging.WARNING,
            "peers.local_networks_unknown",
            "could not list the host's local addresses; only loopback counts as this node's",
            error=str(exc),
        )
        return fallback
    return found or fallback


#: Linux's local routing table and its route type for addresses of this host (rtnetlink(7)).
RT_TABLE_LOCAL = 255
RTN_LOCAL = 2


def build_peer_policy(
    config: Config,
    relay_ipv4: str,
    local_networks: Sequence[str],
    listeners: Iterable[tuple[str, int]] | None = None,
) -> PeerPolicy:
    """The peer policy: config's allow and deny lists, and :func:`own_endpoints` refused."""
    own, own_networks = own_endpoints(config, relay_ipv4, local_networks, listeners)
    return PeerPolicy.build(
        allow=[str(n) for n in config.peers.allow],
        deny=[str(n) for n in config.peers.deny],
        own_addresses=own,
        own_networks=own_networks,
    )


def own_endpoints(
    config: Config,
    relay_ipv4: str,
    local_networks: Sequence[str],
    listeners: Iterable[tuple[str, int]] | None = None,
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """This node's listening endpoints that no peer may be: (ip, port) of the concrete TURN
    listeners (``listeners`` as bound, else as configured), of the relay addresses on every
    listener port, and of the metrics, control and API listeners; and (network, port) for the
    ports of wildcard listeners, on every local network. A relay pointed at any of them would
    loop into turnd itself."""
    if listeners is None:
        listeners = [
            (str(address), listener.port)
            for address in config.listen_addresses()
            for listener in config.server.listen
        ]
    hosts: list[tuple[str, list[int]]] = [(host, [port]) for host, port in listeners]
    ports = sorted({port for _, host_ports in hosts for port in host_ports})
    hosts += [(relay_ipv4, ports)]
    if config.relay.address6 is not None:
        hosts += [(str(config.relay.address6), ports)]
    for side in (config.metrics.listen, config.control.listen, config.api.listen):
        if side is not None:
            hosts += [(side.host, [side.port])]
    own: list[tuple[str, int]] = []
    networks: list[tuple[str, int]] = []
    for host, host_ports in hosts:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:  # a side listener named by host name: it is one of the local ones
            ip = ipaddress.ip_address("0.0.0.0")
        if ip.is_unspecified:
            networks += [(net, port) for net in local_networks for port in host_ports]
        else:
            own += [(str(ip), port) for port in host_ports]
    return own, networks


def relay_address(config: Config) -> str:
    """The configured relay address, else :func:`detect_relay_address`'s."""
    configured = config.relay_address()
    return str(configured) if configured is not None else detect_relay_address()


def build_core(
    config: Config,
    relay_ipv4: str,
    rng: Callable[[int], bytes],
    local_networks: Sequence[str] = (),
) -> TurnServer:
    """A core from the configuration (secrets already resolved into ``config``).

    ``local_networks`` (CIDRs) are what the host accepts as its own addresses (see
    :func:`detect_local_networks`): a wildcard listener serves its port on each of them."""
    settings = core_settings(config, relay_ipv4)
    policy = build_peer_policy(config, relay_ipv4, local_networks)
    nonce_key = config.auth.nonce_key
    assert nonce_key is not None, "resolve_secrets() fills in the nonce key"
    nonces = NonceManager(
        nonce_key.reveal().encode(),
        features=(SecurityFeature.PASSWORD_ALGORITHMS,),
        lifetime=float(config.auth.nonce_lifetime),
    )
    return TurnServer(settings, build_authenticator(config), nonces, policy, rng)


def build_authenticator(
    config: Config,
    runtime: RuntimeCredentials | None = None,
    revoked: Iterable[str] = (),
) -> Authenticator:
    """Static users (config, users file, runtime) and REST secrets (runtime, then config).

    Raises StartupError, naming the file, when the users file cannot be read or parsed.
    """
    users: dict[str, Any] = {name: secret.reveal() for name, secret in config.auth.users.items()}
    if config.auth.users_file:
        try:
            users.update(load_users_file(config.auth.users_file))
        except OSError as exc:
            raise StartupError(
                f"auth.users_file: cannot read {config.auth.users_file}: {exc.strerror}"
            ) from exc
        except ValueError as exc:
            raise StartupError(f"auth.users_file: {exc}") from exc
    runtime_secrets: list[str] = []
    if runtime is not None:
        users.update(runtime.users())
        runtime_secrets = runtime.secrets()
    return Authenticator.create(
        config.server.realm,
        users=users,
        rest_secrets=[*runtime_secrets, *(secret.reveal() for secret in config.auth.secrets)],
        revoked=revoked,
    )


def resolve_secrets(config: Config) -> tuple[Config, list[str]]:
    """Fill in generated secrets from the state directory; return notes for the operator."""
    notes: list[str] = []
    auth = config.auth
    state_dir = config.server.state_dir
    if auth.nonce_key is None:
        key, _ = read_or_create_secret(state_dir, NONCE_KEY_FILE)
        auth = attrs.evolve(auth, nonce_key=Secret(key))
    if not auth.secrets and not auth.users and not auth.users_file:
        secret, created = read_or_create_secret(state_dir, REST_SECRET_FILE)
        auth = attrs.evolve(auth, secrets=(Secret(secret),))
        where = os.path.join(state_dir, REST_SECRET_FILE)
        notes.append(
            f"no users or REST secrets configured: using the REST secret in {where}"
            + (" (generated now)" if created else "")
        )
    return attrs.evolve(config, auth=auth), notes
