"""Stage "invoice": the joins of facts that name no customer with the customer they concern.

- Key: invoice id. Under API versions 2025-03-31 and later a charge no longer names its
  invoice; the link is an `invoice_payment.paid` event, which names no customer. This stage
  waits for both halves (in either order) and sends the customer stage a `PaymentLink` for
  each payment.
- Key: "charge:<id>". A dispute names only its charge; the customer stage says which of its
  charges paid a payment (`ChargeSeen`). Either may come first; each dispute's latest state
  goes to the customer stage once both are known (docs/rules.md#disputes).
"""

from __future__ import annotations

from typing import NamedTuple

import orjson

from schemas.events import (
    CUSTOMER,
    ChargeSeen,
    DisputeSeen,
    DisputeUpdate,
    InvoicePaymentPaid,
    InvoiceSeen,
    PaymentLink,
    Routed,
)
from schemas.rules import RuleBook

InvoiceMessage = InvoicePaymentPaid | InvoiceSeen | ChargeSeen | DisputeSeen
CLOSED = ("won", "lost")


class InvoiceLinkState(NamedTuple):
    invoice_id: str
    customer_id: str | None
    # (charge id, payment intent id) pairs seen on invoice_payment.paid, in arrival order
    payments: tuple[tuple[str | None, str | None], ...]


class ChargeState(NamedTuple):
    charge_id: str
    customer_id: str | None
    disputes: dict[str, DisputeSeen]  # the latest state of each of its disputes


def _newer(new: DisputeSeen, old: DisputeSeen) -> bool:
    """Later `created` wins; at the same time a closed status beats an open one."""
    return (new.created, new.status in CLOSED) > (old.created, old.status in CLOSED)


def _update(customer: str, d: DisputeSeen) -> Routed:
    return Routed(CUSTOMER, customer, DisputeUpdate(
        customer, d.charge_id, d.payment_intent_id, d.dispute_id, d.status, d.amount, d.created, d.event_id))


def _charge_step(state: ChargeState | None, message: ChargeSeen | DisputeSeen
                 ) -> tuple[ChargeState, list[Routed]]:
    if state is None:
        state = ChargeState(message.charge_id, None, {})
    if isinstance(message, ChargeSeen):
        if state.customer_id is not None:
            return state, []  # a charge has one customer
        new = ChargeState(state.charge_id, message.customer_id, state.disputes)
        return new, [_update(message.customer_id, d) for _, d in sorted(state.disputes.items())]
    old = state.disputes.get(message.dispute_id)
    if old is not None and not _newer(message, old):
        return state, []  # a duplicate, or an older state arriving late
    new = ChargeState(state.charge_id, state.customer_id, {**state.disputes, message.dispute_id: message})
    return new, [] if new.customer_id is None else [_update(new.customer_id, message)]


def step(
    state: InvoiceLinkState | ChargeState | None, message: InvoiceMessage, rules: RuleBook
) -> tuple[InvoiceLinkState | ChargeState, list[Routed]]:
    if isinstance(message, ChargeSeen | DisputeSeen):
        assert state is None or isinstance(state, ChargeState)
        return _charge_step(state, message)
    assert state is None or isinstance(state, InvoiceLinkState)
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


def dumps(state: InvoiceLinkState | ChargeState) -> bytes:
    if isinstance(state, ChargeState):
        disputes = {k: [d.charge_id, d.payment_intent_id, d.status, d.amount, d.created, d.event_id]
                    for k, d in state.disputes.items()}
        return orjson.dumps(["charge", state.charge_id, state.customer_id, disputes])
    return orjson.dumps([state.invoice_id, state.customer_id, state.payments])


def loads(raw: bytes) -> InvoiceLinkState | ChargeState:
    row = orjson.loads(raw)
    if len(row) == 4 and row[0] == "charge":
        _, charge, customer, disputes = row
        return ChargeState(charge, customer, {
            k: DisputeSeen(v[0], v[1], k, *v[2:]) for k, v in disputes.items()})
    invoice_id, customer_id, payments = row
    return InvoiceLinkState(invoice_id, customer_id, tuple((c, p) for c, p in payments))
