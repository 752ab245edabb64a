"""``turnctl``: the operator's tool.

It talks to a running turnd over the control API (turnd/control.py): HTTP + JSON on the Unix
socket (``--socket``, default /run/turnd/control.sock) or, with ``--url`` and ``--token``, on the
TCP control listener. People get aligned tables; ``--json`` prints the daemon's answer as is.

``credentials generate`` also works with no daemon: it mints from the REST secret file.

Exit status: 0 done; 1 turnd cannot be reached, or refused (unknown allocation, last secret,
failed reload, a cluster question to a node not in a cluster...); 2 a usage error, including a
request turnd found malformed (HTTP 400).
"""

from __future__ import annotations

import time
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

import attrs
import typer

from turnd import turnctl_cluster, turnctl_credentials
from turnd.turnctl_access import keys_app, secrets_app, users_app
from turnd.turnctl_credentials import with_host as with_host  # Re-exported: public names
from turnd.turnctl_daemon import DEFAULT_SOCKET, Daemon, act, answer, segment
from turnd.turnctl_daemon import TIMEOUT as TIMEOUT  # of turnctl (TIMEOUT: read per run).
from turnd.turnctl_format import duration as duration
from turnd.turnctl_format import indent, printable, stamp, yes
from turnd.turnctl_format import size as size
from turnd.turnctl_format import table as table

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="turnctl: operate a turnd server."
)
allocations_app = typer.Typer(no_args_is_help=True, help="Live allocations.")
app.add_typer(turnctl_credentials.app, name="credentials")
app.add_typer(allocations_app, name="allocations")
app.add_typer(users_app, name="users")
app.add_typer(secrets_app, name="secrets")
app.add_typer(keys_app, name="keys")
app.add_typer(turnctl_cluster.app, name="cluster")


# --- global options -----------------------------------------------------------------------------


def _check_url(url: str | None) -> str | None:
    if url is None:
        return None
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "http" or not parts.hostname or port is None:
        raise typer.BadParameter("expected http://host:port", param_hint="--url")
    return url


@app.callback()
def _options(
    ctx: typer.Context,
    socket_path: Annotated[
        str,
        typer.Option(
            "--socket", envvar="TURNCTL_SOCKET", help="turnd's control socket (control.socket)"
        ),
    ] = DEFAULT_SOCKET,
    url: Annotated[
        str | None,
        typer.Option(
            envvar="TURNCTL_URL",
            help="use the TCP control listener instead, http://host:port (control.listen)",
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(envvar="TURNCTL_TOKEN", help="bearer token of the TCP listener"),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="print turnd's answers as JSON, for scripts")
    ] = False,
) -> None:
    """turnctl: operate a turnd server."""
    ctx.obj = Daemon(socket_path, _check_url(url), token, json_output, TIMEOUT)


@app.command()
def status(ctx: typer.Context) -> None:
    """What turnd is doing: uptime, listeners, allocations, draining."""
    answer(ctx, "GET", "/v1/status", _print_status)


def _print_status(found: Any) -> None:
    started = stamp(found.get("started"))
    uptime = found.get("uptime_s")
    if isinstance(uptime, int | float):
        started += f" (up {duration(uptime)})"
    pairs = [
        ("version", found.get("version", "?")),
        ("started", started),
        ("realm", found.get("realm", "")),
        ("draining", yes(found.get("draining"))),
        ("allocations", found.get("allocations", 0)),
        ("connections", found.get("connections", 0)),
        ("relay addresses", ", ".join(found.get("relay_addresses", [])) or "-"),
        ("fast path", _fastpath_line(found.get("fastpath") or {})),
    ]
    typer.echo(table((name, str(value)) for name, value in pairs))
    listeners = found.get("listeners", [])
    if listeners:
        rows = [(ln["transport"], ln["address"], ln["port"]) for ln in listeners]
        typer.echo("listeners")
        typer.echo(indent(table(rows, ("TRANSPORT", "ADDRESS", "PORT"))))
    workers = found.get("workers") or []
    if workers:
        states = [
            (
                w["slot"],
                w.get("pid") or "-",
                "up" if w.get("up") else "restarting",
                w.get("restarts", 0),
                "-" if w.get("allocations") is None else w["allocations"],
            )
            for w in workers
        ]
        states += [
            (w["slot"], w["pid"], "replaced, serving its last connections", "-", w["allocations"])
            for w in found.get("lingering") or []
        ]
        typer.echo("workers")
        typer.echo(indent(table(states, ("SLOT", "PID", "STATE", "RESTARTS", "ALLOCATIONS"))))


