"""The credential REST endpoint: application back ends trade an API key for TURN credentials.

Theory of operation
-------------------
The only I/O module of ``auth/``: an aiohttp application that mints REST ephemeral credentials
(draft-uberti-behave-turn-rest-00, :func:`auth.credentials.mint_rest_credentials`) with the
newest REST secret, so that turnd's own REST authentication accepts them. Two shapes:

- Cloudflare's. ``POST /v1/turn/keys/{key_id}/credentials/generate-ice-servers`` with
  ``Authorization: Bearer <token>`` and a JSON body ``{"ttl": 1..max_ttl,
  "customIdentifier": "..."}`` (both optional; an empty body is ``{}``, unknown members are
  ignored) answers 201 ``{"iceServers": [{"urls": [stun...]}, {"urls": [turn...], "username",
  "credential"}]}`` (the STUN entry is left out when there are no STUN URLs: WebRTC refuses an
  empty ``urls``). ``POST /v1/turn/keys/{key_id}/credentials/{username}/revoke`` answers 204
  after :meth:`EndpointHooks.revoke`; a key only revokes credentials minted for it, any other
  username is 404.
- draft-uberti's, for applications built for coturn: ``GET /?service=turn&username=<u>&key=<token>
  [&ttl=<seconds>]`` answers 200 ``{"username", "password", "ttl", "uris"}``. ``key`` is the
  token of any configured key; a ``ttl`` above max_ttl is cut to max_ttl, as the draft allows.

Usernames and accounting. Every credential is ``<expiry>:<key_id>`` or
``<expiry>:<key_id>:<tag>``, where the tag is the customIdentifier (Cloudflare shape) or the
``username`` parameter (draft shape). turnd's REST authentication reads everything after the
first colon as the id (``KeyLookup.rest_id``); key ids and tags never contain a colon, so
``key_id, _, tag = rest_id.partition(":")`` recovers both (:func:`credential_owner`). The draft
puts only ``<expiry>:<u>`` in the username; the key id is added here so that a key can neither
mint credentials that account to another key nor revoke them.

Identifiers. A key id is 1 to 64 of ``A-Z a-z 0-9 . _ ~ @ + = -``, starting with a letter or
digit; a tag is 1 to 64 of the same characters (an empty tag is no tag). No colon (it separates
the username's fields), no slash (the username is a path segment of the revoke URL), no space
or non-ASCII (nothing to escape in URLs or logs, nothing for OpaqueString to change).

Security. Tokens are compared with ``hmac.compare_digest``; an unknown key id and a wrong token
get the same 401. Tokens and secrets are never logged nor echoed; error bodies never repeat the
request. The draft puts the token in the query string, so the app brings its own access log
(event ``api.request`` at DEBUG, path without the query) whatever runner serves it. Every answer
carries ``Cache-Control: no-store``. Errors are JSON ``{"error": "...", "field": "..."}``, built
in one place (``_json_errors``).
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, Protocol

import attrs
from aiohttp import hdrs, web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Handler

from auth.credentials import MintRefused, mint_rest_credentials, parse_rest_username

__all__ = [
    "CLOUDFLARE_GENERATE_PATH",
    "CLOUDFLARE_REVOKE_PATH",
    "DRAFT_PATH",
    "MAX_BODY_BYTES",
    "MAX_IDENTIFIER_CHARS",
    "MAX_TTL_LIMIT",
    "SETTINGS_KEY",
    "EndpointHooks",
    "EndpointSettings",
    "SettingsHolder",
    "credential_owner",
    "make_app",
    "update_settings",
]

#: Longest credential lifetime any configuration may allow: 48 h (DESIGN.md "Authentication").
MAX_TTL_LIMIT = 172_800
#: Largest request body read: a credential request is well under 200 bytes; this bounds memory.
MAX_BODY_BYTES = 16 * 1024
#: Longest key id or tag: a Cloudflare key id is 32 hex digits; keeps usernames short.
MAX_IDENTIFIER_CHARS = 64
#: Digits accepted in the draft's ttl parameter: bounds integer parsing of hostile input.
MAX_TTL_DIGITS = 12

CLOUDFLARE_GENERATE_PATH = "/v1/turn/keys/{key_id}/credentials/generate-ice-servers"
#: Seconds a revoked name's expiry may lie beyond ``max_ttl`` from now: clock skew between the
#: node that minted it and the node asked to revoke it.
REVOKE_EXPIRY_SLACK = 300
CLOUDFLARE_REVOKE_PATH = "/v1/turn/keys/{key_id}/credentials/{username}/revoke"
DRAFT_PATH = "/"

_CHARS = r"A-Za-z0-9._~@+=-"
_CHARS_TEXT = "A-Z a-z 0-9 . _ ~ @ + = -"
_KEY_ID = re.compile(rf"[A-Za-z0-9][{_CHARS}]{{0,{MAX_IDENTIFIER_CHARS - 1}}}")
_TAG = re.compile(rf"[{_CHARS}]{{1,{MAX_IDENTIFIER_CHARS}}}")
_NO_KEY = b"\x00 no such key \x00"  # compared against when the key id is unknown
_UNAUTHORIZED_HEADERS = {"WWW-Authenticate": "Bearer"}  # RFC 6750 §3
_HTTP_ERRORS = {404: "not found", 405: "method not allowed", 413: "body too large"}

LOGGER = logging.getLogger("turnd.api")


def _event(level: int, name: str, **fields: Any) -> None:
    """Log in the shape turnd.logs renders (event name plus fields); never pass a secret."""
    LOGGER.log(level, name, extra={"event": name, "fields": fields})


class _AccessLog(AbstractAccessLogger):
    """The access log without the query string, which holds the draft shape's token."""

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.DEBUG)

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        _event(
            logging.DEBUG,
            "api.request",
            method=request.method,
            path=request.path,
            status=response.status,
            remote=request.remote,
            seconds=round(time, 6),
        )


