"""RFC 8489 §9.2 (long-term credentials) as the TURN core applies it: challenges, nonces,
downgrade protection, USERHASH, REST ephemeral credentials, and no state before authentication."""

from __future__ import annotations

from typing import Any

import pytest

from auth.credentials import mint_rest_credentials
from auth.nonce import DEFAULT_LIFETIME, SecurityFeature, features_of
from stun import attributes as at
from stun.addresses import Address
from stun.keys import PasswordAlgorithm
from stun.message import Message, MessageClass, Method, check_integrity
from tests.core.harness import PEER, REALM, Client, World, error_code
from turnd.core.actions import AllocationEnded
from turnd.core.authn import OFFERED_ENTRIES

MD5 = at.PasswordAlgorithmEntry(PasswordAlgorithm.MD5)
SHA256 = at.PasswordAlgorithmEntry(PasswordAlgorithm.SHA256)
BOB_ADDRESS = Address("203.0.113.66", 40000)


def allocate_request(client: Client, credentials: list[Any] | None = None) -> Message:
    """Send one signed Allocate (no retry) and return the single reply."""
    request = client.build(Method.ALLOCATE, [at.RequestedTransport(17)], credentials=credentials)
    [reply] = client.raw(request)
    return reply


def assert_challenge(reply: Message, code: int) -> None:
    """A 401/438 carries REALM and a NONCE, and no MESSAGE-INTEGRITY (§9.2.4)."""
    assert error_code(reply) == code
    realm, nonce = reply.get(at.Realm), reply.get(at.Nonce)
    assert realm is not None and realm.value == REALM
    assert nonce is not None and nonce.value
    assert not reply.has(at.MessageIntegrity)
    assert not reply.has(at.MessageIntegritySha256)


# --- the challenge (§9.2.4 first step) ---------------------------------------------------------


def test_request_without_integrity_is_401_with_realm_nonce_and_password_algorithms() -> None:
    """§9.2.4: no MESSAGE-INTEGRITY: unsigned 401 with REALM, NONCE, PASSWORD-ALGORITHMS."""
    world = World()
    reply = world.client().fetch_nonce()
    assert_challenge(reply, 401)
    nonce = reply.get(at.Nonce)
    assert nonce is not None
    assert SecurityFeature.PASSWORD_ALGORITHMS in features_of(nonce.value)
    offered = reply.get(at.PasswordAlgorithms)
    assert offered is not None and offered.algorithms == OFFERED_ENTRIES
    assert world.server.stats["auth.challenges"] == 1


def test_challenge_without_the_feature_has_no_password_algorithms() -> None:
    """§9.2.4: PASSWORD-ALGORITHMS is sent only when the nonce cookie announces the feature."""
    world = World(features=())
    reply = world.client().fetch_nonce()
    assert_challenge(reply, 401)
    assert not reply.has(at.PasswordAlgorithms)


def test_wrong_password_is_401_counted_as_bad_integrity() -> None:
    """§9.2.4: a MESSAGE-INTEGRITY that does not verify gets 401 (with a new challenge)."""
    world = World()
    reply = world.client("alice", "not-alices-password").allocate()
    assert_challenge(reply, 401)
    assert world.server.stats["auth_failure.bad_integrity"] == 1
    assert world.server.allocations == {}


def test_unknown_user_is_401() -> None:
    """§9.2.4: a USERNAME the server does not know gets 401."""
    world = World()
    reply = world.client("mallory", "whatever").allocate()
    assert_challenge(reply, 401)
    assert world.server.stats["auth_failure.unknown_user"] == 1


def test_unknown_realm_is_401() -> None:
    """§9.2.4: credentials for another realm are not valid here: 401."""
    world = World()
    alice = world.client()
    alice.fetch_nonce()
    alice.realm = "elsewhere.example"
    assert_challenge(allocate_request(alice), 401)
    assert world.server.stats["auth_failure.unknown_realm"] == 1


