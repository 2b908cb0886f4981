"""A realistic, reproducible Stripe event log for benchmarks (fold, replay, pipeline).

`Log(customers, referrers, seed)` plans every customer's year up front (signup with or
without a referral code, late attributions, monthly and annual plans, both API shapes,
charge / invoice / invoice_payment events per payment, refunds, cancellations, deletions,
one-off charges, a few unconfigured currencies) and keeps only a sorted schedule of
packed ints, so a million events cost tens of MB until they are rendered. `iter_log()`
renders them in time order as the raw bytes Stripe would send, with monthly payout runs
on the control topic merged in:

    for source, key, raw in Log(100_000, 10_000).iter_log():
        ...  # source is "stripe" (key: customer id) or "control" (key: run id)

Bodies carry the fields the rules read plus the usual envelope and a handful of fields
they ignore (about 1 KB, a trimmed version of what Stripe sends).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from processors.rules.money import DAY, add_months
from schemas import control

YEAR_START = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp())

# event kinds in the packed schedule (the order breaks ties at the same second)
CUSTOMER_CREATED, CUSTOMER_UPDATED, SUB_CREATED, CHARGE_SUCCEEDED, INVOICE_PAID, INVOICE_PAYMENT_PAID, \
    CHARGE_REFUNDED, SUB_DELETED, CUSTOMER_DELETED, ONE_OFF, ATTRIBUTED, PAYOUT_RUN = range(12)
_T_SHIFT, _C_SHIFT, _K_SHIFT = 30, 13, 8  # t | customer (17 bits) | kind (5) | index (8)
PRICES = (900, 1900, 2900, 4900, 9900, 19900)


@dataclass(frozen=True, slots=True)
class Plan:
    """One customer's year, drawn once; every event is rendered from it."""

    t0: int
    ucc: int  # referrer index, -1: never attributed
    attributed_at: int  # t0, or later (a late attribution by customer.updated)
    org: bool
    currency: str
    months: int  # 0: no subscription, 1: monthly, 12: annual
    payments: int
    first_payment: int
    price: int
    tax_percent: int
    new_api: bool
    refunds: int  # bit i: payment i is refunded (half, then all for odd i)
    cancelled: bool
    deleted: bool
    one_off: bool
    updates: int