def _worker_of(view: dict[str, Any]) -> str:
    """Which worker holds an allocation: its slot, and the PID of a replaced one."""
    if "old_pid" in view:
        return f"{view['worker']} (old, pid {view['old_pid']})"
    return str(view.get("worker", "-"))


def _fastpath_line(view: dict[str, Any]) -> str:
    """One line of the kernel data path: off, or where it runs and what it relayed."""
    mode = view.get("mode", "?")
    if not view.get("active"):
        return f"inactive (mode {mode})"
    packets = view.get("relayed_packets_to_peer", 0) + view.get("relayed_packets_to_client", 0)
    return (
        f"active on {', '.join(view.get('interfaces', []))}: {view.get('routes', 0)} channels, "
        f"{packets} packets relayed (mode {mode})"
    )


@allocations_app.command("list")
def allocations_list(
    ctx: typer.Context,
    user: Annotated[str | None, typer.Option(help="only this username")] = None,
    client: Annotated[str | None, typer.Option(help="only this client, ip or ip:port")] = None,
    transport: Annotated[
        str | None, typer.Option(help="only this client transport: udp, tcp, tls")
    ] = None,
) -> None:
    """List live allocations, oldest first."""
    query = {k: v for k, v in (("user", user), ("client", client), ("transport", transport)) if v}
    path = "/v1/allocations" + (f"?{urlencode(query)}" if query else "")
    answer(ctx, "GET", path, _print_allocations)


def _print_allocations(found: Any) -> None:
    if not found:
        typer.echo("no allocations")
        return
    now = time.time()
    headers = ["ID", "USER", "CLIENT", "TRANSPORT", "RELAY", "PERMS", "CHANNELS", "AGE"]
    headers += ["EXPIRES IN", "TO PEER", "TO CLIENT"]
    workers = any("worker" in a for a in found)  # a node of workers says which holds each
    rows = [
        (
            a["id"],
            a["username"],
            a["client"],
            a["transport"],
            "tcp" if a.get("tcp") else "udp",
            a["permissions"],
            a["channels"],
            duration(now - a["started"]),
            duration(a["expires"] - now),
            size(a["bytes_to_peer"]),
            size(a["bytes_to_client"]),
        )
        + ((_worker_of(a),) if workers else ())
        for a in found
    ]
    typer.echo(table(rows, [*headers, "WORKER"] if workers else headers))


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


@allocations_app.command("show")
def allocations_show(
    ctx: typer.Context, allocation_id: Annotated[str, typer.Argument(metavar="ID")]
) -> None:
    """Show one allocation with its permissions and channels."""
    answer(ctx, "GET", f"/v1/allocations/{segment(allocation_id)}", _print_allocation)


