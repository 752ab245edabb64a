"""``turnctl``: the operator's tool.

Today it mints REST credentials straight from the shared secret (no daemon needed) and prints
its version. The commands that talk to a running turnd (status, allocations, users, secrets,
cluster, drain, reload) come with the control API.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from auth.credentials import mint_rest_credentials
from turnd.state import REST_SECRET_FILE

app = typer.Typer(add_completion=False, help="turnctl: operate a turnd server.")
credentials_app = typer.Typer(help="Short-lived TURN credentials.")
app.add_typer(credentials_app, name="credentials")

#: Default credential lifetime: a working day; browsers re-fetch credentials per session.
DEFAULT_TTL = 86_400


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


@credentials_app.command("generate")
def generate(
    host: Annotated[str, typer.Option(help="the address or name clients reach turnd at")],
    ttl: Annotated[int, typer.Option(help="seconds the credential stays valid")] = DEFAULT_TTL,
    ident: Annotated[
        str, typer.Option("--id", help="customIdentifier kept in the username for accounting")
    ] = "",
    port: Annotated[int, typer.Option(help="turnd's UDP port")] = 3478,
    state_dir: Annotated[
        str, typer.Option(help="turnd's state directory (holds the REST secret)")
    ] = "/var/lib/turnd",
    secret_file: Annotated[
        str | None, typer.Option(help="file with the REST secret (overrides --state-dir)")
    ] = None,
) -> None:
    """Mint a REST credential and print a ready iceServers JSON."""
    path = Path(secret_file) if secret_file else Path(state_dir) / REST_SECRET_FILE
    try:
        secret = path.read_text(encoding="ascii").strip()
    except OSError as exc:
        typer.echo(f"turnctl: cannot read the REST secret {path}: {exc.strerror}", err=True)
        raise typer.Exit(1) from exc
    if not secret:
        typer.echo(f"turnctl: {path} is empty", err=True)
        raise typer.Exit(1)
    if ttl <= 0:
        typer.echo("turnctl: --ttl must be positive", err=True)
        raise typer.Exit(2)
    username, password = mint_rest_credentials(secret, time.time(), ttl, ident)
    typer.echo(json.dumps(ice_servers(host, port, username, password), indent=2))


@app.command()
def version() -> None:
    """Print the version."""
    from turnd import __version__

    typer.echo(__version__)


def main() -> None:
    """Console-script entry point."""
    app()
