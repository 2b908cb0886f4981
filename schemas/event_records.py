"""The domain events between the stages (docs/design.md), as `schemas/events.py` encodes,
decodes and re-exports them.

They are frozen msgspec structs (issue #15, docs/performance.md#compiled-core): equal,
hashable and immutable like the frozen dataclasses they were, and about a tenth of the cost
to make (~70 ns against ~750 ns for a 13-field record), which the fold does several times
per event. Fields are scalars only (so `gc=False`). They live apart from `schemas/events.py`
because mypyc, which compiles that module, would drop their class options (`frozen`);
schemas/_compiled.py leaves this module out.
"""

from __future__ import annotations

from msgspec import Struct

# --- stage "customer" → stage "referrer" (key: ucc) --------------------------------------


class Signup(Struct, frozen=True, gc=False):
    """A customer attributed to `ucc`: the referral's signup (docs/rules.md#attribution)."""

    ucc: str
    referral_id: str
    customer_id: str
    signed_up_at: int  # the customer object's `created`
    event_id: str


class Payment(Struct, frozen=True, gc=False):
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


class Refund(Struct, frozen=True, gc=False):
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


class UnlinkedRefund(Struct, frozen=True, gc=False):
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


class SubscriptionEnded(Struct, frozen=True, gc=False):
    ucc: str
    referral_id: str
    customer_id: str
    subscription_id: str
    ended_at: int
    event_id: str


class AttributionConflict(Struct, frozen=True, gc=False):
    """A later event names another referrer for an attributed customer (docs/rules.md#attribution)."""

    ucc: str  # the referrer that keeps the attribution
    referral_id: str
    customer_id: str
    other_ucc: str
    created: int
    event_id: str


class DisputeChanged(Struct, frozen=True, gc=False):
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


class InvoicePaymentPaid(Struct, frozen=True, gc=False):
    """An `invoice_payment.paid` event: an invoice paid by a charge or payment intent."""

    invoice_id: str
    charge_id: str | None
    payment_intent_id: str | None
    event_id: str


class InvoiceSeen(Struct, frozen=True, gc=False):
    """stage "customer" → "invoice": this invoice belongs to this customer."""

    invoice_id: str
    customer_id: str


class PaymentLink(Struct, frozen=True, gc=False):
    """stage "invoice" → "customer": this charge / payment intent paid this invoice."""

    customer_id: str
    invoice_id: str
    charge_id: str | None
    payment_intent_id: str | None


class ChargeSeen(Struct, frozen=True, gc=False):
    """stage "customer" → "invoice" (key "charge:<id>"): this charge (or payment intent) paid
    a payment of this (attributed) customer, so its disputes concern the customer."""

    charge_id: str
    customer_id: str


class DisputeSeen(Struct, frozen=True, gc=False):
    """A `charge.dispute.*` event, on its way to the charge's customer (key "charge:<id>", sent
    for its charge and for its payment intent: the customer knows its payment by either)."""

    charge_id: str
    payment_intent_id: str | None
    dispute_id: str
    status: str
    amount: int
    created: int
    event_id: str


class DisputeUpdate(Struct, frozen=True, gc=False):
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


class IdentitySeen(Struct, frozen=True, gc=False):
    """An attributed customer's identity (a token of its e-mail address, or of a card it paid
    with: processors/rules/identity.py), as evidence about its referral."""

    identity: str
    ucc: str
    referral_id: str
    customer_id: str


class OwnIdentity(Struct, frozen=True, gc=False):
    """An identity of the referrer `ucc`'s own customer (linked by a ReferrerLink)."""

    identity: str
    ucc: str
    customer_id: str


class IdentityMatch(Struct, frozen=True, gc=False):
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
