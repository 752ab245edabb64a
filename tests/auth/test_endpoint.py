"""The credential REST endpoint: Cloudflare's shape, draft-uberti's shape, errors and secrecy.

Each test serves the app with aiohttp's TestServer on loopback (port 0) inside ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from auth.credentials import Authenticator, CredentialKind
from auth.endpoint import (
    MAX_BODY_BYTES,
    MAX_IDENTIFIER_CHARS,
    MAX_TTL_LIMIT,
    REVOKE_EXPIRY_SLACK,
    EndpointSettings,
    credential_owner,
    make_app,
    update_settings,
)
from stun.keys import PasswordAlgorithm, long_term_key

REALM = "turn.example.org"
NOW = 1_700_000_000.0
SECRET = "rest secret, newest"
TOKEN_1 = "token-of-key-one-0123456789"
TOKEN_2 = "token-of-key-two-9876543210"
MAX_TTL = 7200
STUN_URLS = ("stun:turn.example.org:3478",)
TURN_URLS = (
    "turn:turn.example.org:3478?transport=udp",
    "turn:turn.example.org:3478?transport=tcp",
    "turns:turn.example.org:5349?transport=tcp",
)
SETTINGS = EndpointSettings(
    keys={"k1": TOKEN_1, "k2": TOKEN_2},
    max_ttl=MAX_TTL,
    secret=SECRET,
    stun_urls=STUN_URLS,
    turn_urls=TURN_URLS,
    default_ttl=3600,
)
GENERATE = "/v1/turn/keys/{}/credentials/generate-ice-servers"
REVOKE = "/v1/turn/keys/{}/credentials/{}/revoke"


@attrs.define
class RecordingHooks:
    """EndpointHooks that remembers what was revoked, or fails when told to."""

    revoked: list[str] = attrs.Factory(list)
    fail: bool = False

    def revoke(self, username: str) -> int:
        if self.fail:
            raise RuntimeError("the core is gone")
        self.revoked.append(username)
        return 3

    def revocations(self, key_id: str) -> int:
        return sum(1 for name in self.revoked if name.split(":")[1] == key_id)


@attrs.frozen
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def comparable(self) -> tuple[int, bytes, tuple[tuple[str, str], ...]]:
        """Everything but the Date header, to show two answers are the same."""
        return self.status, self.body, tuple((k, v) for k, v in self.headers.items() if k != "Date")


def run(app: web.Application, scenario: Callable[[TestClient[Any, Any]], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as client:
            return await scenario(client)

    return asyncio.run(main())


async def _fetch(
    client: TestClient[Any, Any],
    method: str,
    path: str,
    token: str | None = None,
    body: object = None,
    headers: Mapping[str, str] | None = None,
) -> Reply:
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    async with client.request(method, path, data=data, headers=sent) as response:
        return Reply(response.status, response.headers, await response.read())


def send(
    method: str,
    path: str,
    token: str | None = None,
    body: object = None,
    *,
    headers: Mapping[str, str] | None = None,
    settings: EndpointSettings = SETTINGS,
    hooks: RecordingHooks | None = None,
) -> Reply:
    """One request to a fresh endpoint; ``body`` is JSON unless it is bytes."""
    app = make_app(settings, hooks or RecordingHooks(), lambda: NOW)
    reply: Reply = run(app, lambda client: _fetch(client, method, path, token, body, headers))
    return reply


def generate(body: object = None, token: str = TOKEN_1, key_id: str = "k1") -> Reply:
    return send("POST", GENERATE.format(key_id), token, body)


def turn_entry(reply: Reply) -> dict[str, Any]:
    entry: dict[str, Any] = reply.json()["iceServers"][-1]
    return entry


def assert_verifies(username: str, password: str) -> None:
    """turnd's REST authentication accepts the pair: the key is the one the password makes."""
    found = Authenticator.create(REALM, rest_secrets=[SECRET]).lookup(
        username, REALM, PasswordAlgorithm.MD5, NOW
    )
    assert found.ok
    assert found.kind is CredentialKind.REST
    assert found.keys == (long_term_key(username, REALM, password, PasswordAlgorithm.MD5),)


# --- generate-ice-servers: the answer ------------------------------------------------------------


