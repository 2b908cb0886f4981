"""Stage "invoice" (key: invoice id): joins an invoice's customer with what paid it.

Under API versions 2025-03-31 and later a charge no longer names its invoice; the link is
an `invoice_payment.paid` event, which names no customer. This stage waits for both
halves (in either order) and sends the customer stage a `PaymentLink` for each payment.
"""

from __future__ import annotations

from typing import NamedTuple

import orjson

from schemas.events import CUSTOMER, InvoicePaymentPaid, InvoiceSeen, PaymentLink, Routed
from schemas.rules import RuleBook

InvoiceMessage = InvoicePaymentPaid | InvoiceSeen


class InvoiceLinkState(NamedTuple):
    invoice_id: str
    customer_id: str | None
    # (charge id, payment intent id) pairs seen on invoice_payment.paid, in arrival order
    payments: tuple[tuple[str | None, str | None], ...]


def step(
    state: InvoiceLinkState | None, message: InvoiceMessage, rules: RuleBook
) -> tuple[InvoiceLinkState, list[Routed]]:
    if state is None:
        state = InvoiceLinkState(message.invoice_id, None, ())
    if isinstance(message, InvoiceSeen):
        if state.customer_id is not None:
            return state, []  # first customer wins; an invoice has one customer
        new = InvoiceLinkState(state.invoice_id, message.customer_id, state.payments)
        return new, [_link(new, p) for p in new.payments]
    pair = (message.charge_id, message.payment_intent_id)
    if pair in state.payments or pair == (None, None):
        return state, []
    new = InvoiceLinkState(state.invoice_id, state.customer_id, (*state.payments, pair))
    return new, [] if new.customer_id is None else [_link(new, pair)]


def _link(state: InvoiceLinkState, pair: tuple[str | None, str | None]) -> Routed:
    assert state.customer_id is not None
    return Routed(
        CUSTOMER, state.customer_id, PaymentLink(state.customer_id, state.invoice_id, pair[0], pair[1])
    )


def dumps(state: InvoiceLinkState) -> bytes:
    return orjson.dumps([state.invoice_id, state.customer_id, state.payments])


def loads(raw: bytes) -> InvoiceLinkState:
    invoice_id, customer_id, payments = orjson.loads(raw)
    return InvoiceLinkState(invoice_id, customer_id, tuple((c, p) for c, p in payments))