@pytest.mark.parametrize("missing", [at.Username, at.Realm, at.Nonce])
def test_integrity_without_username_realm_or_nonce_is_400(missing: type) -> None:
    """§9.2.4: a signed request lacking USERNAME/USERHASH, REALM or NONCE gets 400."""
    world = World()
    alice = world.client()
    alice.fetch_nonce()
    credentials = [a for a in alice.credential_attributes() if type(a) is not missing]
    reply = allocate_request(alice, credentials)
    assert error_code(reply) == 400
    assert not reply.has(at.MessageIntegrity)
    assert world.server.stats["auth_failure.missing_attributes"] == 1


# --- nonces (§9.2.4 third step) ------------------------------------------------------------------


def test_stale_nonce_is_438_with_a_fresh_nonce_and_the_retry_succeeds() -> None:
    """§9.2.4: an expired nonce gets 438 with a fresh NONCE; the retry with it succeeds."""
    world = World()
    alice = world.client()
    alice.allocate(at.RequestedTransport(17), at.Lifetime(3600))
    old_nonce = alice.nonce
    world.advance(DEFAULT_LIFETIME + 1)
    reply = alice.request(Method.REFRESH, retry=False)
    assert_challenge(reply, 438)
    fresh = reply.get(at.Nonce)
    assert fresh is not None and fresh.value != old_nonce
    assert world.server.stats["auth.stale_nonce"] == 1
    alice.nonce = fresh.value
    retried = alice.request(Method.REFRESH, retry=False)
    assert error_code(retried) is None
    assert check_integrity(retried, alice.key())


def test_bad_integrity_with_a_stale_nonce_is_401_not_438() -> None:
    """§9.2.4: integrity is checked before nonce freshness: a wrong key gets 401, not 438."""
    world = World()
    mallory = world.client("alice", "guess")
    mallory.fetch_nonce()
    world.advance(DEFAULT_LIFETIME + 1)
    assert_challenge(allocate_request(mallory), 401)
    assert world.server.stats["auth_failure.bad_integrity"] == 1
    assert world.server.stats["auth.stale_nonce"] == 0


def test_nonce_issued_to_another_client_address_is_438() -> None:
    """§9.2.4 (a nonce is valid only for the source it was given to): 438."""
    world = World()
    alice = world.client()
    alice.fetch_nonce()
    bob = world.client("bob", "bob-pw", address=BOB_ADDRESS, nonce=alice.nonce, realm=REALM)
    assert_challenge(allocate_request(bob), 438)
    assert world.server.stats["auth.bad_nonce"] == 1


def test_nonce_is_valid_from_another_port_of_the_same_address() -> None:
    """RFC 6062 §5.4: a data connection (new port) authenticates with the control one's nonce."""
    world = World()
    alice = world.client()
    alice.fetch_nonce()
    other_port = Address(alice.address.host, alice.address.port + 1)
    again = world.client(address=other_port, nonce=alice.nonce, realm=REALM)
    assert (
        error_code(again.request(Method.ALLOCATE, at.RequestedTransport(17), retry=False)) is None
    )
    assert world.server.stats["auth.bad_nonce"] == 0


def test_forged_nonce_is_438() -> None:
    """§9.2.4: a NONCE this server did not issue is not valid: 438 with a real one."""
    world = World()
    alice = world.client(nonce="obMatJos2AAABforged-nonce", realm=REALM)
    assert_challenge(allocate_request(alice), 438)


# --- downgrade protection (§9.2.4 fourth step) ---------------------------------------------------