def test_generate_answers_201_with_stun_then_turn_entry() -> None:
    """Cloudflare shape: 201, iceServers = [{urls: stun}, {urls: turn, username, credential}]."""
    reply = generate({"ttl": 600, "customIdentifier": "room-42"})
    assert reply.status == 201
    assert reply.headers["Content-Type"].startswith("application/json")
    assert reply.headers["Cache-Control"] == "no-store"
    stun, turn = reply.json()["iceServers"]
    assert stun == {"urls": list(STUN_URLS)}
    assert set(turn) == {"urls", "username", "credential"}
    assert turn["urls"] == list(TURN_URLS)
    assert turn["username"] == f"{int(NOW) + 600}:k1:room-42"


def test_minted_credential_verifies_and_carries_key_id_and_tag() -> None:
    """The credential passes turnd's REST auth; rest_id is "<key_id>:<customIdentifier>"."""
    turn = turn_entry(generate({"ttl": 600, "customIdentifier": "room-42"}))
    assert_verifies(turn["username"], turn["credential"])
    found = Authenticator.create(REALM, rest_secrets=[SECRET]).lookup(
        turn["username"], REALM, PasswordAlgorithm.SHA256, NOW
    )
    assert found.rest_id == "k1:room-42"
    assert found.expires == int(NOW) + 600
    assert credential_owner(turn["username"]) == ("k1", "room-42")


def test_without_custom_identifier_username_is_expiry_and_key_id() -> None:
    """No customIdentifier: the username is "<expiry>:<key_id>"."""
    turn = turn_entry(generate({"ttl": 60}, token=TOKEN_2, key_id="k2"))
    assert turn["username"] == f"{int(NOW) + 60}:k2"
    assert_verifies(turn["username"], turn["credential"])


def test_no_stun_urls_leaves_out_the_stun_entry() -> None:
    """WebRTC refuses an RTCIceServer with empty urls, so none is sent."""
    settings = attrs.evolve(SETTINGS, stun_urls=())
    reply = send("POST", GENERATE.format("k1"), TOKEN_1, {}, settings=settings)
    assert [set(entry) for entry in reply.json()["iceServers"]] == [
        {"urls", "username", "credential"}
    ]


def test_unknown_body_members_are_ignored() -> None:
    """Fields this server does not know do not fail the request."""
    assert generate({"ttl": 60, "future": {"x": 1}}).status == 201


# --- generate-ice-servers: ttl ------------------------------------------------------------------


@pytest.mark.parametrize("body", [{}, {"ttl": None}, b"", b"  \n"], ids=repr)
def test_missing_ttl_gives_default_ttl(body: object) -> None:
    """No ttl (or no body at all) gives default_ttl."""
    reply = generate(body)
    assert reply.status == 201
    assert turn_entry(reply)["username"] == f"{int(NOW) + 3600}:k1"


def test_default_ttl_is_cut_to_max_ttl() -> None:
    """A default above max_ttl is never handed out."""
    settings = attrs.evolve(SETTINGS, default_ttl=86_400)
    reply = send("POST", GENERATE.format("k1"), TOKEN_1, {}, settings=settings)
    assert turn_entry(reply)["username"] == f"{int(NOW) + MAX_TTL}:k1"


@pytest.mark.parametrize("ttl", [1, MAX_TTL])
def test_ttl_bounds_are_accepted(ttl: int) -> None:
    """1 and max_ttl are both valid lifetimes."""
    reply = generate({"ttl": ttl})
    assert reply.status == 201
    assert turn_entry(reply)["username"] == f"{int(NOW) + ttl}:k1"


@pytest.mark.parametrize("ttl", [0, -1, MAX_TTL + 1, "3600", 3600.0, 60.5, True, [60]], ids=repr)
def test_bad_ttl_is_400_naming_ttl(ttl: object) -> None:
    """ttl must be an integer from 1 to max_ttl: anything else names the field."""
    reply = generate({"ttl": ttl})
    assert reply.status == 400
    assert reply.json() == {"error": f"ttl must be an integer from 1 to {MAX_TTL}", "field": "ttl"}


# --- generate-ice-servers: customIdentifier -----------------------------------------------------


