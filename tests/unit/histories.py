"""Hypothesis strategies for coherent Stripe histories of one customer.

Coherent means what Stripe could send, in time order: the customer is created (with its
attribution, or attributed by a later update, or never), subscription snapshots, paid
invoices (monthly or annual, either API shape, linked to their charge in any of the ways
docs/rules.md lists), cumulative partial refunds, one-off charges, a cancellation after
the last invoice and a deletion at the end. Every event carries the customer's metadata as
it was at that time, as Stripe does. The tests then shuffle, duplicate and interleave them.

For the fraud signals a history can carry the customer's e-mail address (`email`), the
fingerprint of the card its charges are paid with (`card`), and with `charges=True` a
`charge.succeeded` for every paid invoice, so that the card shows on every payment.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

from processors.rules.money import DAY, add_months
from tests.unit.builders import (
    charge,
    customer,
    dispute,
    invoice_paid,
    invoice_payment_paid,
    refund,
    subscription,
    ts,
)

START = ts("2026-01-05")


@dataclass(frozen=True)
class History:
    customer_id: str
    ucc: str | None  # the attribution it was created with, or got
    other_ucc: str | None  # a conflicting attribution set later
    currency: str
    events: tuple[tuple[int, bytes], ...]  # (created, body), in time order

    @property
    def bodies(self) -> list[bytes]:
        return [b for _, b in self.events]


@st.composite
def histories(draw: st.DrawFn, cus: str = "cus_A", uccs: tuple[str, ...] = ("ucc_X", "ucc_Y"),
              user: str = "u1", currencies: tuple[str, ...] = ("usd", "eur", "gbp"),
              conflicts: bool = True, email: str | None = "someone@example.com", card: str | None = None,
              charges: bool = False) -> History:
    t0 = START + draw(st.integers(0, 60)) * DAY + draw(st.integers(0, DAY - 1))
    mode = draw(st.sampled_from(["at_creation", "at_creation", "late", "never"]))
    ucc = draw(st.sampled_from(uccs))
    currency = draw(st.sampled_from(currencies))
    events: list[tuple[int, bytes]] = []
    meta: list[tuple[int, str | None]] = []  # (from time, ucc) as the metadata changes

    def ucc_at(t: int) -> str | None:
        current = None
        for since, value in meta:
            if since <= t:
                current = value
        return current

    def cust(t: int, type_: str, deleted: bool = False) -> tuple[int, bytes]:
        u = ucc_at(t)
        return (t, customer(cus, t0, ucc=u, user=user if u else None, at=t, type_=type_, deleted=deleted,
                            email=email))

    other = None
    if mode == "at_creation":
        meta.append((t0, ucc))
        if conflicts and draw(st.booleans()):
            other = draw(st.sampled_from([u for u in uccs if u != ucc] or ["ucc_Z"]))
            # within late_attribution_days of the creation, so no timing judgement depends on it
            meta.append((t0 + draw(st.integers(1, 29 * DAY)), other))
    elif mode == "late":
        meta.append((t0 + draw(st.integers(1, 120)) * DAY, ucc))
    events.append(cust(t0, "customer.created"))
    for _ in range(draw(st.integers(0, 2))):  # updates (an email, say) in the first 30 days
        events.append(cust(t0 + draw(st.integers(1, 29 * DAY)), "customer.updated"))
    if mode == "late":
        events.append(cust(meta[0][0], "customer.updated"))
    if other is not None:
        events.append(cust(meta[1][0], "customer.updated"))

    end = t0
    for n_sub, plan in enumerate(draw(st.lists(st.sampled_from(["month", "year"]), max_size=2)), start=1):
        sub = f"sub_{cus}_{n_sub}"
        first = t0 + draw(st.integers(0, 40)) * DAY + 3600
        events.append((first, subscription(sub, cus, first, at=first, status="active",
                                           type_="customer.subscription.created")))
        months = 12 if plan == "year" else 1
        count = draw(st.integers(1, 2 if plan == "year" else 5))
        last = first
        for i in range(count):
            created = add_months(first, i * months)
            last = created
            inv = f"in_{sub}_{i}"
            ch = f"ch_{sub}_{i}"
            pi = f"pi_{sub}_{i}"
            amount = draw(st.integers(0, 40000))
            tax = draw(st.sampled_from([0, amount // 10, amount // 5]))
            paid_at = created + draw(st.integers(0, 3 * DAY))
            shape = draw(st.sampled_from(["old", "payments", "link_charge", "link_intent"]))
            events.append((paid_at, invoice_paid(
                inv, cus, created, amount_paid=amount, total=amount, total_excluding_tax=amount - tax,
                currency=currency, paid_at=paid_at, sub=sub, months=months,
                charge=ch if shape == "old" else None, new_shape=shape != "old",
                payments_charge=ch if shape == "payments" else None,
            )))
            if shape in ("link_charge", "link_intent"):
                events.append((paid_at, invoice_payment_paid(
                    inv, paid_at, charge=ch if shape == "link_charge" else None,
                    payment_intent=pi if shape == "link_intent" else None)))
            if charges and amount:
                events.append((paid_at, charge(
                    ch, cus, created, at=paid_at, amount=amount, currency=currency, card=card,
                    invoice=inv if shape == "old" else "<absent>",
                    payment_intent=pi if shape == "link_intent" else None)))
            refunded = 0
            at = paid_at
            for _ in range(draw(st.integers(0, 2)) if amount else 0):
                refunded = draw(st.integers(refunded + 1, amount)) if refunded < amount else amount
                at += draw(st.integers(1, 30 * DAY))  # cumulative amounts grow with time
                end = max(end, at)
                events.append((at, refund(
                    ch, cus, created, amount=amount, amount_refunded=refunded, at=at, currency=currency,
                    invoice=inv if shape == "old" else "<absent>",
                    payment_intent=pi if shape == "link_intent" else None, card=card,
                    type_=draw(st.sampled_from(["charge.refunded", "charge.updated"])))))
            # a dispute, often closed later; as Stripe allows, refunds and the disputed amount
            # together stay within the charge
            if amount > refunded and draw(st.integers(0, 3)) == 0:
                at = paid_at + draw(st.integers(1, 40 * DAY))
                disputed = draw(st.integers(1, amount - refunded))
                dp = f"dp_{ch}"
                intent = pi if shape == "link_intent" else None
                events.append((at, dispute(dp, ch, disputed, "needs_response", at, currency,
                                           payment_intent=intent)))
                closed = draw(st.sampled_from([None, "won", "lost"]))
                if closed:
                    at += draw(st.integers(1, 60 * DAY))
                    events.append((at, dispute(dp, ch, disputed, closed, at, currency,
                                               type_="charge.dispute.closed", payment_intent=intent)))
                end = max(end, at)
        end = max(end, last)
        if draw(st.booleans()):
            gone = last + draw(st.integers(1, 20)) * DAY
            end = max(end, gone)
            events.append((gone, subscription(sub, cus, first, at=gone, status="canceled", canceled_at=gone,
                                              ended_at=gone, type_="customer.subscription.deleted")))
    if draw(st.booleans()):  # a one-off charge
        at = t0 + draw(st.integers(1, 200)) * DAY
        end = max(end, at)
        amount = draw(st.integers(1, 20000))
        events.append((at, charge(f"ch_{cus}_once", cus, at, amount=amount, currency=currency, invoice=None,
                                  card=card)))
        if draw(st.booleans()):
            r_at = at + draw(st.integers(1, 30)) * DAY
            end = max(end, r_at)
            events.append((r_at, refund(f"ch_{cus}_once", cus, at, amount=amount,
                                        amount_refunded=draw(st.integers(1, amount)), at=r_at,
                                        currency=currency, invoice=None, card=card)))
    if draw(st.booleans()):
        gone = end + draw(st.integers(1, 30)) * DAY
        events.append(cust(gone, "customer.deleted", deleted=True))
    events.sort(key=lambda e: e[0])
    return History(cus, ucc if mode != "never" else None, other, currency, tuple(events))
