"""Stripe webhook bodies for tests, in both API shapes (before and after 2025-03-31).

Each builder returns the raw bytes Stripe would send, with the fields the rules read and
a few they ignore. Times are Unix seconds; `ts("2026-01-10")` reads a UTC date.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

import orjson

from processors.rules.money import add_months

OLD_API = "2024-06-20"
NEW_API = "2025-03-31.basil"
ABSENT = "<absent>"  # leave the key out, as API 2025-03-31+ does for `charge.invoice`
_seq = itertools.count(1)


def ts(text: str) -> int:
    """'2026-01-10' or '2026-01-10T12:00' in UTC → Unix seconds."""
    d = datetime.fromisoformat(text)
    if d.tzinfo is None:
        d = d.replace(tzinfo=UTC)
    return int(d.timestamp())


def event(type_: str, obj: dict[str, Any], created: int, *, event_id: str | None = None,
          api: str = OLD_API, previous: dict[str, Any] | None = None) -> bytes:
    data: dict[str, Any] = {"object": obj}
    if previous is not None:
        data["previous_attributes"] = previous
    return orjson.dumps({
        "id": event_id or f"evt_{next(_seq):06d}",
        "object": "event",
        "api_version": api,
        "created": created,
        "data": data,
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": type_,
    })


def customer(cus: str, created: int, *, ucc: str | None = None, user: str | None = None,
             org: str | None = None, at: int | None = None, type_: str = "customer.created",
             event_id: str | None = None, deleted: bool = False,
             email: str | None = "someone@example.com") -> bytes:
    meta: dict[str, str] = {}
    if ucc is not None:
        meta["cello_ucc"] = ucc
    if user is not None:
        meta["new_user_id"] = user
    if org is not None:
        meta["new_user_organization_id"] = org
    obj: dict[str, Any] = {
        "id": cus, "object": "customer", "created": created, "metadata": meta,
        "email": email, "balance": 0, "livemode": False,
    }
    if deleted:
        obj["deleted"] = True
    return event(type_, obj, created if at is None else at, event_id=event_id)


def invoice_paid(inv: str, cus: str, created: int, *, amount_paid: int, total: int | None = None,
                 total_excluding_tax: int | None = None, currency: str = "usd",
                 paid_at: int | None = None, sub: str | None = None, charge: str | None = None,
                 months: int = 1, new_shape: bool = False, payments_charge: str | None = None,
                 event_id: str | None = None, at: int | None = None, no_totals: bool = False,
                 lines: list[tuple[int, str | None, str | None]] | None = None) -> bytes:
    """`months` ≥ 2 gives a subscription line spanning that many calendar months;
    `no_totals` leaves out `total` and `total_excluding_tax`; `lines`: (amount, price,
    product) per line instead of one line of `amount_paid` billing no named price."""
    paid = created if paid_at is None else paid_at
    period = {"start": created, "end": add_months(created, months)}
    obj: dict[str, Any] = {
        "id": inv, "object": "invoice", "customer": cus, "created": created, "currency": currency,
        "amount_paid": amount_paid, "amount_due": amount_paid, "status": "paid",
        "total": amount_paid if total is None else total,
        "total_excluding_tax": (amount_paid if total is None else total)
        if total_excluding_tax is None else total_excluding_tax,
        "status_transitions": {"paid_at": paid, "finalized_at": created},
        "livemode": False,
    }
    if no_totals:
        del obj["total"], obj["total_excluding_tax"]
    if new_shape:
        line = {"id": f"il_{inv}", "object": "line_item", "amount": amount_paid, "currency": currency,
                "period": period,
                "parent": {"type": "subscription_item_details" if sub else "invoice_item_details",
                           "subscription_item_details": {"subscription": sub, "proration": False}
                           if sub else None}}
        obj["parent"] = {"type": "subscription_details" if sub else None,
                         "subscription_details": {"subscription": sub} if sub else None}
        if payments_charge:
            obj["payments"] = {"object": "list", "data": [{
                "id": f"inpay_{inv}", "object": "invoice_payment", "status": "paid",
                "payment": {"type": "charge", "charge": payments_charge}}]}
    else:
        line = {"id": f"il_{inv}", "object": "line_item", "amount": amount_paid, "currency": currency,
                "period": period, "type": "subscription" if sub else "invoiceitem", "proration": False}
        obj["subscription"] = sub
        obj["charge"] = charge
        obj["paid"] = True
    data = [line]
    if lines is not None:
        data = []
        for i, (amount, price, product) in enumerate(lines):
            one = {**line, "id": f"il_{inv}_{i}", "amount": amount}
            if new_shape:  # 2025-03-31+: pricing.price_details names them
                one["pricing"] = {"type": "price_details", "unit_amount_decimal": str(amount),
                                  "price_details": {"price": price, "product": product}}
            elif price is not None:  # before: an expanded price with its product
                one["price"] = {"id": price, "object": "price", "product": product, "unit_amount": amount}
            data.append(one)
    obj["lines"] = {"object": "list", "data": data, "has_more": False}
    return event("invoice.paid", obj, paid if at is None else at, event_id=event_id,
                 api=NEW_API if new_shape else OLD_API)


def charge(ch: str, cus: str, created: int, *, amount: int, amount_refunded: int = 0,
           currency: str = "usd", invoice: str | None = ABSENT,
           payment_intent: str | None = None, type_: str = "charge.succeeded", at: int | None = None,
           event_id: str | None = None, card: str | None = None) -> bytes:
    """`invoice=ABSENT` (the default) leaves the key out, as API 2025-03-31+ does; `card`: the
    fingerprint of the card it was paid with (none by default)."""
    obj: dict[str, Any] = {
        "id": ch, "object": "charge", "customer": cus, "created": created, "currency": currency,
        "amount": amount, "amount_refunded": amount_refunded, "amount_captured": amount,
        "paid": True, "refunded": amount_refunded >= amount, "status": "succeeded",
        "payment_intent": payment_intent,
    }
    if invoice != ABSENT:
        obj["invoice"] = invoice
    if card is not None:
        obj["payment_method_details"] = {"type": "card", "card": {
            "brand": "visa", "fingerprint": card, "last4": "4242", "exp_month": 8, "exp_year": 2030}}
    return event(type_, obj, created if at is None else at, event_id=event_id,
                 api=OLD_API if invoice != ABSENT else NEW_API)


def refund(ch: str, cus: str, created: int, *, amount: int, amount_refunded: int, at: int,
           invoice: str | None = ABSENT, payment_intent: str | None = None,
           currency: str = "usd", type_: str = "charge.refunded", event_id: str | None = None,
           card: str | None = None) -> bytes:
    return charge(ch, cus, created, amount=amount, amount_refunded=amount_refunded, currency=currency,
                  invoice=invoice, payment_intent=payment_intent, type_=type_, at=at, event_id=event_id,
                  card=card)


def subscription(sub: str, cus: str, created: int, *, at: int, status: str = "active",
                 canceled_at: int | None = None, ended_at: int | None = None,
                 type_: str = "customer.subscription.updated", event_id: str | None = None) -> bytes:
    obj = {"id": sub, "object": "subscription", "customer": cus, "created": created, "status": status,
           "canceled_at": canceled_at, "ended_at": ended_at, "cancel_at_period_end": False}
    return event(type_, obj, at, event_id=event_id, api=NEW_API)


def invoice_payment_paid(inv: str, at: int, *, charge: str | None = None,
                         payment_intent: str | None = None, event_id: str | None = None) -> bytes:
    payment: dict[str, Any] = {"type": "charge" if charge else "payment_intent"}
    if charge:
        payment["charge"] = charge
    if payment_intent:
        payment["payment_intent"] = payment_intent
    obj = {"id": f"inpay_{inv}_{charge or payment_intent}", "object": "invoice_payment", "invoice": inv,
           "created": at, "status": "paid", "is_default": True, "payment": payment,
           "status_transitions": {"paid_at": at}}
    return event("invoice_payment.paid", obj, at, event_id=event_id, api=NEW_API)


def dispute(dp: str, ch: str, amount: int, status: str, at: int, currency: str = "usd", *,
            type_: str = "charge.dispute.created", payment_intent: str | None = None) -> bytes:
    """A `charge.dispute.*` event: the dispute names its charge, never its customer."""
    return event(type_, {"id": dp, "object": "dispute", "charge": ch, "payment_intent": payment_intent,
                         "amount": amount, "currency": currency, "status": status, "created": at,
                         "reason": "fraudulent", "livemode": False}, at)