def _print_allocation(a: Any) -> None:
    now = time.time()
    permissions = _listed(a.get("permission_list", a.get("permissions")))
    channels = _listed(a.get("channel_list", a.get("channels")))
    pairs = [
        ("id", a["id"]),
        ("username", a["username"]),
        ("rest id", a.get("rest_id") or "-"),
        ("client", f"{a['client']} ({a['transport']})"),
        ("server", a["server"]),
        ("relays", f"{', '.join(a['relays'])} ({'tcp' if a.get('tcp') else 'udp'})"),
        ("started", f"{stamp(a['started'])} ({duration(now - a['started'])} ago)"),
        ("expires", f"{stamp(a['expires'])} (in {duration(a['expires'] - now)})"),
        ("to peer", _traffic(a, "to_peer")),
        ("to client", _traffic(a, "to_client")),
        ("permissions", ", ".join(permissions) or "-"),
    ]
    typer.echo(table(pairs))
    if channels:
        typer.echo("channels")
        rows = [(f"{c['number']:#06x}", c["peer"]) for c in channels]
        typer.echo(indent(table(rows, ("NUMBER", "PEER"))))


def _traffic(a: Any, direction: str) -> str:
    """``12 packets, 1.2 KiB (10 packets, 1.0 KiB in the kernel)``: one direction's counts."""
    line = f"{a['packets_' + direction]} packets, {size(a['bytes_' + direction])}"
    kernel = a.get("kernel_packets_" + direction)  # absent from an older daemon's answer
    if kernel is None:
        return line
    return f"{line} ({kernel} packets, {size(a['kernel_bytes_' + direction])} in the kernel)"


@allocations_app.command("kill")
def allocations_kill(
    ctx: typer.Context, allocation_id: Annotated[str, typer.Argument(metavar="ID")]
) -> None:
    """End an allocation now."""
    path = f"/v1/allocations/{segment(allocation_id)}"
    act(ctx, "DELETE", path, f"killed {printable(allocation_id)}")


# --- levers -------------------------------------------------------------------------------------


@app.command()
def revoke(ctx: typer.Context, username: str) -> None:
    """End every allocation of a user now."""

    def render(found: Any) -> None:
        typer.echo(f"revoked {printable(username)}: {found['ended']} allocations ended")

    answer(ctx, "POST", f"/v1/revoke/{segment(username)}", render)


@app.command()
def drain(
    ctx: typer.Context,
    off: Annotated[bool, typer.Option("--off", help="accept new allocations again")] = False,
) -> None:
    """Refuse new allocations; live ones run until they end."""

    def render(found: Any) -> None:
        if found["draining"]:
            typer.echo(f"draining: {found['allocations']} allocations left")
        else:
            typer.echo(f"not draining: {found['allocations']} allocations")

    answer(ctx, "POST", "/v1/drain", render, {"on": not off})


@app.command()
def reload(ctx: typer.Context) -> None:
    """Reload the configuration, secrets and TLS certificates (as SIGHUP does)."""
    answer(ctx, "POST", "/v1/reload", lambda _: typer.echo("reloaded"), failure="reload failed: ")


#: Seconds turnctl upgrade waits: every worker is started and handed over in turn.
UPGRADE_TIMEOUT = 600.0


@app.command()
def upgrade(ctx: typer.Context) -> None:
    """Replace every worker by one started from the installed code, handing over its live UDP
    allocations; TCP/TLS connections stay with the old worker until they end (as SIGUSR2)."""

    def render(found: Any) -> None:
        rows = [
            (
                w["slot"],
                w["old_pid"],
                w["pid"],
                w["moved"],
                f"{w['window_ms']} ms",
                "-" if w["lingering"] is None else w["lingering"],
            )
            for w in found["workers"]
        ]
        headers = ("WORKER", "OLD PID", "PID", "MOVED", "WINDOW", "LEFT ON OLD")
        typer.echo(table(rows, headers))

    daemon: Daemon = ctx.obj
    ctx.obj = attrs.evolve(daemon, timeout=max(daemon.timeout, UPGRADE_TIMEOUT))
    answer(ctx, "POST", "/v1/upgrade", render, failure="upgrade failed: ")


@app.command()
def version() -> None:
    """Print the version."""
    from turnd import __version__

    typer.echo(__version__)


def main() -> None:
    """Console-script entry point."""
    app()