# --- Settings -----------------------------------------------------------------------------------


def _freeze_keys(keys: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(keys))


def _urls(urls: Iterable[str]) -> tuple[str, ...]:
    if isinstance(urls, str):  # tuple("stun:h") would be one URL per character
        raise TypeError("URLs are a sequence of strings, not one string")
    return tuple(urls)


def _redact_keys(keys: Mapping[str, str]) -> str:
    return f"<tokens of keys {sorted(keys)}>"


def _check_keys(instance: object, attribute: object, keys: Mapping[str, str]) -> None:
    seen: dict[str, str] = {}
    for key_id, token in keys.items():
        if not _KEY_ID.fullmatch(key_id):
            raise ValueError(
                f"key id {key_id!r}: 1 to {MAX_IDENTIFIER_CHARS} of {_CHARS_TEXT}, "
                "starting with a letter or digit"
            )
        if not token:
            raise ValueError(f"key {key_id!r}: the token must not be empty")
        if token in seen:  # the draft shape finds the key by its token alone
            raise ValueError(f"keys {seen[token]!r} and {key_id!r} have the same token")
        seen[token] = key_id


def _check_max_ttl(instance: object, attribute: object, value: int) -> None:
    if not 1 <= value <= MAX_TTL_LIMIT:
        raise ValueError(f"max_ttl must be 1 to {MAX_TTL_LIMIT} seconds")


