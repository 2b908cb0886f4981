"""The records of the Stripe objects the reward rules read (docs/rules.md#stripe-input):
`StripeEvent` and the object it carries, as `schemas/stripe.py` reads them from a webhook
body (and re-exports them).

They are frozen msgspec structs (issue #15, docs/performance.md#stripe-records): equal,
hashable and immutable like the frozen dataclasses they replace, and several times cheaper
to make, which the fold does for every event. They live apart from `schemas/stripe.py`
because mypyc, which compiles that module, would drop their class options (`frozen`) and
replace their annotations; schemas/_compiled.py leaves this module out.
"""

from __future__ import annotations

from msgspec import Struct


class Customer(Struct, frozen=True, gc=False):
    id: str
    created: int | None  # absent on the bare `deleted_customer` object
    deleted: bool
    # metadata, trimmed; empty counts as missing (docs/rules.md#attribution)
    ucc: str | None
    new_user_id: str | None
    organization_id: str | None
    # identity evidence (docs/rules.md#fraud-signals): the stage that reads it keeps only a
    # keyed hash of it; None when absent or not a string
    email: str | None


class Subscription(Struct, frozen=True, gc=False):
    id: str
    customer: str | None
    created: int | None
    status: str | None
    canceled_at: int | None
    ended_at: int | None


class InvoiceLine(Struct, frozen=True, gc=False):
    amount: int
    period_start: int | None
    period_end: int | None
    subscription: bool  # a subscription item's line (not an invoice item)
    proration: bool
    price: str | None  # the Stripe price and product it bills (its plan: docs/rules.md#the-rules-file)
    product: str | None


class Invoice(Struct, frozen=True, gc=False):
    id: str
    customer: str | None
    created: int
    currency: str
    amount_paid: int
    total: int | None
    total_excluding_tax: int | None
    paid_at: int | None
    subscription: str | None
    charge: str | None  # before 2025-03-31
    payment_intent: str | None  # before 2025-03-31
    payment_charges: tuple[str, ...]  # from `payments` (2025-03-31 and later), when included
    payment_intents: tuple[str, ...]
    lines: tuple[InvoiceLine, ...]


class Charge(Struct, frozen=True, gc=False):
    id: str
    customer: str | None
    created: int
    currency: str
    amount: int
    amount_refunded: int
    invoice: str | None
    one_off: bool  # an explicit `"invoice": null` (docs/rules.md#rewards); absent (2025-03-31+) is unknown
    payment_intent: str | None
    # `payment_method_details.card.fingerprint` (or `card_present`'s): identity evidence, kept
    # only as a keyed hash by the stage that reads it (docs/rules.md#fraud-signals)
    card_fingerprint: str | None


class InvoicePayment(Struct, frozen=True, gc=False):
    id: str
    invoice: str
    created: int | None
    charge: str | None
    payment_intent: str | None
    status: str | None


class Dispute(Struct, frozen=True, gc=False):
    """A charge's dispute (docs/rules.md#disputes): it names its charge, never a customer."""

    id: str
    charge: str
    payment_intent: str | None
    created: int | None
    currency: str
    amount: int  # the disputed amount
    status: str  # warning_needs_response … needs_response, under_review, won, lost, …


StripeObject = Customer | Subscription | Invoice | Charge | InvoicePayment | Dispute


class StripeEvent(Struct, frozen=True, gc=False):
    id: str
    type: str
    created: int
    livemode: bool
    api_version: str | None
    object: StripeObject | None  # None for a type the rules do not read
    # the customer it is about (the log's key) is `schemas.stripe.customer_of(event)`: a
    # function in a compiled module, where a property on this Struct would stay interpreted
