"""Domain events between the stages (docs/design.md) and `Routed`, where a record goes.

The records themselves are in schemas/event_records.py (frozen msgspec structs, which
mypyc must not compile); this module re-exports them. Records travel between stages on
internal topics, so each has `encode`/`decode` with orjson and a version/type tag. Fields
are scalars only, so decoding is `cls(**fields)`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson

from schemas.event_records import (
    AttributionConflict,
    ChargeSeen,
    DisputeChanged,
    DisputeSeen,
    DisputeUpdate,
    DomainEvent,
    IdentityMatch,
    IdentitySeen,
    InvoicePaymentPaid,
    InvoiceSeen,
    OwnIdentity,
    Payment,
    PaymentLink,
    ReferrerEvent,
    Refund,
    Signup,
    SubscriptionEnded,
    UnlinkedRefund,
)

__all__ = [
    "CASES",
    "CUSTOMER",
    "INVOICE",
    "NOTIFICATIONS",
    "OUTPUTS",
    "PAYOUTS",
    "REFERRER",
    "REVIEWS",
    "STAGES",
    "VERSION",
    "AttributionConflict",
    "ChargeSeen",
    "DisputeChanged",
    "DisputeSeen",
    "DisputeUpdate",
    "DomainEvent",
    "EventDecodeError",
    "IdentityMatch",
    "IdentitySeen",
    "InvoicePaymentPaid",
    "InvoiceSeen",
    "OwnIdentity",
    "Payment",
    "PaymentLink",
    "ReferrerEvent",
    "Refund",
    "Routed",
    "Signup",
    "SubscriptionEnded",
    "UnlinkedRefund",
    "decode",
    "encode",
    "routed",
]

VERSION = 1

_TYPES: dict[str, type[Any]] = {
    cls.__name__: cls
    for cls in (
        Signup, Payment, Refund, UnlinkedRefund, SubscriptionEnded, AttributionConflict, DisputeChanged,
        InvoicePaymentPaid, InvoiceSeen, PaymentLink, ChargeSeen, DisputeSeen, DisputeUpdate,
        IdentitySeen, OwnIdentity, IdentityMatch,
    )
}
_FIELDS: dict[str, frozenset[str]] = {
    name: frozenset(cls.__struct_fields__) for name, cls in _TYPES.items()
}


# fields added after records of the type were first sent, and what an older record means
_ADDED: dict[str, dict[str, Any]] = {"Payment": {"plans": "", "amount": 0}}


class EventDecodeError(ValueError):
    pass


_ORDER: dict[type[Any], tuple[str, ...]] = {
    cls: tuple(cls.__struct_fields__) for cls in _TYPES.values()
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
