"""Sample Stripe webhook bodies: the worked example of docs/rules.md, a late attribution
that opens a review case, and a realistic programme.

Used by `refstream demo`, the pipeline tests and the pipeline benchmark. Every body is
what Stripe would send (both API shapes: before and after 2025-03-31), deterministic for
a given seed, with the fields the rules read and a few they ignore.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

OLD_API = "2024-06-20"
NEW_API = "2025-03-31.basil"
DAY = 86400


def ts(text: str) -> int:
    d = datetime.fromisoformat(text)
    return int((d if d.tzinfo else d.replace(tzinfo=UTC)).timestamp())


def _event(event_id: str, type_: str, obj: dict[str, Any], created: int, api: str = OLD_API) -> bytes:
    return orjson.dumps({
        "id": event_id, "object": "event", "api_version": api, "created": created,
        "data": {"object": obj}, "livemode": False, "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None}, "type": type_,
    })


def customer(event_id: str, cus: str, created: int, *, ucc: str | None, user: str | None,
             type_: str = "customer.created", at: int | None = None) -> bytes:
    meta = {k: v for k, v in (("cello_ucc", ucc), ("new_user_id", user)) if v is not None}
    obj = {"id": cus, "object": "customer", "created": created, "metadata": meta,
           "email": f"{cus}@example.com", "balance": 0, "livemode": False}
    return _event(event_id, type_, obj, created if at is None else at)


def invoice_paid(event_id: str, inv: str, cus: str, created: int, *, amount_paid: int, total: int,
                 total_excluding_tax: int, charge: str, sub: str | None = None, currency: str = "usd",
                 months: int = 1, new_shape: bool = False) -> bytes:
    from processors.rules.money import add_months

    period = {"start": created, "end": add_months(created, months)}
    obj: dict[str, Any] = {
        "id": inv, "object": "invoice", "customer": cus, "created": created, "currency": currency,
        "amount_paid": amount_paid, "amount_due": amount_paid, "status": "paid", "total": total,
        "total_excluding_tax": total_excluding_tax,
        "status_transitions": {"paid_at": created, "finalized_at": created}, "livemode": False,
    }
    if new_shape:
        line = {"id": f"il_{inv}", "object": "line_item", "amount": amount_paid, "currency": currency,
                "period": period,
                "parent": {"type": "subscription_item_details" if sub else "invoice_item_details",
                           "subscription_item_details": {"subscription": sub, "proration": False}
                           if sub else None}}
        obj["parent"] = {"type": "subscription_details" if sub else None,
                         "subscription_details": {"subscription": sub} if sub else None}
        obj["payments"] = {"object": "list", "data": [{
            "id": f"inpay_{inv}", "object": "invoice_payment", "status": "paid",
            "payment": {"type": "charge", "charge": charge}}]}
    else:
        line = {"id": f"il_{inv}", "object": "line_item", "amount": amount_paid, "currency": currency,
                "period": period, "type": "subscription" if sub else "invoiceitem", "proration": False}
        obj.update(subscription=sub, charge=charge, paid=True)
    obj["lines"] = {"object": "list", "data": [line], "has_more": False}
    return _event(event_id, "invoice.paid", obj, created, NEW_API if new_shape else OLD_API)


def charge_refunded(event_id: str, ch: str, cus: str, created: int, *, amount: int, amount_refunded: int,
                    invoice: str, at: int, currency: str = "usd") -> bytes:
    obj = {"id": ch, "object": "charge", "customer": cus, "created": created, "currency": currency,
           "amount": amount, "amount_refunded": amount_refunded, "amount_captured": amount, "paid": True,
           "refunded": amount_refunded >= amount, "status": "succeeded", "payment_intent": None,
           "invoice": invoice}
    return _event(event_id, "charge.refunded", obj, at)


def subscription_deleted(event_id: str, sub: str, cus: str, created: int, *, at: int) -> bytes:
    obj = {"id": sub, "object": "subscription", "customer": cus, "created": created, "status": "canceled",
           "canceled_at": at, "ended_at": at, "cancel_at_period_end": False}
    return _event(event_id, "customer.subscription.deleted", obj, at, NEW_API)


def worked_example() -> list[bytes]:
    """The worked example (docs/rules.md#worked-example): cus_A referred by ucc_X;
    an invoice (delivered twice), half refunded (twice)."""
    jan10 = ts("2026-01-10")
    return [
        customer("evt_demo_cus_A", "cus_A", jan10, ucc="ucc_X", user="u1"),
        invoice_paid("evt_demo_inv_A1", "in_A1", "cus_A", jan10 + 3600, amount_paid=11900, total=11900,
                     total_excluding_tax=10000, charge="ch_A1", sub="sub_A"),
        invoice_paid("evt_demo_inv_A1", "in_A1", "cus_A", jan10 + 3600, amount_paid=11900, total=11900,
                     total_excluding_tax=10000, charge="ch_A1", sub="sub_A"),
        charge_refunded("evt_demo_ref_A1", "ch_A1", "cus_A", jan10 + 3600, amount=11900,
                        amount_refunded=5950, invoice="in_A1", at=jan10 + 7200),
        charge_refunded("evt_demo_ref_A1b", "ch_A1", "cus_A", jan10 + 3600, amount=11900,
                        amount_refunded=5950, invoice="in_A1", at=jan10 + 7300),
    ]


WORKED_EXAMPLE_AS_OF = ts("2026-02-15")

LATE_UCC = "ucc_R"
LATE_REFERRED_AT = ts("2026-02-12")


def late_attribution_example() -> list[bytes]:
    """A review case: cus_R pays on 2026-01-06 with no referral on record and is attributed
    to ucc_R on 2026-02-12, 37 days later. With a late_attribution_days of 30 (the example
    rules) the payment is held and the referral paused in a late_attribution case until a
    person decides; approving releases a purchase bonus and the reward, rejecting voids the
    referral's unpaid rewards."""
    jan5 = ts("2026-01-05")
    return [
        customer("evt_demo_cus_R", "cus_R", jan5, ucc=None, user=None),
        invoice_paid("evt_demo_inv_R1", "in_R1", "cus_R", ts("2026-01-06"), amount_paid=11900, total=11900,
                     total_excluding_tax=10000, charge="ch_R1", sub="sub_R"),
        customer("evt_demo_cus_R_referred", "cus_R", jan5, ucc=LATE_UCC, user="u_r", type_="customer.updated",
                 at=LATE_REFERRED_AT),
    ]


@dataclass(frozen=True, slots=True)
class Programme:
    """A referral programme's month of activity: who referred whom, invoices, refunds."""

    referrers: int = 20
    customers: int = 60
    seed: int = 7
    start: int = ts("2026-01-05")


def programme(p: Programme = Programme()) -> Iterator[bytes]:
    """Customers signing up through referrers, paying monthly (some annual, in both API
    shapes), a few refunds, cancellations, a conflicting attribution and a large invoice."""
    rng = random.Random(p.seed)
    n = 0

    def eid() -> str:
        nonlocal n
        n += 1
        return f"evt_s{p.seed}_{n:07d}"

    for c in range(p.customers):
        cus = f"cus_s{p.seed}_{c:06d}"
        ucc = f"ucc_{p.seed}_{rng.randrange(p.referrers):04d}"
        created = p.start + rng.randrange(20 * DAY)
        yield customer(eid(), cus, created, ucc=ucc, user=f"u{p.seed}_{c}")
        annual = rng.random() < 0.15
        new_shape = rng.random() < 0.5
        sub = f"sub_{cus}"
        payments = 1 if annual else rng.randrange(1, 4)
        for i in range(payments):
            at = created + 600 + i * 30 * DAY
            amount = rng.choice([1900, 4900, 9900, 11900]) * (10 if annual else 1)
            if rng.random() < 0.02:
                amount = 300_000  # above review_above: a large_reward case
            excl = amount * 100 // 119 if rng.random() < 0.5 else amount
            inv, ch = f"in_{cus}_{i}", f"ch_{cus}_{i}"
            yield invoice_paid(eid(), inv, cus, at, amount_paid=amount, total=amount,
                               total_excluding_tax=excl, charge=ch, sub=sub, months=12 if annual else 1,
                               new_shape=new_shape)
            if rng.random() < 0.08:
                yield charge_refunded(eid(), ch, cus, at, amount=amount, amount_refunded=amount // 2,
                                      invoice=inv, at=at + 3 * DAY)
        if rng.random() < 0.1:
            yield subscription_deleted(eid(), sub, cus, created, at=created + 70 * DAY)
        if rng.random() < 0.03:
            other = f"ucc_{p.seed}_{rng.randrange(p.referrers):04d}"
            if other != ucc:
                yield customer(eid(), cus, created, ucc=other, user=f"u{p.seed}_{c}",
                               type_="customer.updated", at=created + 5 * DAY)


def customer_of(body: bytes) -> str:
    """The log key ingest would give the body (docs/design.md#topics-and-keys)."""
    obj = orjson.loads(body)["data"]["object"]
    if obj.get("object") == "customer":
        return str(obj["id"])
    return str(obj.get("customer") or obj["id"])
