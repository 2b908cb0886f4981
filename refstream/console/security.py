"""Sign-in, sessions and CSRF tokens for the console (docs/console.md#security).

- Sign-in compares the given token with REFSTREAM_CONSOLE_TOKEN in constant time, and
  takes the person's name: every control record the console appends names them as its
  actor.
- A session is a random id in a cookie (HttpOnly, SameSite=Strict, Path=/), kept in this
  process's memory only: restarting the console signs everyone out. Signing in replaces
  the visitor's session id, so an id seen before sign-in is worth nothing after it.
- Every session, signed in or not, has its own CSRF token; every form that changes
  something carries it in a hidden field and a POST without the right one is refused.
- Sessions end after `IDLE_S` without a request, or `MAX_S` after sign-in.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

COOKIE = "refstream_console"
IDLE_S = 2 * 3600
MAX_S = 12 * 3600
MIN_TOKEN_CHARS = 16
MAX_SESSIONS = 10_000  # anonymous sessions are cheap to make: the oldest go first past this


class TokenError(ValueError):
    """REFSTREAM_CONSOLE_TOKEN is missing or too weak: the message names the fix."""


def check_token(token: str | None) -> str:
    if token is None or not token.strip():
        raise TokenError(
            "REFSTREAM_CONSOLE_TOKEN is not set: the console needs a sign-in token. Set it to a long random "
            "value, e.g. `export REFSTREAM_CONSOLE_TOKEN=$(python3 -c 'import secrets; "
            "print(secrets.token_urlsafe(24))')`, and give it to the people who run the programme."
        )
    token = token.strip()
    if len(token) < MIN_TOKEN_CHARS:
        raise TokenError(
            f"REFSTREAM_CONSOLE_TOKEN has {len(token)} characters; use at least {MIN_TOKEN_CHARS} (a random "
            "value, e.g. from `python3 -c 'import secrets; print(secrets.token_urlsafe(24))'`)."
        )
    return token


def token_matches(given: str, expected: str) -> bool:
    """Constant-time, also for tokens of different lengths (both are hashed first)."""
    return hmac.compare_digest(hashlib.sha256(given.encode()).digest(),
                               hashlib.sha256(expected.encode()).digest())


@dataclass
class Session:
    sid: str
    csrf: str
    actor: str | None  # None until signed in
    created: float
    seen: float
    signed_in_at: float = 0.0

    @property
    def signed_in(self) -> bool:
        return self.actor is not None


class Sessions:
    """Sessions in memory, by id. `now` is passed in so tests can move the clock."""

    def __init__(self) -> None:
        self._by_id: dict[str, Session] = {}

    def _new(self, now: float, actor: str | None = None) -> Session:
        if len(self._by_id) >= MAX_SESSIONS:
            for sid in sorted(self._by_id, key=lambda s: self._by_id[s].seen)[: MAX_SESSIONS // 10]:
                del self._by_id[sid]
        s = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), actor, now, now,
                    now if actor is not None else 0.0)
        self._by_id[s.sid] = s
        return s

    def get(self, sid: str | None, now: float) -> Session | None:
        if not sid:
            return None
        s = self._by_id.get(sid)
        if s is None:
            return None
        expired = now - s.seen > IDLE_S or (s.signed_in and now - s.signed_in_at > MAX_S)
        if expired:
            del self._by_id[sid]
            return None
        s.seen = now
        return s

    def anonymous(self, now: float) -> Session:
        return self._new(now)

    def sign_in(self, old: Session | None, actor: str, now: float) -> Session:
        """A new session (new id, new CSRF token) for `actor`; the old one ends."""
        if old is not None:
            self._by_id.pop(old.sid, None)
        return self._new(now, actor)

    def end(self, s: Session) -> None:
        self._by_id.pop(s.sid, None)

    def __len__(self) -> int:
        return len(self._by_id)


def csrf_ok(session: Session | None, given: str | None) -> bool:
    if session is None or not given:
        return False
    return hmac.compare_digest(session.csrf.encode(), given.encode())


def clock() -> float:
    return time.time()


# what every answer carries: no framing, no sniffing, no referrer, nothing from elsewhere
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
