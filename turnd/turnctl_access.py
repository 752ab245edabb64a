"""``turnctl users``, ``secrets``, ``keys``: who may use turnd, changed on the running daemon.

Long-term users (RFC 8489 §9.2), the REST secrets that sign ephemeral credentials, and the keys
of the credential REST endpoint. turnd keeps the changes in its state directory; a secret or a
token it generates is shown once, when it is created.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from turnd.turnctl_daemon import act, listing, segment, show_once
from turnd.turnctl_format import printable

users_app = typer.Typer(no_args_is_help=True, help="Long-term-credential users.")
secrets_app = typer.Typer(no_args_is_help=True, help="REST (ephemeral credential) secrets.")
keys_app = typer.Typer(no_args_is_help=True, help="Keys of the credential REST endpoint.")

# --- users --------------------------------------------------------------------------------------


@users_app.command("list")
def users_list(ctx: typer.Context) -> None:
    """List the users."""
    listing(ctx, "/v1/users", ("USERNAME",), lambda name: (name,), "no users")


@users_app.command("add")
def users_add(
    ctx: typer.Context,
    name: str,
    password: Annotated[
        str | None,
        typer.Option(help='the password; "-" reads one line from stdin (default: ask)'),
    ] = None,
) -> None:
    """Add a user, or set the password of an existing one."""
    if password is None:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    elif password == "-":
        password = sys.stdin.readline().rstrip("\r\n")
    path, done = f"/v1/users/{segment(name)}", f"user {printable(name)}: password set"
    act(ctx, "PUT", path, done, {"password": password})


@users_app.command("remove")
def users_remove(ctx: typer.Context, name: str) -> None:
    """Remove a user (their live allocations stay: see revoke)."""
    act(ctx, "DELETE", f"/v1/users/{segment(name)}", f"removed user {printable(name)}")


# --- secrets ------------------------------------------------------------------------------------


@secrets_app.command("list")
def secrets_list(ctx: typer.Context) -> None:
    """List the REST secrets, newest (the one that mints) first."""
    headers = ("ID", "SOURCE", "FINGERPRINT")
    listing(
        ctx,
        "/v1/secrets",
        headers,
        lambda s: (s["id"], s["source"], s["fingerprint"]),
        "no secrets",
    )


@secrets_app.command("add")
def secrets_add(
    ctx: typer.Context,
    value: Annotated[str | None, typer.Option(help="the secret (default: generate one)")] = None,
) -> None:
    """Add a REST secret; it becomes the one that mints. Printed only this once."""
    show_once(ctx, "POST", "/v1/secrets", {"secret": value}, "secret")


@secrets_app.command("retire")
def secrets_retire(
    ctx: typer.Context, secret_id: Annotated[str, typer.Argument(metavar="ID")]
) -> None:
    """Retire a REST secret: credentials minted with it stop working."""
    act(ctx, "DELETE", f"/v1/secrets/{segment(secret_id)}", f"retired secret {secret_id}")


# --- keys ---------------------------------------------------------------------------------------


@keys_app.command("list")
def keys_list(ctx: typer.Context) -> None:
    """List the credential endpoint's keys (never their tokens)."""
    listing(ctx, "/v1/keys", ("ID", "SOURCE"), lambda k: (k["id"], k["source"]), "no keys")


@keys_app.command("add")
def keys_add(
    ctx: typer.Context,
    key_id: Annotated[str, typer.Argument(metavar="ID")],
    token: Annotated[str | None, typer.Option(help="the bearer token (default: generate)")] = None,
) -> None:
    """Add a key for an application back end. Its token is printed only this once."""
    show_once(ctx, "PUT", f"/v1/keys/{segment(key_id)}", {"token": token}, "token")


@keys_app.command("remove")
def keys_remove(ctx: typer.Context, key_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Remove a key: its back end can no longer mint or revoke credentials."""
    act(ctx, "DELETE", f"/v1/keys/{segment(key_id)}", f"removed key {key_id}")