@pytest.mark.parametrize(
    "tag", ["a", "x" * MAX_IDENTIFIER_CHARS, "user@example.org", "a.b_c~d+e=f-0", "-lead"]
)
def test_valid_custom_identifier_is_the_username_tag(tag: str) -> None:
    """1 to 64 of A-Z a-z 0-9 . _ ~ @ + = - become the username's last field."""
    turn = turn_entry(generate({"ttl": 60, "customIdentifier": tag}))
    assert turn["username"] == f"{int(NOW) + 60}:k1:{tag}"
    assert_verifies(turn["username"], turn["credential"])


@pytest.mark.parametrize("tag", ["", None])
def test_empty_custom_identifier_is_no_tag(tag: str | None) -> None:
    """An empty or null customIdentifier is the same as none."""
    assert turn_entry(generate({"customIdentifier": tag}))["username"] == f"{int(NOW) + 3600}:k1"


@pytest.mark.parametrize(
    "tag",
    ["x" * (MAX_IDENTIFIER_CHARS + 1), "a:b", "a/b", "a b", "caf\u00e9", "a\n", 5, ["a"], {}],
    ids=repr,
)
def test_bad_custom_identifier_is_400_naming_it(tag: object) -> None:
    """Too long, a colon or slash, space, non-ASCII or not a string: 400 naming the field."""
    reply = generate({"customIdentifier": tag})
    assert reply.status == 400
    assert reply.json()["field"] == "customIdentifier"


# --- generate-ice-servers: body -----------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b"{", b'{"ttl": 60,}', b"\xff\xfe", b"[1]", b'"ttl"', b"60", b"[" * 5000, b"1" * 5000],
    ids=lambda body: repr(body[:12]),
)
def test_malformed_body_is_400_naming_the_body(body: bytes) -> None:
    """Not UTF-8, not JSON, too deep, a huge number or not an object: 400, field "body"."""
    reply = generate(body)
    assert reply.status == 400
    assert reply.json()["field"] == "body"


def test_body_of_max_size_is_read() -> None:
    """A body of exactly MAX_BODY_BYTES is accepted."""
    body = b" " * (MAX_BODY_BYTES - 2) + b"{}"
    assert generate(body).status == 201


def test_oversized_body_is_413() -> None:
    """A body over MAX_BODY_BYTES is refused with 413 and a JSON error."""
    reply = generate(b" " * MAX_BODY_BYTES + b"{}")
    assert reply.status == 413
    assert reply.json() == {"error": "body too large"}
    assert reply.headers["Cache-Control"] == "no-store"


# --- Bearer authentication ----------------------------------------------------------------------


def _unauthorized_replies() -> list[Reply]:
    path = GENERATE.format
    return [
        generate({"ttl": 60}, token="wrong token"),  # wrong token for a known key
        generate({"ttl": 60}, key_id="nokey"),  # unknown key id, a valid token
        generate({"ttl": 60}, token=TOKEN_2),  # another key's token
        generate({"ttl": 60}, token=TOKEN_1 + "x"),  # a longer token
        generate({"ttl": 60}, token=""),  # empty token
        send("POST", path("k1"), None, {"ttl": 60}),  # no header
        send("POST", path("k1"), None, {}, headers={"Authorization": f"Basic {TOKEN_1}"}),
        send("POST", path("k1"), None, {}, headers={"Authorization": TOKEN_1}),
        generate(b"{", token="wrong token"),  # refused before the body is read
    ]


def test_unknown_key_and_wrong_token_get_the_same_401() -> None:
    """Every failed bearer check gets one answer: no hint whether the key id exists."""
    replies = _unauthorized_replies()
    assert {reply.comparable() for reply in replies} == {replies[0].comparable()}
    first = replies[0]
    assert first.status == 401
    assert first.json() == {"error": "unauthorized"}
    assert first.headers["WWW-Authenticate"] == "Bearer"


def test_bearer_scheme_is_case_insensitive() -> None:
    """RFC 7235 §2.1: the auth scheme is case-insensitive."""
    reply = send(
        "POST", GENERATE.format("k1"), None, {}, headers={"Authorization": f"bearer {TOKEN_1}"}
    )
    assert reply.status == 201