def algorithm_credentials(client: Client, *extra: Any) -> list[Any]:
    return [at.Username(client.username), at.Realm(REALM), at.Nonce(client.nonce or ""), *extra]


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param((at.PasswordAlgorithms(OFFERED_ENTRIES),), id="algorithms-alone"),
        pytest.param((at.PasswordAlgorithm(PasswordAlgorithm.MD5),), id="algorithm-alone"),
        pytest.param(
            (at.PasswordAlgorithms((MD5,)), at.PasswordAlgorithm(PasswordAlgorithm.MD5)),
            id="list-without-sha256",
        ),
        pytest.param(
            (at.PasswordAlgorithms((MD5, SHA256)), at.PasswordAlgorithm(PasswordAlgorithm.MD5)),
            id="list-reordered",
        ),
        pytest.param(
            (at.PasswordAlgorithms(OFFERED_ENTRIES), at.PasswordAlgorithm(0x0003)),
            id="unoffered-algorithm",
        ),
        pytest.param(
            (at.PasswordAlgorithms(OFFERED_ENTRIES), at.PasswordAlgorithm(2, b"\x01\x02")),
            id="offered-algorithm-with-parameters",
        ),
    ],
)
def test_password_algorithm_downgrade_attempt_is_400(extra: tuple[Any, ...]) -> None:
    """§9.2.4: PASSWORD-ALGORITHM(S) must both come, the list as offered, the choice in it: 400."""
    world = World()
    alice = world.client()
    alice.fetch_nonce()
    reply = allocate_request(alice, algorithm_credentials(alice, *extra))
    assert error_code(reply) == 400
    assert world.server.allocations == {}


def test_rfc5389_client_without_algorithm_attributes_is_served_with_md5() -> None:
    """§9.2.4: a request with neither algorithm attribute is served as MD5 (RFC 5389 client)."""
    world = World()
    alice = world.client()
    alice.fetch_nonce()
    reply = allocate_request(alice, algorithm_credentials(alice))
    assert error_code(reply) is None
    assert check_integrity(reply, alice.key())
    assert reply.has(at.MessageIntegrity)


def test_algorithm_attributes_without_the_nonce_feature_are_400() -> None:
    """§9.2.4: algorithm attributes without the nonce's feature bit are 400; none means MD5."""
    world = World(features=())
    alice = world.client()
    alice.fetch_nonce()
    extra = (at.PasswordAlgorithms(OFFERED_ENTRIES), at.PasswordAlgorithm(PasswordAlgorithm.MD5))
    assert error_code(allocate_request(alice, algorithm_credentials(alice, *extra))) == 400
    assert error_code(allocate_request(alice, algorithm_credentials(alice))) is None


def test_sha256_client_gets_message_integrity_sha256_in_responses() -> None:
    """§9.2.4: a MESSAGE-INTEGRITY-SHA256 request is answered with MESSAGE-INTEGRITY-SHA256."""
    world = World()
    bob = world.client("bob", "bob-pw", sha256=True)
    reply = bob.allocate()
    assert error_code(reply) is None
    assert reply.has(at.MessageIntegritySha256) and not reply.has(at.MessageIntegrity)
    assert check_integrity(reply, bob.key())
    error = bob.request(Method.CREATE_PERMISSION)  # no XOR-PEER-ADDRESS: 400, still signed
    assert error_code(error) == 400
    assert error.has(at.MessageIntegritySha256) and check_integrity(error, bob.key())


# --- USERHASH (§9.2.4, §14.4) ------------------------------------------------------------------


@pytest.mark.parametrize("sha256", [False, True])
def test_userhash_instead_of_username_authenticates_a_static_user(sha256: bool) -> None:
    """§9.2.4: USERHASH may replace USERNAME; the server maps it back to the user."""
    world = World()
    alice = world.client(userhash=True, sha256=sha256)
    reply = alice.allocate()
    assert error_code(reply) is None
    assert check_integrity(reply, alice.key())
    [alloc] = world.server.allocations.values()
    assert alloc.username == "alice"


def test_unknown_userhash_is_401() -> None:
    """§9.2.4: a USERHASH matching no user gets 401."""
    world = World()
    reply = world.client("nobody", "pw", userhash=True).allocate()
    assert_challenge(reply, 401)
    assert world.server.stats["auth_failure.unknown_userhash"] == 1


# --- REST ephemeral credentials (DESIGN.md "Authentication") ------------------------------------


