"""Is this request a genuine Stripe event for this environment? (SPEC §2)

Pure: bytes, a header, the secrets and `now` in, a verified `Envelope` or a `Rejection`
out. No I/O and no clock of its own, so every refusal can be tested without a server.

The HMAC comparison is the `stripe` library's own (`WebhookSignature.verify_header`,
timing-safe). Before it, the header is parsed here only to tell the operator *which*
problem it is (missing, malformed, no v1, wrong secret, stale); the decision to accept is
always the library's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import orjson

# imported once: `stripe.X` resolves through the package's lazy module __getattr__ (an
# import_module call) on every access, which showed up in the per-request profile
from stripe import SignatureVerificationError, WebhookSignature

# SPEC §2: the event types the reward rules read. Other verified types are answered 200
# and not written, so the log holds only what a fold can use.
HANDLED_EVENT_TYPES = frozenset(
    {
        "charge.refunded",
        "charge.succeeded",
        "charge.updated",
        "customer.created",
        "customer.deleted",
        "customer.updated",
        "customer.subscription.created",
        "customer.subscription.deleted",
        "customer.subscription.updated",
        "invoice.paid",
        "invoice_payment.paid",
    }
)

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


def parse_signature_header(header: str | None) -> tuple[int, list[str], list[str]]:
    """(timestamp, v1 values, other schemes) of a `Stripe-Signature` header, or a Rejection."""
    if header is None or not header.strip():
        raise _bad(
            "missing_signature",
            "The request has no Stripe-Signature header. Only Stripe's webhook deliveries "
            "are accepted here: send events from the Stripe Dashboard or `stripe listen`, "
            "or sign test requests the way Stripe does.",
        )
    timestamp: int | None = None
    v1: list[str] = []
    others: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep or not key:
            continue
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                timestamp = None
        elif key == "v1":
            v1.append(value)
        else:
            others.append(key)
    if timestamp is None:
        raise _bad(
            "malformed_signature",
            "The Stripe-Signature header has no valid timestamp (expected "
            "`t=<unix seconds>,v1=<hex signature>`). Send the header exactly as Stripe "
            "computed it; a proxy may have altered it.",
        )
    if not v1:
        schemes = ", ".join(sorted(set(others))) or "none"
        raise _bad(
            "no_v1_signature",
            f"The Stripe-Signature header has no v1 signature (schemes present: {schemes}). "
            "refstream accepts only v1 (HMAC-SHA256) signatures, which Stripe sends on "
            "every live and test delivery; v0 is not checked.",
        )
    return timestamp, v1, others


def verify_signature(
    body: bytes,
    header: str | None,
    secrets: Sequence[str],
    *,
    env: str,
    now: float,
    tolerance_s: int,
) -> None:
    """Accept when any v1 value matches any configured secret and the time is fresh."""
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
            # below against the caller's clock, which keeps this function pure.
            WebhookSignature.verify_header(body, header, secret, tolerance=None)
        except SignatureVerificationError:
            continue
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


def check_envelope(body: bytes, *, env: str) -> Envelope:
    """The body must be a Stripe event object whose livemode matches the environment."""
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
    event_id = doc.get("id")
    if not isinstance(event_id, str) or not event_id.startswith("evt_"):
        raise _bad(
            "not_an_event",
            'The event has no "id" starting with "evt_". Send events as Stripe delivers them.',
        )
    event_type = doc.get("type")
    if not isinstance(event_type, str) or not event_type:
        raise _bad("not_an_event", 'The event has no "type" string. Send events as Stripe delivers them.')
    data = doc.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    if not isinstance(obj, dict):
        raise _bad(
            "not_an_event",
            'The event has no "data.object" object. Send events as Stripe delivers them.',
        )
    livemode = doc.get("livemode")
    expected = LIVEMODE[env]
    if not isinstance(livemode, bool):
        raise _bad(
            "not_an_event", 'The event has no boolean "livemode". Send events as Stripe delivers them.'
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
