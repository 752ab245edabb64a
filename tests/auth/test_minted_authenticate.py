"""Every credential turnd mints is one its own authenticator accepts (issue 20, item 17)."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from auth.credentials import Authenticator, mint_rest_credentials
from stun.keys import PasswordAlgorithm, long_term_key

REALM = "turn.example.org"
NOW = 1_700_000_000.0
SECRET = b"the secret that mints"


def _accepted(username: str, password: str) -> bool:
    """Whether the authenticator derives the key a client with this pair derives."""
    lookup = Authenticator.create(REALM, rest_secrets=(SECRET,)).lookup(
        username, REALM, PasswordAlgorithm.MD5, NOW
    )
    return long_term_key(username, REALM, password, PasswordAlgorithm.MD5) in lookup.keys


@given(ttl=st.integers(min_value=-10, max_value=10**14), ident=st.text(max_size=600))
@example(ttl=10**13, ident="")
@example(ttl=60, ident="a\x00")
@example(ttl=60, ident='a"')
@example(ttl=60, ident="caf\u00e9:x:y")
@example(ttl=60, ident="x" * 600)
def test_every_minted_credential_authenticates(ttl: int, ident: str) -> None:
    """mint_rest_credentials refuses with ValueError or returns a pair the authenticator takes."""
    try:
        username, password = mint_rest_credentials(SECRET, NOW, ttl, ident)
    except ValueError:
        return
    assert _accepted(username, password), (username, ttl, ident)


@pytest.mark.parametrize("ident", ["alice", "key:app-7", "caf\u00e9", "a:b:c", "\u4e2d\u6587"])
def test_usual_identifiers_mint_and_authenticate(ident: str) -> None:
    """Ordinary ids, with colons and non-ASCII letters, mint a working credential."""
    assert _accepted(*mint_rest_credentials(SECRET, NOW, 86_400, ident))


@pytest.mark.parametrize("ttl", [0, -1, 10**13])
def test_ttl_that_cannot_give_a_valid_expiry_is_refused(ttl: int) -> None:
    """A ttl that is not positive, or whose expiry has more digits than a REST username may, is
    refused at minting instead of yielding a username turnd calls malformed."""
    with pytest.raises(ValueError, match="ttl"):
        mint_rest_credentials(SECRET, NOW, ttl, "")
