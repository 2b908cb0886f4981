"""Is this request a genuine Stripe event for this environment? (docs/ingest.md#answers)

Pure: bytes, a header, the secrets and `now` in, a verified `Envelope` or a `Rejection`
out. No I/O and no clock of its own, so every refusal can be tested without a server.

The HMAC comparison is the `stripe` library's own (`WebhookSignature.verify_header`,
timing-safe). Before it, the header must match the grammar in SECURITY.md exactly (one
`t` of plain digits, `v1` values of 64 hex digits, nothing else loose), so that the
timestamp checked for freshness here is the one the library verifies; the decision that
the signature matches is always the library's.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

# imported once: `stripe.X` resolves through the package's lazy module __getattr__ (an
# import_module call) on every access, which showed up in the per-request profile
from stripe import SignatureVerificationError, WebhookSignature

from schemas.stripe import READ_TYPES, StripeParseError, read_envelope

# The event types the reward rules read (docs/rules.md#stripe-input). Other verified types
# are answered 200 and not written, so the log holds only what a fold can use.
HANDLED_EVENT_TYPES = READ_TYPES

LIVEMODE = {"sandbox": False, "production": True}


@dataclass(frozen=True, slots=True)
class Rejection(Exception):
    """A refusal worded for the person reading Stripe's delivery log: problem and fix."""

    status: int
    code: str
    message: str

    def body(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


@dataclass(frozen=True, slots=True)
class Envelope:
    """The parts of a verified event that ingest needs to file it."""

    event_id: str
    event_type: str
    key: str

    @property
    def handled(self) -> bool:
        return self.event_type in HANDLED_EVENT_TYPES


def _bad(code: str, message: str) -> Rejection:
    return Rejection(400, code, message)


# The Stripe-Signature grammar ingest accepts, stated in SECURITY.md ("Signature header").
# Stripe sends `t=<unix seconds>,v1=<64 hex>[,v1=…][,v0=<64 hex>]`; anything looser is refused
# before the `stripe` library sees it, because the library reads the FIRST `t` and `int()`
# takes "+1_7…", "٣" or 4,000 digits: the timestamp judged for freshness must be the one that
# is signed, and with exactly one plain `t` it is.
MAX_SIGNATURE_HEADER_CHARS = 1024
MAX_TIMESTAMP_DIGITS = 12
MAX_OTHER_VALUE_CHARS = 256
V1_HEX_CHARS = 64  # HMAC-SHA256, hex
_V1 = re.compile(f"[0-9a-fA-F]{{{V1_HEX_CHARS}}}")
_SCHEME = re.compile(r"[a-z][a-z0-9_]{0,15}")
_OTHER_VALUE = re.compile(f"[\\x21-\\x2b\\x2d-\\x7e]{{1,{MAX_OTHER_VALUE_CHARS}}}")  # visible ASCII but ","


def _malformed(problem: str) -> Rejection:
    # never echoes the header: it may carry a captured signature
    return _bad(
        "malformed_signature",
        f"The Stripe-Signature header is malformed: {problem}. Stripe sends exactly "
        "`t=<unix seconds>,v1=<64 hex digits>` (more `v1`, or a `v0`, may follow); see "
        "SECURITY.md for the grammar. Send the header exactly as Stripe computed it; a "
        "proxy may have altered it.",
    )


def parse_signature_header(header: str | None) -> tuple[int, list[str], list[str]]:
    """(timestamp, v1 values, other schemes) of a `Stripe-Signature` header, or a Rejection.

    The whole grammar is checked here (SECURITY.md); the HMAC itself is the library's.
    """
    if header is None or not header.strip():
        raise _bad(
            "missing_signature",
            "The request has no Stripe-Signature header. Only Stripe's webhook deliveries "
            "are accepted here: send events from the Stripe Dashboard or `stripe listen`, "
            "or sign test requests the way Stripe does.",
        )
    if len(header) > MAX_SIGNATURE_HEADER_CHARS:
        raise _malformed(f"it is longer than {MAX_SIGNATURE_HEADER_CHARS} characters")
    t_text: str | None = None
    v1: list[str] = []
    others: list[str] = []
    for position, item in enumerate(header.split(","), 1):
        key, sep, value = item.partition("=")
        if key == "t":
            if t_text is not None:
                raise _malformed("it has more than one `t`")
            t_text = value
        elif key == "v1":
            if not _V1.fullmatch(value):
                raise _malformed(f"a `v1` value is not {V1_HEX_CHARS} hex digits")
            v1.append(value)
        elif not sep or not _SCHEME.fullmatch(key) or not _OTHER_VALUE.fullmatch(value):
            raise _malformed(f"item {position} is not `scheme=value` (lowercase scheme, at most "
                             f"{MAX_OTHER_VALUE_CHARS} visible ASCII characters, no spaces)")
        else:
            others.append(key)
    if t_text is None:
        raise _malformed("it has no `t=` timestamp")
    if not (0 < len(t_text) <= MAX_TIMESTAMP_DIGITS and t_text.isascii() and t_text.isdigit()
            and t_text[0] != "0"):
        raise _malformed(f"its `t` is not 1 to {MAX_TIMESTAMP_DIGITS} ASCII digits without a "
                         "leading zero")
    if not v1:
        schemes = ", ".join(sorted(set(others))) or "none"
        raise _bad(
            "no_v1_signature",
            f"The Stripe-Signature header has no v1 signature (schemes present: {schemes}). "
            "refstream accepts only v1 (HMAC-SHA256) signatures, which Stripe sends on "
            "every live and test delivery; v0 is not checked.",
        )
    return int(t_text), v1, others


def verify_signature(
    body: bytes,
    header: str | None,
    secrets: Sequence[str],
    *,
    env: str,
    now: float,
    tolerance_s: int,
) -> None:
    """Accept when any v1 value matches any configured secret and the time is fresh.

    Fresh: within `tolerance_s` of `now`, in the past or (a clock ahead of ours) the future.
    """
    timestamp, _, _ = parse_signature_header(header)
    assert header is not None  # parse_signature_header refused a missing one
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad(
            "not_utf8",
            "The body is not UTF-8 text, so it cannot be a Stripe event. Send the event's "
            "JSON body unchanged.",
        ) from None
    matched = False
    for secret in secrets:
        try:
            # tolerance=None: the library checks only the signature; freshness is judged
            # below against the caller's clock, which keeps this function pure. The header
            # passed the grammar above, so the library reads the same single `t`.
            WebhookSignature.verify_header(body, header, secret, tolerance=None)
        except SignatureVerificationError:
            continue
        except (TypeError, ValueError, IndexError):  # pragma: no cover - the grammar rules these out
            raise _malformed("the signature library could not read it") from None
        matched = True
        break
    if not matched:
        raise _bad(
            "signature_mismatch",
            f"No v1 signature matches the signing secrets configured for {env!r}. Check "
            f"that REFSTREAM_STRIPE_SECRETS_{env.upper()} holds this endpoint's signing "
            "secret (Dashboard → Webhooks → endpoint → Signing secret, or the one "
            "`stripe listen` prints), and that the body reached refstream unchanged.",
        )
    if timestamp < now - tolerance_s:
        raise _bad(
            "stale_timestamp",
            f"The signature is valid but its timestamp is {int(now - timestamp)} s old, more "
            f"than the {tolerance_s} s tolerance; replayed deliveries are refused. If "
            "this is a genuine retry, check the clock of this server (NTP); Stripe signs "
            "every retry afresh.",
        )
    if timestamp > now + tolerance_s:
        raise _bad(
            "future_timestamp",
            f"The signature is valid but its timestamp is {int(timestamp - now)} s ahead of "
            f"this server's clock, more than the {tolerance_s} s tolerance. Check the clock "
            "of this server (NTP).",
        )


# Echoed in answers and logged at most this long: a signed event can carry a 100 KB `type`.
MAX_ECHO_CHARS = 64


def short(text: str) -> str:
    """`text` cut to MAX_ECHO_CHARS (with "…" when cut), for answers and log lines."""
    return text if len(text) <= MAX_ECHO_CHARS else text[: MAX_ECHO_CHARS - 1] + "…"


def check_envelope(body: bytes, *, env: str) -> Envelope:
    """The body must be a Stripe event object whose livemode matches the environment.

    The envelope fields are checked by the worker's own reader (`schemas.stripe.read_envelope`),
    so a signed event the worker would set aside for its envelope is refused here instead.
    """
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise _bad(
            "not_json",
            "The body is not valid JSON, so it is not a Stripe event. Send the event "
            "exactly as Stripe delivered it.",
        ) from None
    if not isinstance(doc, dict) or doc.get("object") != "event":
        raise _bad(
            "not_an_event",
            'The body is JSON but not a Stripe event object (expected "object": "event"). '
            "Point only Stripe webhook endpoints at refstream.",
        )
    try:
        event_id, event_type, _, _, _, obj = read_envelope(doc)
    except StripeParseError as exc:
        field = exc.path.removeprefix("$.")
        raise _bad(
            "not_an_event",
            f'The event\'s "{field}" field is missing or wrong ({exc.problem}); refstream '
            "needs it to process the event. Send events exactly as Stripe delivers them.",
        ) from None
    if not event_id.startswith("evt_"):
        raise _bad(
            "not_an_event",
            'The event has no "id" starting with "evt_". Send events as Stripe delivers them.',
        )
    livemode = doc.get("livemode")
    expected = LIVEMODE[env]
    if not isinstance(livemode, bool):  # read_envelope takes a missing one as false
        raise _bad(
            "not_an_event",
            'The event\'s "livemode" field is missing or wrong (expected true or false); '
            "refstream needs it to process the event. Send events exactly as Stripe delivers them.",
        )
    if livemode is not expected:
        right = "production" if livemode else "sandbox"
        raise _bad(
            "livemode_mismatch",
            f"This is a {'live' if livemode else 'test'}-mode event (livemode: "
            f"{'true' if livemode else 'false'}) sent to the {env!r} endpoint. Point the "
            f"Stripe endpoint of {'live' if livemode else 'test'} mode at "
            f"/webhooks/stripe/{right}; sandbox and production data never mix.",
        )
    return Envelope(event_id=event_id, event_type=event_type, key=record_key(event_type, obj, event_id))


def record_key(event_type: str, obj: dict[str, object], event_id: str) -> str:
    """The Stripe customer the event is about, so one customer's events stay in order."""
    customer = obj.get("customer")
    if isinstance(customer, dict):  # an expanded customer object
        customer = customer.get("id")
    if isinstance(customer, str) and customer:
        return customer
    object_id = obj.get("id")
    if isinstance(object_id, str) and object_id:
        # for customer.* events this is the customer's own id; otherwise (no customer,
        # e.g. an invoice_payment) the object's id keeps its events together
        return object_id
    return event_id