def test_tokens_and_secret_are_never_logged_or_echoed(caplog: pytest.LogCaptureFixture) -> None:
    """Nothing the endpoint logs or answers contains a token or the REST secret."""
    caplog.set_level(logging.DEBUG)
    replies = [
        *_unauthorized_replies(),
        generate({"ttl": 60}),
        send("GET", f"/?service=turn&key={TOKEN_1}"),
        send("GET", f"/?service=stun&key={TOKEN_2}"),
        send("GET", "/?service=turn&key=wrong"),
        send("POST", REVOKE.format("k1", f"{int(NOW)}:k1"), TOKEN_1),
    ]
    assert caplog.records  # the endpoint does log
    for text in (TOKEN_1, TOKEN_2, SECRET):
        assert text not in caplog.text
        assert all(text.encode() not in reply.body for reply in replies)
    assert TOKEN_1 not in repr(SETTINGS) and SECRET not in repr(SETTINGS)


# --- Revoke -------------------------------------------------------------------------------------


@pytest.mark.parametrize("username", [f"{int(NOW) + 60}:k1", f"{int(NOW) + 60}:k1:room-42"])
def test_revoke_is_204_after_the_hook(username: str) -> None:
    """POST .../{username}/revoke: the hook ends the user's allocations; 204, no body."""
    hooks = RecordingHooks()
    reply = send("POST", REVOKE.format("k1", username), TOKEN_1, hooks=hooks)
    assert (reply.status, reply.body) == (204, b"")
    assert hooks.revoked == [username]


def test_revoke_of_a_minted_credential_round_trips() -> None:
    """A username just minted can be revoked with the same key."""
    hooks = RecordingHooks()
    app = make_app(SETTINGS, hooks, lambda: NOW)

    async def scenario(client: TestClient[Any, Any]) -> int:
        minted = await _fetch(client, "POST", GENERATE.format("k1"), TOKEN_1, {"ttl": 60})
        username = turn_entry(minted)["username"]
        return (await _fetch(client, "POST", REVOKE.format("k1", username), TOKEN_1)).status

    assert run(app, scenario) == 204
    assert hooks.revoked == [f"{int(NOW) + 60}:k1"]


@pytest.mark.parametrize(
    "username",
    [f"{int(NOW)}:k2", f"{int(NOW)}:k2:k1", f"{int(NOW)}:k10", f"{int(NOW)}", "alice", "x:k1"],
)
def test_revoke_of_another_keys_credential_is_404(username: str) -> None:
    """A key revokes only its own credentials; other or non-REST usernames are unknown."""
    hooks = RecordingHooks()
    reply = send("POST", REVOKE.format("k1", username), TOKEN_1, hooks=hooks)
    assert reply.status == 404
    assert reply.json() == {"error": "unknown credential"}
    assert hooks.revoked == []


def test_revoke_needs_the_keys_token() -> None:
    """Revoke uses the same bearer check: 401 and the hook is not called."""
    hooks = RecordingHooks()
    reply = send("POST", REVOKE.format("k1", f"{int(NOW)}:k1"), TOKEN_2, hooks=hooks)
    assert reply.status == 401
    assert hooks.revoked == []


def test_failing_hook_is_500_with_json_error(caplog: pytest.LogCaptureFixture) -> None:
    """An unexpected error is logged and answered 500 without detail."""
    reply = send(
        "POST", REVOKE.format("k1", f"{int(NOW)}:k1"), TOKEN_1, hooks=RecordingHooks(fail=True)
    )
    assert reply.status == 500
    assert reply.json() == {"error": "internal error"}
    assert "api.internal-error" in caplog.text


# --- draft-uberti shape -------------------------------------------------------------------------


def test_draft_answers_username_password_ttl_uris() -> None:
    """GET /?service=turn&username=u&key=token: 200 {username, password, ttl, uris}."""
    reply = send("GET", f"/?service=turn&username=alice&key={TOKEN_1}")
    assert reply.status == 200
    answer = reply.json()
    assert answer == {
        "username": f"{int(NOW) + 3600}:k1:alice",
        "password": answer["password"],
        "ttl": 3600,
        "uris": list(TURN_URLS),
    }
    assert_verifies(answer["username"], answer["password"])
    assert reply.headers["Cache-Control"] == "no-store"


