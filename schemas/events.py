"""Domain events between the stages (docs/design.md) and `Routed`, where a record goes.

Records travel between stages on internal topics, so each has `encode`/`decode` with
orjson and a version/type tag. Fields are scalars only, so decoding is `cls(**fields)`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, NamedTuple

import orjson

from schemas.frozen import fast_init

VERSION = 1

# --- stage "customer" → stage "referrer" (key: ucc) --------------------------------------


@fast_init
@dataclass(frozen=True, slots=True)
class Signup:
    """A customer attributed to `ucc`: the referral's signup (docs/rules.md#attribution)."""

    ucc: str
    referral_id: str
    customer_id: str
    signed_up_at: int  # the customer object's `created`
    event_id: str


@fast_init
@dataclass(frozen=True, slots=True)
class Payment:
    """An eligible-looking paid invoice (or one-off charge) of an attributed customer."""

    ucc: str
    referral_id: str
    customer_id: str
    payment_id: str  # invoice id, or the charge id of a one-off charge
    currency: str
    base: int  # amount_paid − tax
    created: int  # the invoice's `created`: decides the reward window
    earned_at: int  # status_transitions.paid_at, else created
    months: int  # N calendar months spanned by its subscription line (1 when not N ≥ 2)
    late: bool  # paid more than late_attribution_days before the attribution arrived
    event_id: str
    # the base split over the invoice's lines that name a Stripe price or product, as JSON
    # [[price, product, base], …] (the rest of the base earns at the campaign rate); "" when
    # no line names one (docs/rules.md#the-rules-file: plans)
    plans: str
    amount: int  # what the payment paid (amount_paid, or the one-off charge's amount); 0: unknown


@fast_init
@dataclass(frozen=True, slots=True)
class Refund:
    """A charge's cumulative refund, linked to its payment."""

    ucc: str
    referral_id: str
    customer_id: str
    payment_id: str
    charge_id: str
    amount: int
    amount_refunded: int  # cumulative
    created: int
    event_id: str


@fast_init
@dataclass(frozen=True, slots=True)
class UnlinkedRefund:
    """A refunded charge that no known payment links to (docs/rules.md#refunds-cancellation-and-deletion)."""

    ucc: str
    referral_id: str
    customer_id: str
    charge_id: str
    currency: str
    amount: int
    amount_refunded: int
    created: int
    event_id: str


@fast_init
@dataclass(frozen=True, slots=True)
class SubscriptionEnded:
    ucc: str
    referral_id: str
    customer_id: str
    subscription_id: str
    ended_at: int
    event_id: str


@fast_init
@dataclass(frozen=True, slots=True)
class AttributionConflict:
    """A later event names another referrer for an attributed customer (docs/rules.md#attribution)."""

    ucc: str  # the referrer that keeps the attribution
    referral_id: str
    customer_id: str
    other_ucc: str
    created: int
    event_id: str


@fast_init
@dataclass(frozen=True, slots=True)
class DisputeChanged:
    """A dispute of a rewarded (or yet to be rewarded) payment's charge changed status
    (docs/rules.md#disputes)."""

    ucc: str
    referral_id: str
    customer_id: str
    payment_id: str
    charge_id: str
    dispute_id: str
    status: str
    amount: int  # the disputed amount
    created: int
    event_id: str


# --- entry → stage "invoice" (key: invoice id, or "charge:<id>"), and back -----------------


@fast_init
@dataclass(frozen=True, slots=True)
class InvoicePaymentPaid:
    """An `invoice_payment.paid` event: an invoice paid by a charge or payment intent."""

    invoice_id: str
    charge_id: str | None
    payment_intent_id: str | None
    event_id: str


@fast_init
@dataclass(frozen=True, slots=True)
class InvoiceSeen:
    """stage "customer" → "invoice": this invoice belongs to this customer."""

    invoice_id: str
    customer_id: str


@fast_init
@dataclass(frozen=True, slots=True)
class PaymentLink:
    """stage "invoice" → "customer": this charge / payment intent paid this invoice."""

    customer_id: str
    invoice_id: str
    charge_id: str | None
    payment_intent_id: str | None


@fast_init
@dataclass(frozen=True, slots=True)
class ChargeSeen:
    """stage "customer" → "invoice" (key "charge:<id>"): this charge (or payment intent) paid
    a payment of this (attributed) customer, so its disputes concern the customer."""

    charge_id: str
    customer_id: str


@fast_init
@dataclass(frozen=True, slots=True)
class DisputeSeen:
    """A `charge.dispute.*` event, on its way to the charge's customer (key "charge:<id>", sent
    for its charge and for its payment intent: the customer knows its payment by either)."""

    charge_id: str
    payment_intent_id: str | None
    dispute_id: str
    status: str
    amount: int
    created: int
    event_id: str


@fast_init
@dataclass(frozen=True, slots=True)
class DisputeUpdate:
    """stage "invoice" → "customer": the latest state of a dispute of this customer's charge."""

    customer_id: str
    charge_id: str
    payment_intent_id: str | None
    dispute_id: str
    status: str
    amount: int
    created: int
    event_id: str


