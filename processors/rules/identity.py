"""Identity evidence as keyed hashes (docs/rules.md#fraud-signals).

The fraud signals compare a referred customer's e-mail address and the cards it paid with
against its referrer's own customer and against other referrals. They never compare, store
or send the clear values: the customer stage turns each into an *identity token* here, at
once, and only tokens travel in domain events, live in tables and case details.

A token is `e_` (an e-mail address) or `c_` (a card fingerprint) followed by the first 128
bits of HMAC-SHA256(key, kind ‖ value), in hex. The key is `REFSTREAM_IDENTITY_KEY`, handed
to the pure core with the rules (`RuleBook.identity_key`): the worker and `refstream replay`
must use the same key to agree. Without a key there are no tokens, so the signals that need
them (self-referral, shared card) cannot fire; a token says nothing without the key, and
one key's tokens never match another's.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
import hmac

EMAIL = "e_"
CARD = "c_"
_DIGEST_HEX = 32  # 128 bits: no two real identities of one programme collide

# providers whose addresses ignore dots in the local part, and their canonical domain
_DOTLESS = {"gmail.com": "gmail.com", "googlemail.com": "gmail.com"}


def normalise_email(raw: str) -> str | None:
    """The address as one person's mailbox: trimmed and lower case, without a `+tag` in
    the local part, and for Gmail without dots (and `googlemail.com` read as `gmail.com`).
    None when it is not an address (no single `@` with text on both sides)."""
    text = raw.strip().lower()
    local, at, domain = text.rpartition("@")
    if not at or not local or not domain or "@" in local or any(c.isspace() for c in text):
        return None
    local = local.split("+", 1)[0]
    canonical = _DOTLESS.get(domain)
    if canonical is not None:
        local = local.replace(".", "")
        domain = canonical
    if not local:
        return None
    return f"{local}@{domain}"


def token(key: bytes, kind: str, value: str) -> str:
    digest = hmac.new(key, f"{kind}\x1f{value}".encode(), hashlib.sha256).hexdigest()
    return kind + digest[:_DIGEST_HEX]


def email_token(key: bytes | None, email: str | None) -> str | None:
    """The token of an e-mail address; None without a key or a usable address."""
    if key is None or email is None:
        return None
    normal = normalise_email(email)
    return None if normal is None else token(key, EMAIL, normal)


def card_token(key: bytes | None, fingerprint: str | None) -> str | None:
    """The token of a card fingerprint (Stripe's, one per card number and account); None
    without a key or a fingerprint."""
    if key is None or fingerprint is None:
        return None
    return token(key, CARD, fingerprint)


def is_card(identity: str) -> bool:
    return identity.startswith(CARD)