def test_draft_key_selects_the_key_id_and_username_is_optional() -> None:
    """The key is found by its token; without username the id part is the key id alone."""
    answer = send("GET", f"/?service=turn&key={TOKEN_2}").json()
    assert answer["username"] == f"{int(NOW) + 3600}:k2"


@pytest.mark.parametrize(("asked", "given"), [("1", 1), ("600", 600), ("99999", MAX_TTL)])
def test_draft_ttl_is_capped_at_max_ttl(asked: str, given: int) -> None:
    """The draft's ttl is a wish: the server may give less, never more than max_ttl."""
    answer = send("GET", f"/?service=turn&ttl={asked}&key={TOKEN_1}").json()
    assert answer["ttl"] == given
    assert answer["username"] == f"{int(NOW) + given}:k1"


@pytest.mark.parametrize("ttl", ["0", "-1", "abc", "", "1" * 13, "\u0661"], ids=repr)
def test_draft_bad_ttl_is_400(ttl: str) -> None:
    """ttl must be a positive integer (ASCII digits)."""
    reply = send("GET", f"/?service=turn&key={TOKEN_1}&ttl={ttl}")
    assert reply.status == 400
    assert reply.json()["field"] == "ttl"


@pytest.mark.parametrize("query", ["", "&service=stun", "&service=TURN"])
def test_draft_service_must_be_turn(query: str) -> None:
    """Only service=turn is served."""
    reply = send("GET", f"/?key={TOKEN_1}{query}")
    assert reply.status == 400
    assert reply.json() == {"error": "service must be turn", "field": "service"}


def test_draft_bad_username_is_400() -> None:
    """The username parameter follows the customIdentifier rule (no colon)."""
    reply = send("GET", f"/?service=turn&username=a:b&key={TOKEN_1}")
    assert reply.status == 400
    assert reply.json()["field"] == "username"


@pytest.mark.parametrize(
    "query", ["service=turn", "service=turn&key=", "service=turn&key=wrong", "service=stun"]
)
def test_draft_missing_or_wrong_key_is_401(query: str) -> None:
    """No key, or a key that is no configured token: the same 401 as the Cloudflare shape."""
    reply = send("GET", f"/?{query}")
    assert reply.status == 401
    assert reply.json() == {"error": "unauthorized"}


# --- Routing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", GENERATE.format("k1"), "POST"),
        ("PUT", REVOKE.format("k1", "1:k1"), "POST"),
        ("POST", "/", "GET,HEAD"),
    ],
)
def test_wrong_method_is_405_with_allow(method: str, path: str, allow: str) -> None:
    """A known path with another method: 405, Allow, JSON body."""
    reply = send(method, path, TOKEN_1)
    assert reply.status == 405
    assert reply.json() == {"error": "method not allowed"}
    assert sorted(reply.headers["Allow"].split(",")) == sorted(allow.split(","))


@pytest.mark.parametrize(
    "path", ["/v1/turn/keys/k1/credentials", "/v1/turn/keys/k1/credentials/generate", "/turn"]
)
def test_unknown_path_is_404(path: str) -> None:
    """Anything else is 404 with a JSON body."""
    reply = send("POST", path, TOKEN_1)
    assert reply.status == 404
    assert reply.json() == {"error": "not found"}
    assert reply.headers["Cache-Control"] == "no-store"


# --- Settings -----------------------------------------------------------------------------------


def test_update_settings_takes_effect_on_the_next_request() -> None:
    """A reload swaps keys and secret without a new app."""
    app = make_app(SETTINGS, RecordingHooks(), lambda: NOW)
    reloaded = attrs.evolve(SETTINGS, keys={"k3": "token three"}, secret="next secret")

    async def scenario(client: TestClient[Any, Any]) -> list[Reply]:
        before = await _fetch(client, "POST", GENERATE.format("k3"), "token three", {})
        update_settings(app, reloaded)
        after = await _fetch(client, "POST", GENERATE.format("k3"), "token three", {})
        old = await _fetch(client, "POST", GENERATE.format("k1"), TOKEN_1, {})
        return [before, after, old]

    before, after, old = run(app, scenario)
    assert (before.status, after.status, old.status) == (401, 201, 401)
    turn = turn_entry(after)
    found = Authenticator.create(REALM, rest_secrets=["next secret"]).lookup(
        turn["username"], REALM, PasswordAlgorithm.MD5, NOW
    )
    assert found.keys == (
        long_term_key(turn["username"], REALM, turn["credential"], PasswordAlgorithm.MD5),
    )


