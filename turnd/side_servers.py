"""The side servers: Prometheus metrics, the credential REST endpoint and the control API.

Each is served by aiohttp under the bounds of :mod:`turnd.side_http` (``limits.side_*``); each is
optional, and one that cannot start is reported as a failed listener, never fatal. The credential
endpoint's settings (keys, secret, ICE URLs) follow reloads and turnctl changes
(:meth:`SideServers.refresh_api`).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

from stun.addresses import Address
from turnd.config import Config
from turnd.credential_state import CredentialState
from turnd.listeners import Listeners, bind_failure_reason
from turnd.logs import event

if TYPE_CHECKING:
    from turnd.config_values import Endpoint
    from turnd.metrics import MetricsSource
    from turnd.operations import OperationsHost
    from turnd.side_http import SideLimits

    class SideOwner(OperationsHost, MetricsSource, Protocol):
        """What the side servers ask of the service: what turnctl and the metrics read, the
        credential state the endpoint serves, and the listeners to report to."""

        @property
        def credentials(self) -> CredentialState:
            """Endpoint keys, REST secrets and revocations."""

        @property
        def listeners(self) -> Listeners:
            """Where a side server that cannot start is reported."""


class SideServers:
    """The metrics, credential endpoint and control servers of one service."""

    def __init__(self, owner: SideOwner, *, reuse_port: bool = False) -> None:
        self._owner = owner
        #: Bind with SO_REUSEPORT (a worker: its successor binds the same ports before it goes).
        self._reuse_port = reuse_port
        self._metrics: Any = None  # aiohttp AppRunner of the metrics listener
        self._api: Any = None  # aiohttp Application of the credential endpoint
        self._api_runner: Any = None
        self._control: list[Any] = []  # aiohttp AppRunners of the control API
        #: The metrics listener's bound address, once it serves.
        self.metrics_address: Address | None = None

    async def start(self) -> None:
        """Start metrics, the credential endpoint and the control API, as configured."""
        await self._start_metrics()
        await self._start_api()
        await self._start_control()

    async def _start_metrics(self) -> None:
        """Serve GET /metrics on ``[metrics] listen``; a failure is reported, not fatal."""
        endpoint = self._owner.config.metrics.listen
        if endpoint is None:
            return
        from aiohttp import web
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        from turnd.metrics import registry_for

        registry = registry_for(self._owner)

        async def metrics(_: web.Request) -> web.Response:
            body = generate_latest(registry)
            return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        served = await self._serve("metrics", app, endpoint, access_log=None)
        if served is None:
            return
        self._metrics, port = served
        self.metrics_address = Address(endpoint.host, port)
        event(logging.INFO, "metrics.started", address=endpoint.host, port=port)

    def _api_settings(self, config: Config) -> Any:
        """The credential endpoint's settings from ``config`` and the serving listeners."""
        from auth.endpoint import EndpointSettings

        stun_urls, turn_urls = self._owner.ice_urls(config)
        secrets = self._owner.credentials.secret_sources(config)
        return EndpointSettings(
            keys=self._owner.credentials.api_keys(config),
            max_ttl=config.api.max_ttl,
            secret=secrets[0][0] if secrets else "",
            stun_urls=tuple(stun_urls),
            turn_urls=tuple(turn_urls),
            max_revocations=config.api.max_revocations_per_key,
        )

    async def _start_api(self) -> None:
        """Serve the credential REST endpoint on ``[api] listen``; failures are reported."""
        owner = self._owner
        endpoint = owner.config.api.listen
        if endpoint is None:
            return

        from auth.endpoint import make_app

        try:
            app = make_app(self._api_settings(owner.config), owner.credentials, time.time)
        except ValueError as exc:
            self._owner.listeners.report(
                "api", endpoint.host, endpoint.port, False, f"bad [api] settings: {exc}"
            )
            return
        served = await self._serve("api", app, endpoint)
        if served is None:
            return
        self._api_runner, port = served
        self._api = app
        event(logging.INFO, "api.started", address=endpoint.host, port=port)

    async def _serve(
        self, name: str, app: Any, endpoint: Endpoint, **runner_options: Any
    ) -> tuple[Any, int] | None:
        """Serve ``app`` on ``endpoint`` as the side server ``name``: its runner and bound port
        (the real one when 0 was asked), or None: it could not bind, reported as a failed
        listener."""
        from turnd import side_http

        limits = self.side_limits()
        runner = side_http.runner(app, limits, **runner_options)
        await runner.setup()
        site = side_http.TCPSite(
            runner,
            endpoint.host,
            endpoint.port,
            name=name,
            limits=limits,
            reuse_port=self._reuse_port,
        )
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            reason = bind_failure_reason(exc, endpoint.port)
            self._owner.listeners.report(name, endpoint.host, endpoint.port, False, reason)
            return None
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        return runner, sockets[0].getsockname()[1] if sockets else endpoint.port

    def side_limits(self) -> SideLimits:
        """The bounds of each side HTTP server (``limits.side_*``), counted in the core's stats."""
        from turnd.side_http import SideLimits

        limits = self._owner.config.limits
        return SideLimits(
            limits.side_max_connections, float(limits.side_header_timeout), self._owner.core.stats
        )

    async def _start_control(self) -> None:
        """The control API (turnctl) on the Unix socket and, with a token, on TCP."""
        from turnd.control import make_app, start_control
        from turnd.operations import Operations

        control = self._owner.config.control
        operations = Operations(self._owner)
        if control.socket:
            try:
                self._control += await start_control(
                    make_app(operations, None), control.socket, None, self.side_limits()
                )
                event(logging.INFO, "control.started", socket=control.socket)
            except OSError as exc:
                reason = exc.strerror or str(exc)
                self._owner.listeners.report("control", control.socket, 0, False, reason)
        if control.listen is not None and control.token is not None:
            listen = (control.listen.host, control.listen.port)
            try:
                self._control += await start_control(
                    make_app(operations, control.token.reveal()), None, listen, self.side_limits()
                )
            except OSError as exc:
                reason = bind_failure_reason(exc, control.listen.port)
                self._owner.listeners.report(
                    "control", control.listen.host, control.listen.port, False, reason
                )
            else:
                event(logging.INFO, "control.started", address=control.listen.host)

    def api_settings(self, config: Config) -> Any:
        """The credential endpoint's settings for ``config``; None when it does not serve."""
        return self._api_settings(config) if self._api is not None else None

    def update_api(self, settings: Any) -> None:
        """Serve ``settings`` (from :meth:`api_settings`) from the next request on."""
        if settings is not None:
            from auth.endpoint import update_settings

            update_settings(self._api, settings)

    def refresh_api(self) -> None:
        """Give the running credential endpoint the current keys and secrets."""
        self.update_api(self.api_settings(self._owner.config))

    async def stop(self) -> None:
        """Stop every side server."""
        if self._control:
            from turnd.control import stop_control

            await stop_control(self._control)
            self._control = []
        for runner in (self._metrics, self._api_runner):
            if runner is not None:
                await runner.cleanup()
        self._metrics = self._api_runner = self._api = None