class Log:
    def __init__(self, customers: int = 100_000, referrers: int = 10_000, seed: int = 7,
                 payout_runs: bool = True):
        if customers >= 1 << 17:
            raise ValueError("at most 131071 customers")
        self.customers = customers
        self.referrers = referrers
        rng = random.Random(seed)
        self.plans = [self._plan(rng) for _ in range(customers)]
        schedule: list[int] = []
        for c, p in enumerate(self.plans):
            schedule.extend(self._schedule(c, p))
        if payout_runs:
            for m in range(1, 25):
                t = add_months(YEAR_START, m)
                schedule.append(_pack(t, 0, PAYOUT_RUN, m))
        schedule.sort()
        self.schedule = schedule

    def __len__(self) -> int:
        return len(self.schedule)

    @property
    def stripe_events(self) -> int:
        return sum(1 for s in self.schedule if (s >> _K_SHIFT) & 31 != PAYOUT_RUN)

    def _plan(self, rng: random.Random) -> Plan:
        t0 = YEAR_START + rng.randrange(365 * DAY)
        r = rng.random()
        # popular referrers bring more customers: a skewed pick
        ucc = int(self.referrers * rng.random() ** 2) if r < 0.88 else -1
        late = r >= 0.80 and ucc >= 0
        attributed_at = t0 + (rng.randrange(2, 60) * DAY if late else 0)
        kind = rng.random()
        months = 1 if kind < 0.85 else 12 if kind < 0.95 else 0
        payments = (1 + min(11, int(rng.expovariate(1 / 2.6)))) if months == 1 else (
            rng.choice((1, 1, 2)) if months == 12 else 0)
        cur = rng.random()
        currency = "usd" if cur < 0.85 else "eur" if cur < 0.96 else "gbp"
        refunds = 0
        for i in range(payments):
            if rng.random() < 0.05:
                refunds |= 1 << i
        return Plan(
            t0=t0, ucc=ucc, attributed_at=attributed_at, org=rng.random() < 0.3, currency=currency,
            months=months, payments=payments, first_payment=t0 + rng.randrange(0, 14 * DAY) + 60,
            price=rng.choice(PRICES) * (10 if months == 12 else 1),
            tax_percent=rng.choice((0, 0, 10, 20)), new_api=rng.random() < 0.7, refunds=refunds,
            cancelled=months > 0 and rng.random() < 0.3, deleted=rng.random() < 0.03,
            one_off=rng.random() < 0.05, updates=rng.choice((0, 0, 1, 2)),
        )

    def _times(self, p: Plan) -> list[tuple[int, int, int]]:
        """(time, kind, index) of every event of the plan."""
        out = [(p.t0, CUSTOMER_CREATED, 0)]
        for i in range(p.updates):
            out.append((p.t0 + (i + 1) * 3 * DAY + 17, CUSTOMER_UPDATED, i))
        if p.attributed_at != p.t0:
            out.append((p.attributed_at, ATTRIBUTED, 0))
        last = p.t0
        if p.months:
            out.append((p.first_payment - 30, SUB_CREATED, 0))
            for i in range(p.payments):
                t = add_months(p.first_payment, i * p.months)
                last = t
                out += [(t, CHARGE_SUCCEEDED, i), (t + 2, INVOICE_PAID, i)]
                if p.new_api:
                    out.append((t + 3, INVOICE_PAYMENT_PAID, i))
                if p.refunds >> i & 1:
                    out.append((t + (5 + i % 20) * DAY, CHARGE_REFUNDED, i))
            if p.cancelled:
                last = add_months(p.first_payment, p.payments * p.months) - DAY
                out.append((last, SUB_DELETED, 0))
        if p.one_off:
            out.append((p.t0 + 40 * DAY, ONE_OFF, 0))
        if p.deleted:
            out.append((max(last, p.t0 + 40 * DAY) + 7 * DAY, CUSTOMER_DELETED, 0))
        return out

    def _schedule(self, c: int, p: Plan) -> list[int]:
        return [_pack(t, c, k, i) for t, k, i in self._times(p)]

    def iter_log(self) -> Iterator[tuple[str, str, bytes]]:
        for packed in self.schedule:
            t, c, k, i = _unpack(packed)
            if k == PAYOUT_RUN:
                run = control.PayoutRun(f"monthly-{i:02d}", t, t)
                yield "control", run.run_id, control.encode(run)
                continue
            yield "stripe", f"cus_{c:06d}", self.render(c, k, i, t)

    def stripe_log(self) -> Iterator[bytes]:
        """Only the stripe-events values, in log order."""
        for source, _, raw in self.iter_log():
            if source == "stripe":
                yield raw

    # --- rendering -----------------------------------------------------------------------

    def render(self, c: int, k: int, i: int, t: int) -> bytes:
        p = self.plans[c]
        cus = f"cus_{c:06d}"
        api = "2025-03-31.basil" if p.new_api else "2024-06-20"
        eid = f"evt_{c:06d}{k:02d}{i:03d}"
        if k in (CUSTOMER_CREATED, CUSTOMER_UPDATED, ATTRIBUTED, CUSTOMER_DELETED):
            attributed = p.ucc >= 0 and t >= p.attributed_at
            meta = {"cello_ucc": f"ucc_{p.ucc:05d}", "new_user_id": f"u{c}"} if attributed else {}
            if attributed and p.org:
                meta["new_user_organization_id"] = f"org{c // 3}"
            obj = {"id": cus, "object": "customer", "address": None, "balance": 0, "created": p.t0,
                   "currency": p.currency, "delinquent": False, "description": None,
                   "email": f"user{c}@example.com", "invoice_prefix": f"{c:07X}", "livemode": False,
                   "metadata": meta, "name": f"Customer {c}", "preferred_locales": [], "tax_exempt": "none"}
            if k == CUSTOMER_DELETED:
                obj["deleted"] = True
            typ = {CUSTOMER_CREATED: "customer.created", CUSTOMER_DELETED: "customer.deleted"}.get(
                k, "customer.updated")
            return _event(eid, typ, t, api, obj)
        sub = f"sub_{c:06d}"
        inv = f"in_{c:06d}_{i:02d}"
        ch = f"ch_{c:06d}_{i:02d}"
        pi = f"pi_{c:06d}_{i:02d}"
        amount = p.price + p.price * p.tax_percent // 100
        if k in (SUB_CREATED, SUB_DELETED):
            ended = k == SUB_DELETED
            obj = {"id": sub, "object": "subscription", "customer": cus, "created": p.first_payment - 30,
                   "currency": p.currency, "status": "canceled" if ended else "active",
                   "canceled_at": t if ended else None, "ended_at": t if ended else None,
                   "cancel_at_period_end": False, "collection_method": "charge_automatically",
                   "items": {"object": "list", "data": [{"id": f"si_{c:06d}", "object": "subscription_item",
                             "price": {"id": f"price_{p.price}", "unit_amount": p.price,
                                       "recurring": {"interval": "year" if p.months == 12 else "month",
                                                     "interval_count": 1}}}]},
                   "livemode": False, "metadata": {}}
            typ = "customer.subscription.deleted" if ended else "customer.subscription.created"
            return _event(eid, typ, t, api, obj)
        if k in (CHARGE_SUCCEEDED, CHARGE_REFUNDED, ONE_OFF):
            one_off = k == ONE_OFF
            if one_off:
                ch, amount = f"ch_{c:06d}_once", 4900
            refunded = (amount if i % 2 else amount // 2) if k == CHARGE_REFUNDED else 0
            obj = {"id": ch, "object": "charge", "amount": amount, "amount_captured": amount,
                   "amount_refunded": refunded, "balance_transaction": f"txn_{c:06d}_{i:02d}",
                   "captured": True, "created": t if k != CHARGE_REFUNDED else self._paid(p, i),
                   "currency": p.currency, "customer": cus, "description": None, "livemode": False,
                   "metadata": {}, "paid": True, "payment_intent": None if one_off else pi,
                   "payment_method": f"pm_{c:06d}", "refunded": refunded == amount,
                   "status": "succeeded",
                   "outcome": {"network_status": "approved_by_network", "risk_level": "normal",
                               "seller_message": "Payment complete.", "type": "authorized"}}
            if one_off or not p.new_api:
                obj["invoice"] = None if one_off else inv
            typ = "charge.refunded" if k == CHARGE_REFUNDED else "charge.succeeded"
            return _event(eid, typ, t, api, obj)
        if k == INVOICE_PAID:
            created = t - 2
            end = add_months(created, p.months)
            line = {"id": f"il_{c:06d}_{i:02d}", "object": "line_item", "amount": p.price,
                    "currency": p.currency, "description": "1 × Plan", "quantity": 1,
                    "period": {"start": created, "end": end}}
            obj = {"id": inv, "object": "invoice", "customer": cus, "created": created,
                   "currency": p.currency, "amount_due": amount, "amount_paid": amount, "amount_remaining": 0,
                   "billing_reason": "subscription_cycle" if i else "subscription_create",
                   "collection_method": "charge_automatically", "status": "paid",
                   "subtotal": p.price, "total": amount, "total_excluding_tax": p.price,
                   "status_transitions": {"finalized_at": created, "paid_at": t,
                                          "marked_uncollectible_at": None, "voided_at": None},
                   "lines": {"object": "list", "data": [line], "has_more": False}, "livemode": False,
                   "metadata": {}, "number": f"{c:07X}-{i:04d}"}
            if p.new_api:
                obj["parent"] = {"type": "subscription_details",
                                 "subscription_details": {"subscription": sub, "metadata": {}}}
                line["parent"] = {"type": "subscription_item_details",
                                  "subscription_item_details": {"subscription": sub, "proration": False,
                                                                "subscription_item": f"si_{c:06d}"}}
            else:
                obj.update(subscription=sub, charge=ch, payment_intent=pi, paid=True)
                line.update(type="subscription", proration=False, subscription=sub)
            return _event(eid, "invoice.paid", t, api, obj)
        if k == INVOICE_PAYMENT_PAID:
            obj = {"id": f"inpay_{c:06d}_{i:02d}", "object": "invoice_payment", "amount_paid": amount,
                   "amount_requested": amount, "created": t, "currency": p.currency, "invoice": inv,
                   "is_default": True, "livemode": False, "status": "paid",
                   "payment": {"type": "payment_intent", "payment_intent": pi},
                   "status_transitions": {"paid_at": t, "canceled_at": None}}
            return _event(eid, "invoice_payment.paid", t, api, obj)
        raise ValueError(f"unknown kind {k}")

    def _paid(self, p: Plan, i: int) -> int:
        return add_months(p.first_payment, i * p.months)


def _pack(t: int, c: int, k: int, i: int) -> int:
    return (t << _T_SHIFT) | (c << _C_SHIFT) | (k << _K_SHIFT) | i


def _unpack(v: int) -> tuple[int, int, int, int]:
    return v >> _T_SHIFT, (v >> _C_SHIFT) & 0x1FFFF, (v >> _K_SHIFT) & 31, v & 0xFF


def _event(eid: str, typ: str, t: int, api: str, obj: dict[str, object]) -> bytes:
    return orjson.dumps({
        "id": eid, "object": "event", "api_version": api, "created": t, "data": {"object": obj},
        "livemode": False, "pending_webhooks": 1,
        "request": {"id": f"req_{eid[4:]}", "idempotency_key": None}, "type": typ,
    })
