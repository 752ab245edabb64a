"""``turnd``: run the server, or check a configuration file.

CLI -> Config -> TurnService: flags become overrides on top of the TOML file and ``TURND_*``
environment variables (see :mod:`turnd.config`). SIGTERM and SIGINT stop cleanly (a second SIGINT
forces the exit); SIGHUP reloads users and REST secrets without touching allocations.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from turnd import gc_policy, logs, systemd
from turnd.assembly import StartupError, resolve_secrets
from turnd.config import DEFAULT_CONFIG_PATH, Config, ConfigError, load_config
from turnd.service import TurnService
from turnd.state import StateError

app = typer.Typer(
    add_completion=False,
    invoke_without_command=True,
    help="turnd: a TURN/STUN relay server (RFC 8489, RFC 8656).",
)


def _config_path(config: str | None) -> str | None:
    """``--config``, else /etc/turnd/turnd.toml if it exists, else embedded defaults."""
    if config is not None:
        return config
    return DEFAULT_CONFIG_PATH if Path(DEFAULT_CONFIG_PATH).exists() else None


def _overrides(**flags: object) -> dict[str, object]:
    overrides: dict[str, object] = {}
    for path, value in flags.items():
        if value is None or value == []:
            continue
        key = path.replace("__", ".")
        overrides[key] = ",".join(value) if isinstance(value, list) else str(value)
    return overrides


@app.callback()
def main_command(
    ctx: typer.Context,
    config: Annotated[
        str | None,
        typer.Option("--config", "-c", help=f"TOML file (default {DEFAULT_CONFIG_PATH})"),
    ] = None,
    listen: Annotated[
        list[str] | None,
        typer.Option(help="listener transport:port, repeatable (e.g. udp:3478)"),
    ] = None,
    address: Annotated[
        list[str] | None, typer.Option(help="service address to listen on, repeatable")
    ] = None,
    realm: Annotated[str | None, typer.Option(help="authentication realm")] = None,
    relay_address: Annotated[
        str | None, typer.Option(help="IPv4 address relays bind and advertise")
    ] = None,
    relay_port_min: Annotated[int | None, typer.Option(help="lowest relay port")] = None,
    relay_port_max: Annotated[int | None, typer.Option(help="highest relay port")] = None,
    state_dir: Annotated[str | None, typer.Option(help="where generated secrets live")] = None,
    allow_peer: Annotated[
        list[str] | None, typer.Option(help="peer network to allow despite the deny-list")
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning or error")] = None,
    log_format: Annotated[str | None, typer.Option(help="text or json")] = None,
    accept_damaged_revocations: Annotated[
        bool,
        typer.Option(
            "--accept-damaged-revocations",
            help="start although revoked.runtime has damaged lines, dropping them",
        ),
    ] = False,
) -> None:
    """Run the server (the default when no command is given)."""
    if ctx.invoked_subcommand is not None:
        return
    overrides = _overrides(
        server__listen=listen,
        server__addresses=address,
        server__realm=realm,
        relay__address=relay_address,
        relay__port_min=relay_port_min,
        relay__port_max=relay_port_max,
        server__state_dir=state_dir,
        peers__allow=allow_peer,
        server__log_level=log_level,
        server__log_format=log_format,
        server__accept_damaged_revocations="true" if accept_damaged_revocations else None,
    )
    path = _config_path(config)
    try:
        loaded = load_config(path, os.environ, overrides)
        logs.setup(loaded.server.log_level.value, loaded.server.log_format.value)
        resolved, notes = resolve_secrets(loaded)
    except (ConfigError, StateError) as exc:
        typer.echo(f"turnd: {exc}", err=True)
        raise typer.Exit(2) from exc
    raise typer.Exit(_run(resolved, notes, path, overrides))


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when it is installed (libuv: cheaper per datagram), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _run(config: Config, notes: list[str], path: str | None, overrides: dict[str, object]) -> int:
    from turnd.workers.supervisor import supervise, worker_count

    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        try:
            if worker_count(config) == 1:
                runner.run(_serve(config, notes, path, overrides))
            else:  # the secrets are resolved (generated) here, before any worker reads them
                for note in notes:
                    logs.event(logging.WARNING, "auth.generated_secret", note)
                runner.run(supervise(config, path, overrides))
        except StateError as exc:  # a bad state file: as bad config, a restart cannot fix it
            typer.echo(f"turnd: {exc}", err=True)
            return 2
        except StartupError as exc:
            typer.echo(f"turnd: {exc}", err=True)
            return 1
    return 0


async def _serve(
    config: Config, notes: list[str], path: str | None, overrides: dict[str, object]
) -> None:
    def fresh_config() -> Config:
        return resolve_secrets(load_config(path, os.environ, overrides))[0]

    service = TurnService(config, config_source=fresh_config)
    try:
        await service.start()
    except BaseException:
        await service.stop()  # a failed start closes what it opened (side servers, sockets)
        raise
    for note in notes:
        logs.event(logging.WARNING, "auth.generated_secret", note)
    if notes:
        host = service.relay_ipv4
        port = next((a.port for a in service.udp_addresses), 3478)
        port_flag = "" if port == 3478 else f" --port {port}"  # turnctl assumes 3478
        print(
            "\nturnd is running. Mint a TURN credential for a client with:\n"
            f"  turnctl credentials generate --state-dir {config.server.state_dir}"
            f" --host {host}{port_flag} --ttl 3600\n"
            f"and use it with the ICE server turn:{host}:{port}?transport=udp\n",
            file=sys.stderr,
            flush=True,
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    interrupts = 0

    def on_interrupt() -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts > 1:
            os._exit(130)  # second Ctrl-C: the operator wants out now
        stop.set()

    def on_reload() -> None:
        systemd.reloading("reloading configuration")
        error: str | None = "internal error: see the log"
        try:
            error = service.reload_from_source()  # logs reload.done or reload.refused
        finally:  # READY=1 also after a bug, or systemd holds the unit in "reloading"
            systemd.ready(f"reload refused: {error}" if error else _status_line(service))

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, on_interrupt)
    loop.add_signal_handler(signal.SIGHUP, on_reload)
    systemd.ready(_status_line(service))  # after the handlers: a reload may follow at once
    # After the handlers too: a signal sent once service.started is logged must find them.
    gc_policy.settle()
    collections = asyncio.create_task(
        gc_policy.full_collections(config.server.full_gc_interval, service.core.stats)
    )
    try:
        await stop.wait()
    finally:
        collections.cancel()
        systemd.stopping("shutting down")
        await service.stop()


def _status_line(service: TurnService) -> str:
    """The one-line status systemctl shows."""
    listeners = ", ".join(f"{kind} {address.port}" for kind, address in service.bound)
    return f"serving {listeners}; {len(service.core.allocations)} allocations"


@app.command("check-config")
def check_config(file: Annotated[str, typer.Argument(help="the TOML file to check")]) -> None:
    """Validate FILE (and TURND_* variables); name the first bad field."""
    from turnd.tls import TlsError, check_configured

    try:
        config = load_config(file, os.environ)
    except ConfigError as exc:
        typer.echo(f"{file}: {exc}", err=True)
        raise typer.Exit(1) from exc
    try:
        check_configured(config)
    except TlsError as exc:
        typer.echo(
            f"{file}: tls: {exc} (fix tls.cert_file and tls.key_file, or remove the tls listeners "
            "from server.listen)",
            err=True,
        )
        raise typer.Exit(1) from exc
    typer.echo(f"{file}: ok")


@app.command()
def version() -> None:
    """Print the version."""
    from turnd import __version__

    typer.echo(__version__)


def main() -> None:
    """Console-script entry point."""
    app()