def _check_positive(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be at least 1 second")


def _check_secret(instance: object, attribute: object, value: str) -> None:
    if not value:
        raise ValueError("the REST secret must not be empty")


def _check_turn_urls(instance: object, attribute: object, value: tuple[str, ...]) -> None:
    if not value:
        raise ValueError("at least one TURN URL is needed")


@attrs.frozen
class EndpointSettings:
    """What the endpoint serves; the daemon builds a new one on reload (:func:`update_settings`).

    Key ids follow the identifier rule of the module docstring; tokens are non-empty and
    distinct. ``default_ttl`` is used when a request names none, cut to ``max_ttl``.
    """

    keys: Mapping[str, str] = attrs.field(
        converter=_freeze_keys, validator=_check_keys, repr=_redact_keys
    )
    """Key id -> bearer token (revealed by the caller)."""
    max_ttl: int = attrs.field(validator=_check_max_ttl)
    """Longest lifetime a caller may ask for, seconds (at most MAX_TTL_LIMIT)."""
    secret: str = attrs.field(validator=_check_secret, repr=lambda _: "<secret>")
    """The newest REST shared secret: credentials are minted with it."""
    stun_urls: tuple[str, ...] = attrs.field(converter=_urls)
    """``stun:`` URLs returned by the Cloudflare shape (none: no STUN entry)."""
    turn_urls: tuple[str, ...] = attrs.field(converter=_urls, validator=_check_turn_urls)
    """``turn:``/``turns:`` URLs returned with the credential."""
    default_ttl: int = attrs.field(default=86_400, validator=_check_positive)
    """Lifetime when the request names none, seconds (cut to max_ttl)."""
    max_revocations: int = attrs.field(default=10_000, validator=_check_positive)
    """Live revocations one key may hold; past it a revoke is 429."""

    @property
    def fallback_ttl(self) -> int:
        """The lifetime given when a request names none."""
        return min(self.default_ttl, self.max_ttl)


@attrs.define
class SettingsHolder:
    """The mutable cell in the app that holds the current settings (swapped on reload)."""

    current: EndpointSettings


SETTINGS_KEY = web.AppKey("turnd_api_settings", SettingsHolder)


def update_settings(app: web.Application, settings: EndpointSettings) -> None:
    """Serve ``settings`` from the next request on (keys, secret, URLs, ttls): config reload."""
    app[SETTINGS_KEY].current = settings


class EndpointHooks(Protocol):
    """What the endpoint asks of the daemon."""

    def revoke(self, username: str) -> int:
        """Refuse ``username`` from now on, end its allocations here; return how many ended."""

    def revocations(self, key_id: str) -> int:
        """How many live revocations hold usernames minted for ``key_id``."""


def credential_owner(username: str) -> tuple[str, str] | None:
    """``(key_id, tag)`` of a REST username minted here (tag "" when absent); None if not REST.

    Meant for accounting too: a username minted elsewhere (``turnctl credentials generate``)
    gives its id up to the first colon as the "key id".
    """
    rest = parse_rest_username(username)
    if rest is None or not rest.ident:
        return None
    key_id, _, tag = rest.ident.partition(":")
    return key_id, tag


# --- Errors -------------------------------------------------------------------------------------


class _Refused(Exception):
    """A request the endpoint refuses; ``_json_errors`` turns it into the JSON answer."""

    def __init__(
        self,
        status: int,
        error: str,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.field = field
        self.headers = dict(headers or {})


def _unauthorized() -> _Refused:
    return _Refused(401, "unauthorized", headers=_UNAUTHORIZED_HEADERS)


def _error_response(
    status: int, error: str, field: str | None, headers: Mapping[str, str]
) -> web.Response:
    body: dict[str, str] = {"error": error}
    if field is not None:
        body["field"] = field
    return web.json_response(body, status=status, headers=headers)


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one place errors become answers; every answer gets ``Cache-Control: no-store``."""
    try:
        response = await handler(request)
    except _Refused as refused:
        response = _error_response(refused.status, refused.error, refused.field, refused.headers)
    except web.HTTPException as exc:  # the router's 404 and 405, the body reader's 413
        allow = exc.headers.get(hdrs.ALLOW)
        response = _error_response(
            exc.status,
            _HTTP_ERRORS.get(exc.status, exc.reason.lower()),
            None,
            {hdrs.ALLOW: allow} if allow is not None else {},
        )
    except Exception:
        LOGGER.exception("api.internal-error", extra={"event": "api.internal-error"})
        response = _error_response(500, "internal error", None, {})
    response.headers[hdrs.CACHE_CONTROL] = "no-store"
    return response


# --- Request checks -----------------------------------------------------------------------------


def _token_bytes(token: str) -> bytes:
    # surrogatepass: aiohttp decodes undecodable header bytes to lone surrogates.
    return token.encode("utf-8", "surrogatepass")


def _authorize_bearer(settings: EndpointSettings, key_id: str, header: str) -> None:
    """Check ``Authorization: Bearer <token>`` against ``key_id``'s token, or raise 401."""
    scheme, _, token = header.strip().partition(" ")
    presented = _token_bytes(token.strip()) if scheme.lower() == "bearer" else b""
    expected = settings.keys.get(key_id)
    matches = hmac.compare_digest(
        presented, _token_bytes(expected) if expected is not None else _NO_KEY
    )
    if expected is None or not matches:
        _event(logging.WARNING, "api.unauthorized", key_id=key_id if expected else "<unknown>")
        raise _unauthorized()


def _key_for_token(settings: EndpointSettings, token: str) -> str:
    """The key id whose token is ``token`` (every key compared), or raise 401."""
    presented = _token_bytes(token)
    found = [
        key_id
        for key_id, expected in settings.keys.items()
        if hmac.compare_digest(presented, _token_bytes(expected))
    ]
    if not found:  # tokens are never empty, so a missing key matches none
        _event(logging.WARNING, "api.unauthorized", key_id="<draft key>")
        raise _unauthorized()
    return found[0]


def _tag(value: object, field: str) -> str:
    """A customIdentifier or draft username: "" when absent, null or empty."""
    if value is None or value == "":
        return ""
    if not isinstance(value, str) or not _TAG.fullmatch(value):
        raise _Refused(400, f"{field} must be 1 to {MAX_IDENTIFIER_CHARS} of {_CHARS_TEXT}", field)
    return value


def _body_ttl(value: object, settings: EndpointSettings) -> int:
    """The JSON body's ttl: absent or null gives the default; out of 1..max_ttl is 400."""
    if value is None:
        return settings.fallback_ttl
    if type(value) is not int or not 1 <= value <= settings.max_ttl:  # bool is not a ttl
        raise _Refused(400, f"ttl must be an integer from 1 to {settings.max_ttl}", "ttl")
    return value


def _query_ttl(text: str | None, settings: EndpointSettings) -> int:
    """The draft's ttl parameter: absent gives the default; above max_ttl is cut to it."""
    if text is None:
        return settings.fallback_ttl
    well_formed = 0 < len(text) <= MAX_TTL_DIGITS and text.isascii() and text.isdigit()
    if not well_formed or int(text) == 0:
        raise _Refused(400, "ttl must be a positive integer", "ttl")
    return min(int(text), settings.max_ttl)


async def _json_object(request: web.Request) -> Mapping[str, object]:
    """The body as a JSON object; an empty body is ``{}``. 413 past MAX_BODY_BYTES."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # bad UTF-8 or JSON, huge numbers, deep nesting
        raise _Refused(400, "the body is not valid JSON", "body") from None
    if not isinstance(body, dict):
        raise _Refused(400, "the body must be a JSON object", "body")
    return body


def _mint(
    settings: EndpointSettings, now: float, ttl: int, key_id: str, tag: str
) -> tuple[str, str]:
    ident = f"{key_id}:{tag}" if tag else key_id
    try:
        username, password = mint_rest_credentials(settings.secret, now, ttl, ident)
    except MintRefused as exc:  # a name turnd's authenticator would refuse is never minted
        raise _Refused(400, str(exc), "customIdentifier") from None
    _event(logging.INFO, "api.credential-issued", username=username, key_id=key_id, tag=tag)
    return username, password


# --- The application ----------------------------------------------------------------------------


def make_app(
    settings: EndpointSettings, hooks: EndpointHooks, clock: Callable[[], float]
) -> web.Application:
    """The endpoint as an aiohttp application; ``clock()`` is Unix time in seconds.

    Serve it with any ``web.AppRunner``: its access log is replaced by one without query strings.
    """

    async def generate(request: web.Request) -> web.StreamResponse:
        current = request.app[SETTINGS_KEY].current
        key_id = request.match_info["key_id"]
        _authorize_bearer(current, key_id, request.headers.get(hdrs.AUTHORIZATION, ""))
        body = await _json_object(request)
        ttl = _body_ttl(body.get("ttl"), current)
        tag = _tag(body.get("customIdentifier"), "customIdentifier")
        username, password = _mint(current, clock(), ttl, key_id, tag)
        turn = {"urls": list(current.turn_urls), "username": username, "credential": password}
        stun = [{"urls": list(current.stun_urls)}] if current.stun_urls else []
        return web.json_response({"iceServers": [*stun, turn]}, status=201)

    async def revoke(request: web.Request) -> web.StreamResponse:
        current = request.app[SETTINGS_KEY].current
        key_id = request.match_info["key_id"]
        _authorize_bearer(current, key_id, request.headers.get(hdrs.AUTHORIZATION, ""))
        username = request.match_info["username"]
        owner = credential_owner(username)
        if owner is None or owner[0] != key_id:
            raise _Refused(404, "unknown credential")
        rest = parse_rest_username(username)
        if rest is not None and rest.expiry > clock() + current.max_ttl + REVOKE_EXPIRY_SLACK:
            # No credential this endpoint mints lives that long: a revocation of one would be
            # kept (and grow the list) for nothing. The operator can still turnctl revoke it.
            raise _Refused(400, "expiry is further than api.max_ttl from now", "username")
        if hooks.revocations(key_id) >= current.max_revocations:
            raise _Refused(429, "this key holds api.max_revocations_per_key revocations")
        ended = hooks.revoke(username)
        _event(logging.INFO, "api.credential-revoked", username=username, ended=ended)
        return web.Response(status=204)

    async def draft(request: web.Request) -> web.StreamResponse:
        current = request.app[SETTINGS_KEY].current
        query = request.query
        key_id = _key_for_token(current, query.get("key", ""))
        if query.get("service") != "turn":
            raise _Refused(400, "service must be turn", "service")
        tag = _tag(query.get("username"), "username")
        ttl = _query_ttl(query.get("ttl"), current)
        username, password = _mint(current, clock(), ttl, key_id, tag)
        return web.json_response(
            {
                "username": username,
                "password": password,
                "ttl": ttl,
                "uris": list(current.turn_urls),
            }
        )

    app = web.Application(
        middlewares=[_json_errors],
        client_max_size=MAX_BODY_BYTES,
        # Overrides what the runner passes: whoever serves the app, the token stays out of logs.
        handler_args={"access_log": LOGGER, "access_log_class": _AccessLog},
    )
    app[SETTINGS_KEY] = SettingsHolder(settings)
    app.router.add_post(CLOUDFLARE_GENERATE_PATH, generate)
    app.router.add_post(CLOUDFLARE_REVOKE_PATH, revoke)
    app.router.add_get(DRAFT_PATH, draft)
    return app