# --- identity evidence (docs/rules.md#fraud-signals): tokens only, never clear values ------
# stage "customer" → "invoice" (key "identity:<identity>"), the join of every customer that
# shows one identity; and back to the customer of a referral, which passes it to its referrer


@fast_init
@dataclass(frozen=True, slots=True)
class IdentitySeen:
    """An attributed customer's identity (a token of its e-mail address, or of a card it paid
    with: processors/rules/identity.py), as evidence about its referral."""

    identity: str
    ucc: str
    referral_id: str
    customer_id: str


@fast_init
@dataclass(frozen=True, slots=True)
class OwnIdentity:
    """An identity of the referrer `ucc`'s own customer (linked by a ReferrerLink)."""

    identity: str
    ucc: str
    customer_id: str


@fast_init
@dataclass(frozen=True, slots=True)
class IdentityMatch:
    """stage "invoice" → "customer" → "referrer": an identity of this referral's customer
    fires `signal`: `self_referral` (its referrer's own customer shows it too) or
    `shared_card` (the card pays for `referrals` referrals)."""

    customer_id: str
    ucc: str
    referral_id: str
    signal: str
    referrals: int  # shared_card: referrals the card pays for; 0 for self_referral


ReferrerEvent = (Signup | Payment | Refund | UnlinkedRefund | SubscriptionEnded | AttributionConflict
                 | DisputeChanged | IdentityMatch)
DomainEvent = (ReferrerEvent | InvoicePaymentPaid | InvoiceSeen | PaymentLink | ChargeSeen | DisputeSeen
               | DisputeUpdate | IdentitySeen | OwnIdentity)

_TYPES: dict[str, type[Any]] = {
    cls.__name__: cls
    for cls in (
        Signup, Payment, Refund, UnlinkedRefund, SubscriptionEnded, AttributionConflict, DisputeChanged,
        InvoicePaymentPaid, InvoiceSeen, PaymentLink, ChargeSeen, DisputeSeen, DisputeUpdate,
        IdentitySeen, OwnIdentity, IdentityMatch,
    )
}
_FIELDS: dict[str, frozenset[str]] = {
    name: frozenset(f.name for f in fields(cls)) for name, cls in _TYPES.items()
}


# fields added after records of the type were first sent, and what an older record means
_ADDED: dict[str, dict[str, Any]] = {"Payment": {"plans": "", "amount": 0}}


class EventDecodeError(ValueError):
    pass


_ORDER: dict[type[Any], tuple[str, ...]] = {
    cls: tuple(f.name for f in fields(cls)) for cls in _TYPES.values()
}


def encode(event: DomainEvent) -> bytes:
    # the fields from the slots, in declaration order (as `asdict` gives them, at several
    # times its speed); orjson writes nested records in that same order
    doc: dict[str, Any] = {"v": VERSION, "t": type(event).__name__}
    for name in _ORDER[type(event)]:
        doc[name] = getattr(event, name)
    return orjson.dumps(doc)


def decode(raw: bytes) -> DomainEvent:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise EventDecodeError(f"not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("v") != VERSION:
        raise EventDecodeError(f"not a version {VERSION} domain event")
    name = doc.pop("t", None)
    doc.pop("v")
    cls = _TYPES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise EventDecodeError(f"unknown domain event type {name!r}")
    for field_name, value in _ADDED.get(name, {}).items():
        doc.setdefault(field_name, value)  # a record sent by the release before the field
    if set(doc) != _FIELDS[name]:
        raise EventDecodeError(f"{name}: fields {sorted(doc)} do not match {sorted(_FIELDS[name])}")
    event: DomainEvent = cls(**doc)
    return event


# --- routing ------------------------------------------------------------------------------

# Destinations: the next stage, keyed by `key`, or an output topic (`key` = ucc, which
# also picks the output partition; a case state's Kafka key is its own id).
CUSTOMER = "customer"
INVOICE = "invoice"
REFERRER = "referrer"
PAYOUTS = "payouts"
NOTIFICATIONS = "notifications"
REVIEWS = "reviews"
CASES = "cases"  # CaseState records: the compacted review-cases topic
STAGES = (CUSTOMER, INVOICE, REFERRER)
OUTPUTS = (PAYOUTS, NOTIFICATIONS, REVIEWS, CASES)


class Routed(NamedTuple):
    """Where a produced record goes: `dest` (a stage or an output), keyed by `key`.

    An envelope made several times per event, so a NamedTuple (immutable, and several
    times cheaper to build than a frozen dataclass) rather than a record."""

    dest: str
    key: str
    record: Any


_tuple_new = tuple.__new__


def routed(dest: str, key: str, record: Any) -> Routed:
    """`Routed(dest, key, record)` without calling the NamedTuple's generated `__new__`, a
    Python function even in the compiled core: the fold makes several per event
    (docs/performance.md#compiled-core)."""
    return _tuple_new(Routed, (dest, key, record))
