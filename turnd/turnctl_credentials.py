"""``turnctl credentials``: mint a short-lived TURN credential as a ready ``iceServers`` JSON.

From turnd when it runs (POST /v1/credentials: its newest REST secret, all its listeners), or
with no daemon from the REST secret file in its state directory (``auth.credentials``).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from auth.credentials import MintRefused, mint_rest_credentials
from turnd.state import REST_SECRET_FILE
from turnd.turnctl_daemon import Daemon, Refused, Unreachable, emit_json, fail, unreachable

app = typer.Typer(no_args_is_help=True, help="Short-lived TURN credentials.")

#: Default credential lifetime: a working day; browsers re-fetch credentials per session.
DEFAULT_TTL = 86_400
#: turnd's default state directory (server.state_dir), where its generated REST secret lives.
DEFAULT_STATE_DIR = "/var/lib/turnd"
#: turnd's default UDP port, put in URLs minted from the secret file.
DEFAULT_PORT = 3478


def ice_servers(host: str, port: int, username: str, password: str) -> dict[str, object]:
    """The RTCConfiguration ``iceServers`` value for ``host`` (UDP listener on ``port``)."""
    where = f"[{host}]" if ":" in host else host
    return {
        "iceServers": [
            {"urls": [f"stun:{where}:{port}"]},
            {
                "urls": [f"turn:{where}:{port}?transport=udp"],
                "username": username,
                "credential": password,
            },
        ]
    }


#: A stun:/turn:/turns: URL (RFC 7064, RFC 7065): scheme, host or [v6], optional port, query.
_ICE_URL = re.compile(r"(?P<scheme>[a-z]+):(?P<host>\[[^\]]*\]|[^:?\[]*)(?P<rest>(:\d+)?(\?.*)?)")


def with_host(ice: dict[str, Any], host: str) -> dict[str, Any]:
    """``ice`` (an iceServers answer) with ``host`` in every URL, ports and queries kept."""
    where = f"[{host}]" if ":" in host else host

    def rewrite(url: str) -> str:
        found = _ICE_URL.fullmatch(url)
        return f"{found['scheme']}:{where}{found['rest']}" if found else url

    def rewrite_urls(server: dict[str, Any]) -> dict[str, Any]:
        urls = server.get("urls")
        if isinstance(urls, str):  # RTCIceServer.urls: one URL or a list
            return {**server, "urls": rewrite(urls)}
        if isinstance(urls, list):
            return {**server, "urls": [rewrite(url) for url in urls]}
        return server

    servers = [rewrite_urls(server) for server in ice.get("iceServers", [])]
    return {**ice, "iceServers": servers}


def _mint_from_file(
    path: Path, host: str | None, port: int, ttl: int, ident: str
) -> dict[str, object]:
    if host is None:
        fail("--host is needed to mint from the secret file", 2)
    try:
        secret = path.read_text(encoding="ascii").strip()
    except OSError as exc:
        fail(f"cannot read the REST secret {path}: {exc.strerror}")
    if not secret:
        fail(f"{path} is empty")
    try:
        username, password = mint_rest_credentials(secret, time.time(), ttl, ident)
    except MintRefused as exc:
        fail(f"cannot mint: {exc}", 2)
    return ice_servers(host, port, username, password)


@app.command("generate")
def generate(
    ctx: typer.Context,
    host: Annotated[
        str | None,
        typer.Option(
            help="the address or name clients reach turnd at (default, from turnd: its"
            " api.public_host or relay address)"
        ),
    ] = None,
    ttl: Annotated[int, typer.Option(help="seconds the credential stays valid")] = DEFAULT_TTL,
    ident: Annotated[
        str, typer.Option("--id", help="customIdentifier kept in the username for accounting")
    ] = "",
    port: Annotated[
        int, typer.Option(help="turnd's UDP port (from the secret file; turnd knows its own)")
    ] = DEFAULT_PORT,
    state_dir: Annotated[
        str | None,
        typer.Option(
            help="mint from the REST secret in this state directory (when turnd cannot be"
            f" reached: {DEFAULT_STATE_DIR})"
        ),
    ] = None,
    secret_file: Annotated[
        str | None, typer.Option(help="mint from this REST secret file (overrides --state-dir)")
    ] = None,
) -> None:
    """Mint a REST credential and print a ready iceServers JSON.

    From turnd when it runs (its newest secret, all its listeners); from the secret file with
    --state-dir or --secret-file, or when turnd cannot be reached."""
    if ttl <= 0:
        fail("--ttl must be positive", 2)
    if secret_file is None and state_dir is None:
        daemon: Daemon = ctx.obj
        try:
            minted = daemon.request("POST", "/v1/credentials", {"ttl": ttl, "id": ident})
        except Refused as exc:
            fail(exc.message, 2 if exc.status == 400 else 1)
        except Unreachable as exc:
            path = Path(DEFAULT_STATE_DIR) / REST_SECRET_FILE
            typer.echo(f"turnctl: {unreachable(daemon, exc)}; minting from {path}", err=True)
        else:
            emit_json(minted if host is None else with_host(minted, host))
            return
    path = Path(secret_file) if secret_file else Path(state_dir or DEFAULT_STATE_DIR)
    if not secret_file:
        path /= REST_SECRET_FILE
    emit_json(_mint_from_file(path, host, port, ttl, ident))