def test_rest_credentials_allocate_and_are_accounted_under_their_id() -> None:
    """A minted REST credential authenticates; its id part tags the usage record."""
    world = World(secrets=["s3cret"])
    username, password = mint_rest_credentials("s3cret", world.now, 3600, "app-42")
    client = world.client(username, password)
    assert error_code(client.allocate()) is None
    ended = [
        a for a in world.server.kill(client.five_tuple, world.now) if type(a) is AllocationEnded
    ]
    assert [e.rest_id for e in ended] == ["app-42"]


def test_expired_rest_credentials_are_401() -> None:
    """A REST credential past its expiry is refused (401, counted as expired)."""
    world = World(secrets=["s3cret"])
    username, password = mint_rest_credentials("s3cret", world.now, 60)
    world.advance(120)
    reply = world.client(username, password).allocate()
    assert_challenge(reply, 401)
    assert world.server.stats["auth_failure.expired"] == 1


def test_rest_credentials_minted_with_an_older_secret_still_work() -> None:
    """Secrets rotate: every configured secret is tried, so the retiring one keeps working."""
    world = World(secrets=["newest", "older"])
    username, password = mint_rest_credentials("older", world.now, 3600, "x")
    assert error_code(world.client(username, password).allocate()) is None


def test_rest_credentials_of_an_unknown_secret_are_401() -> None:
    """A REST credential minted with a secret this server does not hold fails integrity."""
    world = World(secrets=["newest", "older"])
    username, password = mint_rest_credentials("stolen", world.now, 3600, "x")
    assert_challenge(world.client(username, password).allocate(), 401)
    assert world.server.stats["auth_failure.bad_integrity"] == 1


def test_revoked_user_is_401() -> None:
    """DESIGN.md: a revoked username is refused (401, counted as revoked)."""
    world = World()
    alice = world.client()
    alice.fetch_nonce()
    world.revoke("alice")
    assert_challenge(allocate_request(alice), 401)
    assert world.server.stats["auth_failure.revoked"] == 1


# --- signed responses and statelessness --------------------------------------------------------


def test_responses_to_authenticated_requests_verify_with_the_clients_key() -> None:
    """§9.2.4: success and error responses to authenticated requests are signed with its key."""
    world = World()
    alice = world.client()
    replies = [
        alice.allocate(),
        alice.create_permission(PEER),
        alice.channel_bind(0x4000, PEER),
        alice.refresh(),
        alice.allocate(),  # a second Allocate: 437, signed too
    ]
    assert [error_code(r) for r in replies] == [None, None, None, None, 437]
    for reply in replies:
        assert reply.cls in (MessageClass.SUCCESS, MessageClass.ERROR)
        assert reply.has(at.MessageIntegrity) and check_integrity(reply, alice.key())
        assert reply.has(at.Fingerprint)


def test_no_state_is_created_before_authentication() -> None:
    """§9.2.4, DESIGN.md: failed authentication leaves no allocation, counter, port or timer."""
    world = World()
    before = world.client_state()
    alice = world.client()
    alice.fetch_nonce()
    world.client("alice", "wrong").allocate()
    world.client("mallory", "pw", address=BOB_ADDRESS).allocate()
    bob = world.client("bob", "bob-pw", address=BOB_ADDRESS, nonce=alice.nonce, realm=REALM)
    allocate_request(bob)
    world.advance(DEFAULT_LIFETIME + 1)
    allocate_request(alice)
    assert world.client_state() == before
    assert world.server.stats["error.401"] == 5  # 1 + challenge and failure for 2 clients
    assert world.server.stats["error.438"] == 2


def test_revoked_user_loses_allocations_and_is_refused() -> None:
    """Revocation ends the user's allocations now and the next request gets 401 (revoked)."""
    world = World()
    alice = world.client()
    alice.allocate()
    bob = world.client("bob", "bob-pw", address=BOB_ADDRESS)
    bob.allocate()
    actions = world.server.revoke("alice", world.now)
    ended = [a for a in actions if isinstance(a, AllocationEnded)]
    assert [a.username for a in ended] == ["alice"] and ended[0].reason == "revoked"
    assert list(world.server.allocations) == [bob.five_tuple]
    assert error_code(alice.allocate()) == 401
    assert world.server.stats["auth_failure.revoked"] == 1
