"""Long-term credential keys, USERHASH and OpaqueString preparation.

Theory of operation
-------------------
RFC 8489 §9.2.2 derives the long-term HMAC key from three strings::

    key = H(username ":" OpaqueString(realm) ":" OpaqueString(password))

where H is MD5 (16-byte key) unless PASSWORD-ALGORITHM selects SHA-256 (32-byte key,
§18.5.1.2). The username is used as taken from the USERNAME attribute: the *client* has already
applied OpaqueString to it (§14.3), so the server does not prepare it again. Quotes and trailing
NULs are removed from username and realm, trailing NULs from the password (§9.2.2). RFC 5389
clients compute the same MD5 key; they prepared strings with SASLprep instead of OpaqueString,
which gives the same bytes for printable ASCII.

USERHASH (§14.4) is ``SHA-256(OpaqueString(username) ":" OpaqueString(realm))``.

OpaqueString is the PRECIS profile of RFC 8265 §4.2 over the FreeformClass of RFC 8264. It is
implemented here with the standard library only (``unicodedata``), which does not expose every
Unicode property PRECIS uses. What is approximated, and in which direction:

- Unicode version: whatever ``unicodedata.unidata_version`` the interpreter carries.
- Default_Ignorable_Code_Point and Hangul_Syllable_Type are tables copied from the Unicode
  Character Database (DerivedCoreProperties.txt, HangulSyllableType.txt) into this module.
- CONTEXTJ (ZERO WIDTH NON-JOINER/JOINER, RFC 5892 A.1/A.2): only the "after a virama" rule is
  implemented; the Arabic joining-type rule for ZWNJ needs Joining_Type data, so such strings are
  rejected (stricter than the profile).
- CONTEXTO rules that test the Script property (RFC 5892 A.4-A.7) use the character name as a
  stand-in for the script (a "GREEK ..." name is taken as Greek script, and so on).

Everything else (exceptions table, mapping of non-ASCII spaces, NFC, the category-based
derivation of RFC 8264 §8, the empty-string rule) follows the RFCs.

Note on RFC 8489 Appendix B.1 and RFC 5769 §2.4: their "processed" password "TheMatrIX" is the
*SASLprep* result of "The<U+00AD>M<U+00AA>tr<U+2168>". Under OpaqueString U+00AD (SOFT HYPHEN) is
a default-ignorable code point and therefore DISALLOWED, and U+00AA / U+2168 are kept as they
are (NFC, not NFKC), so ``opaque_string`` rejects that raw password. The keys in both vectors
are reproduced from the processed password.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Callable
from enum import Enum, IntEnum
from typing import Any

__all__ = [
    "KEY_LENGTHS",
    "PasswordAlgorithm",
    "long_term_key",
    "opaque_string",
    "unquote",
    "userhash",
]


class PasswordAlgorithm(IntEnum):
    """PASSWORD-ALGORITHM numbers (RFC 8489 §18.5)."""

    MD5 = 0x0001  # RFC 8489 §18.5.1.1
    SHA256 = 0x0002  # RFC 8489 §18.5.1.2


#: Key length in bytes for each algorithm (RFC 8489 §9.2.2: 16 bytes; §18.5.1.2: 32 bytes).
KEY_LENGTHS: dict[PasswordAlgorithm, int] = {
    PasswordAlgorithm.MD5: 16,
    PasswordAlgorithm.SHA256: 32,
}

_HASHES: dict[PasswordAlgorithm, Callable[[bytes], Any]] = {
    PasswordAlgorithm.MD5: lambda data: hashlib.md5(data, usedforsecurity=False),
    PasswordAlgorithm.SHA256: hashlib.sha256,
}


# --- PRECIS FreeformClass (RFC 8264 §8, §9) -------------------------------------------------


class _Property(Enum):
    """Derived property of one code point (RFC 8264 §8), reduced to what the profile needs."""

    ALLOWED = "allowed"  # PVALID or FREE_PVAL: FreeformClass accepts both
    CONTEXTJ = "contextj"
    CONTEXTO = "contexto"
    DISALLOWED = "disallowed"  # includes UNASSIGNED


_Ranges = tuple[tuple[int, int], ...]

# RFC 5892 §2.6 "Exceptions (F)", step 1 of the RFC 8264 §8 derivation.
_EXCEPTIONS: dict[int, _Property] = {
    **dict.fromkeys((0x00DF, 0x03C2, 0x06FD, 0x06FE, 0x0F0B, 0x3007), _Property.ALLOWED),
    **dict.fromkeys((0x00B7, 0x0375, 0x05F3, 0x05F4, 0x30FB), _Property.CONTEXTO),
    **dict.fromkeys(range(0x0660, 0x066A), _Property.CONTEXTO),
    **dict.fromkeys(range(0x06F0, 0x06FA), _Property.CONTEXTO),
    **dict.fromkeys((0x0640, 0x07FA, 0x302E, 0x302F, 0x303B), _Property.DISALLOWED),
    **dict.fromkeys(range(0x3031, 0x3036), _Property.DISALLOWED),
}

# RFC 8264 §9.9 OldHangulJamo: Hangul_Syllable_Type L, V or T (HangulSyllableType.txt).
_OLD_HANGUL_JAMO: _Ranges = (
    (0x1100, 0x11FF),
    (0xA960, 0xA97C),
    (0xD7B0, 0xD7C6),
    (0xD7CB, 0xD7FB),
)

# RFC 8264 §9.13 PrecisIgnorableProperties, first half: Default_Ignorable_Code_Point
# (DerivedCoreProperties.txt). The second half, Noncharacter_Code_Point, has category Cn.
_DEFAULT_IGNORABLE: _Ranges = (
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x061C, 0x061C),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x206F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
)

# General categories the FreeformClass allows once the earlier steps did not decide:
# LetterDigits (§9.1), OtherLetterDigits (§9.18), Spaces (§9.14), Symbols (§9.15),
# Punctuation (§9.16). Everything else (Cc, Cf, Co, Cs, Zl, Zp, ...) is DISALLOWED.
_FREEFORM_CATEGORIES = frozenset(
    {"Ll", "Lu", "Lo", "Nd", "Lm", "Mn", "Mc"}
    | {"Lt", "Nl", "No", "Me"}
    | {"Zs"}
    | {"Sm", "Sc", "Sk", "So"}
    | {"Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po"}
)

_ZWNJ, _ZWJ = 0x200C, 0x200D
_VIRAMA = 9  # canonical combining class of a virama (RFC 5892 A.1, A.2)


def _in_ranges(cp: int, ranges: _Ranges) -> bool:
    return any(low <= cp <= high for low, high in ranges)


def _freeform_property(char: str) -> _Property:
    """The FreeformClass property of one code point, in the order of RFC 8264 §8."""
    cp = ord(char)
    exception = _EXCEPTIONS.get(cp)  # step 1 (BackwardCompatible, step 2, is empty)
    if exception is not None:
        return exception
    category = unicodedata.category(char)
    if category == "Cn":  # step 3 Unassigned; also every Noncharacter_Code_Point (step 7)
        return _Property.DISALLOWED
    if 0x21 <= cp <= 0x7E:  # step 4 ASCII7
        return _Property.ALLOWED
    if cp in (_ZWNJ, _ZWJ):  # step 5 JoinControl
        return _Property.CONTEXTJ
    if _in_ranges(cp, _OLD_HANGUL_JAMO) or _in_ranges(cp, _DEFAULT_IGNORABLE):  # steps 6, 7
        return _Property.DISALLOWED
    if category == "Cc":  # step 8 Controls
        return _Property.DISALLOWED
    if unicodedata.normalize("NFKC", char) != char:  # step 9 HasCompat: FREE_PVAL
        return _Property.ALLOWED
    if category in _FREEFORM_CATEGORIES:  # steps 10-14
        return _Property.ALLOWED
    return _Property.DISALLOWED  # step 15


def _name(char: str) -> str:
    """The Unicode name of ``char``; "" for no character (start or end of the string)."""
    return unicodedata.name(char, "") if char else ""


def _is_han_kana(char: str) -> bool:
    """Approximates Script in {Hiragana, Katakana, Han} by the character name (RFC 5892 A.7)."""
    if char == "\u30fb":  # KATAKANA MIDDLE DOT itself has Script=Common
        return False
    return _name(char).startswith(
        (
            "HIRAGANA",
            "KATAKANA",
            "HALFWIDTH KATAKANA",
            "CJK UNIFIED IDEOGRAPH",
            "CJK COMPATIBILITY IDEOGRAPH",
        )
    )


def _context_allows(text: str, index: int) -> bool:
    """The contextual rules of RFC 5892 Appendix A for text[index] (CONTEXTJ or CONTEXTO)."""
    cp = ord(text[index])
    before = text[index - 1] if index > 0 else ""
    after = text[index + 1] if index + 1 < len(text) else ""
    if cp in (_ZWNJ, _ZWJ):  # A.1, A.2 (joining-type rule of A.1 not implemented)
        return before != "" and unicodedata.combining(before) == _VIRAMA
    if cp == 0x00B7:  # A.3 MIDDLE DOT: between two 'l'
        return before == "l" and after == "l"
    if cp == 0x0375:  # A.4 GREEK LOWER NUMERAL SIGN: followed by Greek
        return _name(after).startswith("GREEK")
    if cp in (0x05F3, 0x05F4):  # A.5, A.6 HEBREW GERESH/GERSHAYIM: preceded by Hebrew
        return _name(before).startswith("HEBREW")
    if cp == 0x30FB:  # A.7 KATAKANA MIDDLE DOT: some Hiragana, Katakana or Han in the string
        return any(_is_han_kana(char) for char in text)
    if 0x0660 <= cp <= 0x0669:  # A.8 ARABIC-INDIC DIGITS: no EXTENDED ARABIC-INDIC DIGIT
        return not any(0x06F0 <= ord(char) <= 0x06F9 for char in text)
    # A.9 EXTENDED ARABIC-INDIC DIGITS (06F0..06F9, the only CONTEXTO left): no ARABIC-INDIC
    return not any(0x0660 <= ord(char) <= 0x0669 for char in text)


def opaque_string(value: str) -> str:
    """Enforce the OpaqueString profile (RFC 8265 §4.2.2) and return the prepared string.

    Rules applied in the order of RFC 8264 §7: non-ASCII spaces become U+0020 (RFC 8265 §4.2.1
    additional mapping rule), no width or case mapping, NFC; then every code point must be
    allowed by the FreeformClass (RFC 8264 §4.3), contextual code points must satisfy their
    RFC 5892 rule, and the result must not be empty (RFC 8265 §4.2.2). Raises ValueError
    otherwise; the message names the position and category, never the string itself, since the
    string may be a password. See the module docstring for what is approximated.
    """
    mapped = "".join(
        " " if char != " " and unicodedata.category(char) == "Zs" else char for char in value
    )
    prepared = unicodedata.normalize("NFC", mapped)
    if not prepared:
        raise ValueError("OpaqueString: the string is empty")
    for index, char in enumerate(prepared):
        prop = _freeform_property(char)
        if prop is _Property.ALLOWED:
            continue
        category = unicodedata.category(char)
        if prop is _Property.DISALLOWED:
            raise ValueError(
                f"OpaqueString: disallowed code point at position {index} (category {category})"
            )
        if not _context_allows(prepared, index):
            raise ValueError(
                f"OpaqueString: code point at position {index} (category {category}) "
                "is not allowed in this context"
            )
    return prepared


# --- Keys -------------------------------------------------------------------------------------


def unquote(value: str) -> str:
    """Remove trailing NULs, then one pair of enclosing double quotes (RFC 8489 §9.2.2).

    §9.2.2 forms the key from the username and realm "with any quotes and trailing nulls
    removed"; the quotes are those of the quoted-string form inherited from HTTP digest.
    """
    value = value.rstrip("\x00")
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        return value[1:-1]
    return value


def long_term_key(
    username: str,
    realm: str,
    password: str,
    algorithm: PasswordAlgorithm = PasswordAlgorithm.MD5,
) -> bytes:
    """The long-term credential HMAC key (RFC 8489 §9.2.2, §18.5.1).

    ``username`` is used as received in USERNAME (already OpaqueString-prepared by the client,
    §14.3); ``realm`` and ``password`` are prepared with OpaqueString here. Returns 16 bytes
    for MD5 and 32 bytes for SHA-256. Raises ValueError for an unknown algorithm or for a realm
    or password the OpaqueString profile rejects.
    """
    hash_of = _HASHES[PasswordAlgorithm(algorithm)]
    text = ":".join(
        (
            unquote(username),
            opaque_string(unquote(realm)),
            opaque_string(password.rstrip("\x00")),
        )
    )
    digest: bytes = hash_of(text.encode("utf-8")).digest()
    return digest


def userhash(username: str, realm: str) -> bytes:
    """The USERHASH value: SHA-256(OpaqueString(username) ":" OpaqueString(realm)) (§14.4)."""
    text = f"{opaque_string(username)}:{opaque_string(realm)}"
    return hashlib.sha256(text.encode("utf-8")).digest()