@pytest.mark.parametrize(
    "change",
    [
        {"keys": {"a:b": "t"}},
        {"keys": {"a/b": "t"}},
        {"keys": {"": "t"}},
        {"keys": {".x": "t"}},
        {"keys": {"x" * (MAX_IDENTIFIER_CHARS + 1): "t"}},
        {"keys": {"k1": ""}},
        {"keys": {"k1": "same", "k2": "same"}},
        {"max_ttl": 0},
        {"max_ttl": MAX_TTL_LIMIT + 1},
        {"default_ttl": 0},
        {"secret": ""},
        {"turn_urls": ()},
    ],
    ids=repr,
)
def test_invalid_settings_are_refused(change: dict[str, Any]) -> None:
    """Key ids that would break usernames or URLs, empty or shared tokens, bad ttls, no URLs."""
    with pytest.raises(ValueError):
        attrs.evolve(SETTINGS, **change)


def test_one_url_string_is_not_a_list_of_urls() -> None:
    """A lone string for the URLs is a mistake, not a URL per character."""
    with pytest.raises(TypeError):
        attrs.evolve(SETTINGS, turn_urls=TURN_URLS[0])


def test_settings_repr_shows_key_ids_not_tokens() -> None:
    """The repr names the keys and hides their tokens and the secret."""
    text = repr(SETTINGS)
    assert "k1" in text and "<secret>" in text
    assert TOKEN_1 not in text and SECRET not in text


@pytest.mark.parametrize(
    ("username", "owner"),
    [
        ("1700000000:k1", ("k1", "")),
        ("1700000000:k1:room", ("k1", "room")),
        ("1700000000", None),
        ("1700000000:", None),
        ("alice", None),
    ],
)
def test_credential_owner_splits_key_id_and_tag(
    username: str, owner: tuple[str, str] | None
) -> None:
    """Accounting recovers (key id, tag) from the username; non-REST usernames give None."""
    assert credential_owner(username) == owner


def test_revoke_of_a_name_expiring_beyond_max_ttl_is_refused() -> None:
    """A key cannot revoke a far-future name (no credential it mints lives that long): 400, and
    nothing joins the revocation list; one expiring at max_ttl from now is revoked."""
    hooks = RecordingHooks()
    far = f"{int(NOW) + MAX_TTL + REVOKE_EXPIRY_SLACK + 1}:k1:forever"
    reply = send("POST", REVOKE.format("k1", far), TOKEN_1, hooks=hooks)
    assert reply.status == 400
    assert "api.max_ttl" in reply.json()["error"]
    edge = f"{int(NOW) + MAX_TTL}:k1"
    assert send("POST", REVOKE.format("k1", edge), TOKEN_1, hooks=hooks).status == 204
    assert hooks.revoked == [edge]


def test_a_key_holding_max_revocations_gets_429() -> None:
    """Past max_revocations live revocations a key's revoke is 429 and the hook is not called;
    another key is not affected."""
    settings = attrs.evolve(SETTINGS, max_revocations=2)
    hooks = RecordingHooks()
    for tag in ("a", "b"):
        name = f"{int(NOW) + 60}:k1:{tag}"
        assert (
            send("POST", REVOKE.format("k1", name), TOKEN_1, settings=settings, hooks=hooks).status
            == 204
        )
    third = f"{int(NOW) + 60}:k1:c"
    reply = send("POST", REVOKE.format("k1", third), TOKEN_1, settings=settings, hooks=hooks)
    assert reply.status == 429 and "max_revocations_per_key" in reply.json()["error"]
    other = f"{int(NOW) + 60}:k2:a"
    assert (
        send("POST", REVOKE.format("k2", other), TOKEN_2, settings=settings, hooks=hooks).status
        == 204
    )
    assert third not in hooks.revoked and other in hooks.revoked
