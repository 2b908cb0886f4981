"""The wire shapes of the Stripe events the rules read, for msgspec's decoder (issue #15,
docs/performance.md#decoding-with-msgspec).

Each struct names only the fields `schemas/stripe.py`'s readers look at, with the types
those readers accept in the common case; msgspec skips every other field without building
it. A value of any other type (an int where a string is read, an expanded object where only
an id is expected, a bool for an int, an integer orjson would not read as an int) fails the
decode, and `parse_event` then runs the precise path, which gives the same record or the
same `StripeParseError`. So these shapes may be narrower than what the readers accept,
never wider: `_fast_event` in schemas/stripe.py maps them to the records and declines
whatever it cannot map exactly.

One pass: the envelope and its object are decoded together, the object's struct chosen by
its `object` field (a tagged union); an object without one, or of another kind, fails the
decode. The mapping checks that the kind is the one the event type promises.

Like schemas/stripe_records.py, this module is not compiled by mypyc (it would drop the
structs' options); schemas/_compiled.py lists it in IMPORTED.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import UNSET, Meta, Struct, UnsetType
from msgspec.json import Decoder

# orjson reads an integer outside [-2**63, 2**64 - 1] as a float, which the readers refuse:
# msgspec reads it as an int, so the wire types refuse it (and, as msgspec bounds must fit an
# int64, the rare integers above 2**63 - 1 too: the precise path reads those)
Int = Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]


class Ref(Struct, gc=False):
    """An id field sent expanded, as the object it names: only its `id` is read."""

    id: str


IdRef = str | Ref | None


class IdOf(Struct, gc=False):
    """An object read only for its id, where any id-less shape reads as none."""

    id: str | None = None


class Metadata(Struct, gc=False):
    cello_ucc: str | None = None
    new_user_id: str | None = None
    new_user_organization_id: str | None = None


class Customer(Struct, gc=False, tag_field="object", tag="customer"):
    id: str
    created: Int | None = None
    deleted: bool | None = None
    metadata: Metadata | None = None
    email: str | None = None


class Subscription(Struct, gc=False, tag_field="object", tag="subscription"):
    id: str
    customer: IdRef = None
    created: Int | None = None
    status: str | None = None
    canceled_at: Int | None = None
    ended_at: Int | None = None


class Period(Struct, gc=False):
    start: Int | None = None
    end: Int | None = None


class ItemDetails(Struct, gc=False):
    proration: bool | None = None


class LineParent(Struct, gc=False):
    type: str | None = None
    subscription_item_details: ItemDetails | None = None


class PriceDetails(Struct, gc=False):
    price: str | IdOf | None = None
    product: str | IdOf | None = None


class Pricing(Struct, gc=False):
    price_details: PriceDetails | None = None


class Price(Struct, gc=False):
    """An expanded price (or the older plan) of a line."""

    id: str | None = None
    product: str | IdOf | None = None


class Line(Struct, gc=False):
    amount: Int
    period: Period | None = None
    parent: LineParent | None = None
    type: str | None = None
    proration: bool | None = None
    pricing: Pricing | None = None
    price: str | Price | None = None
    plan: str | Price | None = None


class LineList(Struct, gc=False):
    data: list[Line]


class Transitions(Struct, gc=False):
    paid_at: Int | None = None


class SubscriptionDetails(Struct, gc=False):
    subscription: IdRef = None


class InvoiceParent(Struct, gc=False):
    type: str | None = None
    subscription_details: SubscriptionDetails | None = None


class PaymentRefs(Struct, gc=False):
    type: str | None = None
    charge: IdRef = None
    payment_intent: IdRef = None


class Payment(Struct, gc=False):
    status: str | None = None
    payment: PaymentRefs | None = None


class PaymentList(Struct, gc=False):
    data: list[Payment]


class Invoice(Struct, gc=False, tag_field="object", tag="invoice"):
    id: str
    created: Int
    currency: str
    amount_paid: Int
    status_transitions: Transitions | None = None
    parent: InvoiceParent | None = None
    subscription: IdRef = None
    payments: PaymentList | list[Payment] | None = None
    customer: IdRef = None
    total: Int | None = None
    total_excluding_tax: Int | None = None
    charge: IdRef = None
    payment_intent: IdRef = None
    lines: LineList | list[Line] | None = None


class Card(Struct, gc=False):
    fingerprint: str | None = None


class PaymentMethodDetails(Struct, gc=False):
    card: Card | None = None
    card_present: Card | None = None


class Charge(Struct, gc=False, tag_field="object", tag="charge"):
    id: str
    amount: Int
    created: Int
    currency: str
    amount_refunded: Int | None = None
    customer: IdRef = None
    # absent (2025-03-31 and later: unknown) and null (a one-off charge) read differently
    invoice: str | Ref | UnsetType | None = UNSET
    payment_intent: IdRef = None
    payment_method_details: PaymentMethodDetails | None = None


class InvoicePayment(Struct, gc=False, tag_field="object", tag="invoice_payment"):
    id: str
    payment: PaymentRefs | None = None
    invoice: IdRef = None
    created: Int | None = None
    status: str | None = None


class Dispute(Struct, gc=False, tag_field="object", tag="dispute"):
    id: str
    amount: Int
    currency: str
    status: str
    charge: IdRef = None
    payment_intent: IdRef = None
    created: Int | None = None


class Data(Struct, gc=False):
    object: Customer | Subscription | Invoice | Charge | InvoicePayment | Dispute


class Envelope(Struct, gc=False):
    id: str
    type: str
    created: Int
    data: Data
    object: Literal["event"] = "event"
    livemode: bool = False
    api_version: str | None = None


decode_event = Decoder(Envelope).decode
