"""Stage "customer" (key: Stripe customer id): what one customer's events mean.

Attribution (first wins, immutable), subscription snapshots, deletion, charge→invoice
links, cumulative refunds, and payments held until the attribution arrives. It sends
domain events to stage "referrer" (key: ucc) and asks stage "invoice" to join
`invoice_payment.paid` links. Rewards, caps and money live in the referrer stage.

Identity evidence (docs/rules.md#fraud-signals): the customer's e-mail address and the
fingerprints of the cards it pays with become keyed tokens here, at once
(processors/rules/identity.py), and only the tokens go on: to the identity joins of stage
"invoice" (key "identity:<token>"), as a referral's evidence once the customer is
attributed, and as its referrer's own once a ReferrerLink names it. What a join finds comes
back here and goes on to the referrer.
"""

from __future__ import annotations

from typing import NamedTuple, cast

import orjson

from processors.rules.identity import card_token, email_token
from processors.rules.money import DAY, months_spanned, split
from schemas.control import ReferrerLink
from schemas.events import (
    INVOICE,
    REFERRER,
    AttributionConflict,
    ChargeSeen,
    DisputeChanged,
    DisputeUpdate,
    IdentityMatch,
    IdentitySeen,
    InvoiceSeen,
    OwnIdentity,
    Payment,
    PaymentLink,
    Refund,
    Routed,
    Signup,
    SubscriptionEnded,
    UnlinkedRefund,
    routed,
)
from schemas.rules import RuleBook, Rules
from schemas.stripe import Charge, Customer, Invoice, StripeEvent, Subscription, customer_of

CustomerMessage = StripeEvent | PaymentLink | DisputeUpdate | IdentityMatch | ReferrerLink


class HeldPayment(NamedTuple):
    """A payment seen before the customer was attributed (or before it could be judged)."""

    payment_id: str
    currency: str
    base: int
    created: int
    earned_at: int
    months: int
    subscription: str | None
    event_id: str
    plans: str = ""  # Payment.plans: the base per line naming a price or product
    amount: int = 0  # what it paid (amount_paid, or the charge's amount)


class PendingRefund(NamedTuple):
    """A charge's largest cumulative refund seen, waiting for attribution or a link."""

    amount: int
    amount_refunded: int
    payment_intent: str | None
    currency: str
    created: int
    event_id: str


class SubscriptionSnapshot(NamedTuple):
    snapshot_at: int  # the event `created` of the snapshot kept (latest wins)
    ended_at: int | None  # when it ended, if the kept snapshot says it did
    ended_by: str | None  # the event that said so
    reported: bool  # recurring_rewards_cancelled already sent


class CustomerState(NamedTuple):
    customer_id: str
    created: int | None = None  # the customer object's `created`: the signup time
    ucc: str | None = None
    referral_id: str | None = None
    attributed_at: int | None = None  # earliest `created` of the events carrying it
    conflicts: tuple[str, ...] = ()  # other uccs already sent to review
    deleted_at: int | None = None
    subscriptions: dict[str, SubscriptionSnapshot] | None = None
    links: dict[str, str] | None = None  # charge / payment intent id → payment id
    one_offs: tuple[str, ...] = ()  # charges with an explicit `"invoice": null`
    # by charge id: each larger cumulative refund seen while the charge waits for its
    # customer's attribution or its link, in order, so that the link or the attribution
    # sends the very steps the refunds would have made had it been there first
    pending_refunds: dict[str, tuple[PendingRefund, ...]] | None = None
    held: tuple[HeldPayment, ...] = ()
    late: tuple[HeldPayment, ...] = ()  # sent as late: revisited if attributed_at moves earlier
    # charges that paid one of its payments: their disputes concern it (docs/rules.md#disputes)
    charges: tuple[str, ...] = ()
    disputes: dict[str, DisputeUpdate] | None = None  # disputes waiting for their charge's link
    # identity tokens of its e-mail addresses and cards, in the order first seen
    # (docs/rules.md#fraud-signals); never the clear values
    identities: tuple[str, ...] = ()
    owns: tuple[str, ...] = ()  # the referrers (uccs) whose own customer it is (ReferrerLink)


# `s._replace(<field>=value)` for the fields most events set, without `_replace`'s keyword
# handling (about five times the work of building the tuple itself)
_new = tuple.__new__
_CREATED = CustomerState._fields.index("created")
_SUBSCRIPTIONS = CustomerState._fields.index("subscriptions")
_LINKS = CustomerState._fields.index("links")
_ATTRIBUTED_AT = CustomerState._fields.index("attributed_at")
_CHARGES = CustomerState._fields.index("charges")
_CONFLICTS = CustomerState._fields.index("conflicts")
_DELETED_AT = CustomerState._fields.index("deleted_at")
_DISPUTES = CustomerState._fields.index("disputes")
_HELD = CustomerState._fields.index("held")
_IDENTITIES = CustomerState._fields.index("identities")
_LATE = CustomerState._fields.index("late")
_ONE_OFFS = CustomerState._fields.index("one_offs")
_OWNS = CustomerState._fields.index("owns")
_PENDING_REFUNDS = CustomerState._fields.index("pending_refunds")


def _set(s: CustomerState, index: int, value: object) -> CustomerState:
    return _new(CustomerState, (*s[:index], value, *s[index + 1:]))


def step(
    state: CustomerState | None, message: CustomerMessage, rules: RuleBook
) -> tuple[CustomerState, list[Routed]]:
    if not isinstance(rules, RuleBook):  # transition: the shell still passes one Rules
        rules = RuleBook.of(rules)
    if type(message) is PaymentLink:  # exact classes: see the dispatch below
        if state is None:
            state = CustomerState(message.customer_id)
        return _on_link(state, message, rules)
    if type(message) is DisputeUpdate:
        return _on_dispute(state or CustomerState(message.customer_id), message)
    if type(message) is not StripeEvent:  # one check on the way of every Stripe event
        if type(message) is IdentityMatch:
            # what an identity join found about this customer's referral: its referrer decides
            return state or CustomerState(message.customer_id), [routed(REFERRER, message.ucc, message)]
        own = cast(ReferrerLink, message)
        return _on_own(state or CustomerState(own.customer_id), own)
    obj = message.object
    key = customer_of(message)
    if key is None or obj is None:
        raise ValueError(f"event {message.id} ({message.type}) is not about a customer")
    if state is None:
        state = CustomerState(key)
    out: list[Routed] = []
    # `type(obj) is`: the parsers build exactly these classes, and a failed isinstance against
    # a msgspec Struct class is slow (docs/performance.md#compiled-core)
    if type(obj) is Customer:
        state = _on_customer(state, message, obj, rules, out)
    elif type(obj) is Invoice:
        state = _on_invoice(state, message, obj, rules, out)
    elif type(obj) is Charge:
        state = _on_charge(state, message, obj, rules, out)
    elif type(obj) is Subscription:
        state = _on_subscription(state, message, obj, out)
    return state, out


# --- helpers ------------------------------------------------------------------------------


def referral_id_for(customer: Customer, rules: Rules) -> str | None:
    """`org:<org id>` at organisation level when present, else `user:<new_user_id>`."""
    if rules.organization_level and customer.organization_id:
        return f"org:{customer.organization_id}"
    if customer.new_user_id:
        return f"user:{customer.new_user_id}"
    return None


def _judge(s: CustomerState, p: HeldPayment, rules: RuleBook) -> bool | None:
    """None: not rewardable (deleted / cancelled before it); else whether it is late."""
    if s.deleted_at is not None and s.deleted_at < p.created:
        return None
    if p.subscription and s.subscriptions:
        snap = s.subscriptions.get(p.subscription)
        if snap is not None and snap.ended_at is not None and snap.ended_at < p.created:
            return None
    assert s.attributed_at is not None
    # judged under the revision in force at the payment's paid time
    return s.attributed_at - p.created > rules.at(p.earned_at).late_attribution_days * DAY


def _forward(s: CustomerState, p: HeldPayment, rules: RuleBook, out: list[Routed]) -> CustomerState:
    late = _judge(s, p, rules)
    if late is None or s.ucc is None or s.referral_id is None:
        return s
    out.append(routed(REFERRER, s.ucc, Payment(
        s.ucc, s.referral_id, s.customer_id, p.payment_id, p.currency, p.base, p.created,
        p.earned_at, p.months, late, p.event_id, p.plans, p.amount,
    )))
    if late and all(q.payment_id != p.payment_id for q in s.late):
        s = _set(s, _LATE, (*s.late, p))
    return s


def _revisit_late(s: CustomerState, rules: RuleBook, out: list[Routed]) -> CustomerState:
    """An earlier event with the same attribution arrived: payments judged late against
    the later time may be in time after all; they are sent again as not late."""
    still: list[HeldPayment] = []
    for p in s.late:
        if _judge(s, p, rules):
            still.append(p)
        else:
            _forward(s, p, rules, out)  # not late now: sent again, not recorded as late
    return _set(s, _LATE, tuple(still))


def _payment_of(s: CustomerState, charge_id: str, intent: str | None) -> str | None:
    links = s.links
    if not links:
        return None
    return links.get(charge_id) or (links.get(intent) if intent else None)


def _send_refund(
    s: CustomerState, charge_id: str, r: PendingRefund, rules: RuleBook, out: list[Routed]
) -> bool:
    """Sends what is known about a refund; True when it is linked (no longer pending)."""
    assert s.ucc is not None and s.referral_id is not None
    if charge_id in s.one_offs and _payment_of(s, charge_id, None) is None:
        return True  # a one-off payment the rules did not reward (so not linked): nothing to reverse
    payment_id = _payment_of(s, charge_id, r.payment_intent)
    if payment_id is not None:
        out.append(routed(REFERRER, s.ucc, Refund(
            s.ucc, s.referral_id, s.customer_id, payment_id, charge_id, r.amount, r.amount_refunded,
            r.created, r.event_id,
        )))
        return True
    out.append(routed(REFERRER, s.ucc, UnlinkedRefund(
        s.ucc, s.referral_id, s.customer_id, charge_id, r.currency, r.amount, r.amount_refunded,
        r.created, r.event_id,
    )))
    return False


def _flush_refunds(s: CustomerState, rules: RuleBook, out: list[Routed]) -> CustomerState:
    """After the attribution: send every pending refund step; keep the unlinked ones."""
    if not s.pending_refunds or s.ucc is None:
        return s
    remaining = {}
    for charge, steps in s.pending_refunds.items():
        linked = False
        for r in steps:
            linked = _send_refund(s, charge, r, rules, out)
        if not linked:
            remaining[charge] = steps
    return _set(s, _PENDING_REFUNDS, remaining or None)


def _flush_linked_refunds(s: CustomerState, rules: RuleBook, out: list[Routed]) -> CustomerState:
    """After new links: send the pending refunds that are now linked (and only those), step
    by step, as they would have gone had the link come first."""
    if not s.pending_refunds or s.ucc is None:
        return s
    remaining = dict(s.pending_refunds)
    for charge, steps in s.pending_refunds.items():
        if _payment_of(s, charge, steps[-1].payment_intent) is not None:
            for r in steps:
                _send_refund(s, charge, r, rules, out)
            del remaining[charge]
    return _set(s, _PENDING_REFUNDS, remaining or None)


def _report_ended(s: CustomerState, out: list[Routed]) -> CustomerState:
    if not s.subscriptions or s.ucc is None or s.referral_id is None:
        return s
    subs = dict(s.subscriptions)
    for sub_id, snap in s.subscriptions.items():
        if snap.ended_at is not None and not snap.reported:
            out.append(routed(REFERRER, s.ucc, SubscriptionEnded(
                s.ucc, s.referral_id, s.customer_id, sub_id, snap.ended_at, snap.ended_by or "",
            )))
            subs[sub_id] = SubscriptionSnapshot(snap.snapshot_at, snap.ended_at, snap.ended_by, True)
    return _set(s, _SUBSCRIPTIONS, subs)


# --- events -------------------------------------------------------------------------------


def _on_customer(
    s: CustomerState, ev: StripeEvent, c: Customer, rules: RuleBook, out: list[Routed]
) -> CustomerState:
    if c.created is not None and s.created is None:
        s = _set(s, _CREATED, c.created)
    if c.email is not None and rules.identity_key is not None:
        s = _note_identity(s, email_token(rules.identity_key, c.email), out)
    if ev.type == "customer.deleted" and (s.deleted_at is None or ev.created < s.deleted_at):
        s = _set(s, _DELETED_AT, ev.created)
    referral = referral_id_for(c, rules.at(ev.created)) if c.ucc else None
    if c.ucc is None or referral is None:
        return s  # no (complete) attribution here; removing metadata changes nothing
    if s.ucc is not None:
        if c.ucc == s.ucc:
            if s.attributed_at is not None and ev.created < s.attributed_at:
                s = _set(s, _ATTRIBUTED_AT, ev.created)
                if s.late:
                    s = _revisit_late(s, rules, out)
        elif c.ucc not in s.conflicts:
            ucc, referral_id = s.ucc, s.referral_id
            assert ucc is not None and referral_id is not None
            out.append(routed(REFERRER, ucc, AttributionConflict(
                ucc, referral_id, s.customer_id, c.ucc, ev.created, ev.id,
            )))
            s = _set(s, _CONFLICTS, (*s.conflicts, c.ucc))
        return s
    # the first attribution: the signup
    signed_up_at = c.created if c.created is not None else (s.created or ev.created)
    s = s._replace(ucc=c.ucc, referral_id=referral, attributed_at=ev.created)
    out.append(routed(REFERRER, c.ucc, Signup(c.ucc, referral, s.customer_id, signed_up_at, ev.id)))
    out.extend(routed(INVOICE, f"charge:{ch}", ChargeSeen(ch, s.customer_id)) for ch in s.charges)
    out.extend(routed(INVOICE, f"identity:{i}", IdentitySeen(i, c.ucc, referral, s.customer_id))
               for i in s.identities)
    held = s.held
    s = _set(s, _HELD, ())
    for p in held:
        s = _forward(s, p, rules, out)
    s = _report_ended(s, out)
    return _flush_refunds(s, rules, out)


def _invoice_months(inv: Invoice) -> int:
    n = 1
    for line in inv.lines:
        start, end = line.period_start, line.period_end
        # fewer than 56 days cannot span two calendar months: skip the calendar work
        if line.subscription and not line.proration and start and end and end - start >= 56 * DAY:
            n = max(n, months_spanned(start, end))
    return n


def _plan_bases(inv: Invoice, base: int) -> str:
    """The base split over the lines in proportion to their amounts, for the lines that name
    a price or product (their plan may have its own rate); "" when none does."""
    lines = inv.lines
    if not any(line.price or line.product for line in lines):
        return ""
    parts = split(base, [line.amount for line in lines])
    named = [[line.price, line.product, part] for line, part in zip(lines, parts, strict=True)
             if (line.price or line.product) and part]
    return orjson.dumps(named).decode() if named else ""


def _with_links(s: CustomerState, ids: list[str], payment_id: str) -> CustomerState:
    links = s.links or {}
    new = [i for i in ids if links.get(i) != payment_id]
    if not new:
        return s
    links = dict(links)
    for i in new:
        links.setdefault(i, payment_id)
    return _set(s, _LINKS, links)


def _on_invoice(
    s: CustomerState, ev: StripeEvent, inv: Invoice, rules: RuleBook, out: list[Routed]
) -> CustomerState:
    ids = [i for i in (inv.charge, inv.payment_intent) if i] + list(inv.payment_charges) + list(
        inv.payment_intents
    )
    if ids:
        s = _with_links(s, ids, inv.id)
        s = _note_charges(s, ids, out)
        s = _flush_linked_refunds(s, rules, out)
        s = _flush_disputes(s, out)
    else:  # 2025-03-31+: the charge comes from an invoice_payment.paid event
        out.append(routed(INVOICE, inv.id, InvoiceSeen(inv.id, s.customer_id)))
    tax = inv.total - inv.total_excluding_tax if (
        inv.total is not None and inv.total_excluding_tax is not None
    ) else 0
    base = inv.amount_paid - tax
    if base <= 0:
        return s  # trials and 100 % coupons earn nothing
    p = HeldPayment(
        inv.id, inv.currency, base, inv.created, inv.paid_at or inv.created, _invoice_months(inv),
        inv.subscription, ev.id, _plan_bases(inv, base), inv.amount_paid,
    )
    return _on_payment(s, p, rules, out)


def _on_payment(s: CustomerState, p: HeldPayment, rules: RuleBook, out: list[Routed]) -> CustomerState:
    if s.ucc is None:
        if any(h.payment_id == p.payment_id for h in s.held):
            return s
        return _set(s, _HELD, (*s.held, p))
    return _forward(s, p, rules, out)


def _on_charge(
    s: CustomerState, ev: StripeEvent, ch: Charge, rules: RuleBook, out: list[Routed]
) -> CustomerState:
    s = _note_charges(s, [i for i in (ch.id, ch.payment_intent) if i], out)
    if ch.card_fingerprint is not None and rules.identity_key is not None:
        s = _note_identity(s, card_token(rules.identity_key, ch.card_fingerprint), out)
    if ch.one_off:
        if ch.id not in s.one_offs:
            s = _set(s, _ONE_OFFS, (*s.one_offs, ch.id))
        if rules.at(ch.created).reward_one_off_charges:
            s = _with_links(s, [ch.id], ch.id)
            if ev.type == "charge.succeeded" and ch.amount > 0:
                s = _on_payment(s, HeldPayment(
                    ch.id, ch.currency, ch.amount, ch.created, ch.created, 1, None, ev.id, "", ch.amount,
                ), rules, out)
    elif ch.invoice:
        s = _with_links(s, [ch.id], ch.invoice)
    if ch.amount_refunded <= 0:
        return s
    pending = s.pending_refunds or {}
    steps = pending.get(ch.id, ())
    if steps and steps[-1].amount_refunded >= ch.amount_refunded:
        return s  # a duplicate or an older cumulative amount: nothing new
    r = PendingRefund(ch.amount, ch.amount_refunded, ch.payment_intent, ch.currency, ev.created, ev.id)
    if s.ucc is not None and _send_refund(s, ch.id, r, rules, out):
        return s  # linked: nothing waits (a charge with pending steps is not linked yet)
    return _set(s, _PENDING_REFUNDS, {**pending, ch.id: (*steps, r)})


def _on_subscription(
    s: CustomerState, ev: StripeEvent, sub: Subscription, out: list[Routed]
) -> CustomerState:
    ended = ev.type == "customer.subscription.deleted" or sub.status == "canceled"
    ended_at = (sub.ended_at or sub.canceled_at or ev.created) if ended else None
    subs = s.subscriptions or {}
    old = subs.get(sub.id)
    if old is not None:
        newer = ev.created > old.snapshot_at or (
            ev.created == old.snapshot_at and ended_at is not None and old.ended_at is None
        )
        if not newer:
            return s  # an older snapshot arriving late is ignored
    snap = SubscriptionSnapshot(
        ev.created, ended_at, ev.id if ended_at is not None else None, old.reported if old else False
    )
    s = _set(s, _SUBSCRIPTIONS, {**subs, sub.id: snap})
    return _report_ended(s, out) if ended_at is not None else s


def _on_link(s: CustomerState, link: PaymentLink, rules: RuleBook) -> tuple[CustomerState, list[Routed]]:
    ids = [i for i in (link.charge_id, link.payment_intent_id) if i]
    s = _with_links(s, ids, link.invoice_id)
    out: list[Routed] = []
    s = _flush_linked_refunds(s, rules, out)
    s = _flush_disputes(s, out)
    return s, out


def _note_charges(s: CustomerState, charges: list[str], out: list[Routed]) -> CustomerState:
    """The customer's charges (and payment intents), from its own Stripe events only: once it
    is attributed, the invoice stage learns they are its, so their disputes find it
    (docs/rules.md#disputes). Never from a link that came back from the invoice stage: what
    it sends to the invoice stage must follow from the Stripe events before a control event's
    marker (docs/design.md#one-order)."""
    new = [c for c in charges if c not in s.charges]
    if not new:
        return s
    if s.ucc is not None:
        out.extend(routed(INVOICE, f"charge:{c}", ChargeSeen(c, s.customer_id)) for c in new)
    return _set(s, _CHARGES, (*s.charges, *new))


def _note_identity(s: CustomerState, identity: str | None, out: list[Routed]) -> CustomerState:
    """A token of the customer's own e-mail address or card (from its own Stripe events
    only, like `_note_charges`): new ones go to their join as this referral's evidence and
    as each linking referrer's own."""
    if identity is None or identity in s.identities:
        return s
    key = f"identity:{identity}"
    if s.ucc is not None and s.referral_id is not None:
        out.append(routed(INVOICE, key, IdentitySeen(identity, s.ucc, s.referral_id, s.customer_id)))
    out.extend(routed(INVOICE, key, OwnIdentity(identity, ucc, s.customer_id)) for ucc in s.owns)
    return _set(s, _IDENTITIES, (*s.identities, identity))


def _on_own(s: CustomerState, link: ReferrerLink) -> tuple[CustomerState, list[Routed]]:
    """The customer is referrer `link.ucc`'s own: its identities, known and to come, are that
    referrer's (docs/rules.md#fraud-signals)."""
    if link.ucc in s.owns:
        return s, []
    out = [routed(INVOICE, f"identity:{i}", OwnIdentity(i, link.ucc, s.customer_id)) for i in s.identities]
    return _set(s, _OWNS, (*s.owns, link.ucc)), out


def _on_dispute(s: CustomerState, d: DisputeUpdate) -> tuple[CustomerState, list[Routed]]:
    """A dispute of one of the customer's charges: to the referrer once the charge is linked
    to a payment, kept until then (its link may still come back from the invoice stage)."""
    out: list[Routed] = []
    if not _send_dispute(s, d, out):
        s = _set(s, _DISPUTES, {**(s.disputes or {}), d.dispute_id: d})
    elif s.disputes and d.dispute_id in s.disputes:
        rest = dict(s.disputes)
        del rest[d.dispute_id]
        s = _set(s, _DISPUTES, rest or None)
    return s, out


def _send_dispute(s: CustomerState, d: DisputeUpdate, out: list[Routed]) -> bool:
    payment_id = _payment_of(s, d.charge_id, d.payment_intent_id)
    if s.ucc is None or s.referral_id is None or payment_id is None:
        return False
    out.append(routed(REFERRER, s.ucc, DisputeChanged(
        s.ucc, s.referral_id, s.customer_id, payment_id, d.charge_id, d.dispute_id, d.status, d.amount,
        d.created, d.event_id,
    )))
    return True


def _flush_disputes(s: CustomerState, out: list[Routed]) -> CustomerState:
    """After new links: the disputes kept for want of them."""
    if not s.disputes:
        return s
    rest = {k: d for k, d in s.disputes.items() if not _send_dispute(s, d, out)}
    return _set(s, _DISPUTES, rest or None)


# --- table value codec ----------------------------------------------------------------------


def dumps(s: CustomerState) -> bytes:
    # a customer without identity evidence encodes as before the fraud signals
    fraud = [s.identities, s.owns] if s.identities or s.owns else []
    return orjson.dumps([
        s.customer_id, s.created, s.ucc, s.referral_id, s.attributed_at, s.conflicts, s.deleted_at,
        {k: [v.snapshot_at, v.ended_at, v.ended_by, v.reported] for k, v in (s.subscriptions or {}).items()},
        s.links or {}, s.one_offs,
        {k: [[r.amount, r.amount_refunded, r.payment_intent, r.currency, r.created, r.event_id]
             for r in steps]
         for k, steps in (s.pending_refunds or {}).items()},
        [_held_row(p) for p in s.held],
        [_held_row(p) for p in s.late],
        s.charges,
        {k: [d.charge_id, d.payment_intent_id, d.status, d.amount, d.created, d.event_id]
         for k, d in (s.disputes or {}).items()},
        *fraud,
    ])


def _held_row(p: HeldPayment) -> list[object]:
    return [p.payment_id, p.currency, p.base, p.created, p.earned_at, p.months, p.subscription, p.event_id,
            p.plans, p.amount]


def loads(raw: bytes) -> CustomerState:
    (cid, created, ucc, referral, attributed_at, conflicts, deleted_at, subs, links, one_offs,
     pending, held, late, *more) = orjson.loads(raw)
    return CustomerState(
        cid, created, ucc, referral, attributed_at, tuple(conflicts), deleted_at,
        {k: SubscriptionSnapshot(*v) for k, v in subs.items()} or None,
        links or None, tuple(one_offs),
        {k: _pending_steps(v) for k, v in pending.items()} or None,
        tuple(HeldPayment(*p) for p in held),
        tuple(HeldPayment(*p) for p in late),
        tuple(more[0]) if more else (),  # none stored before disputes
        {k: DisputeUpdate(cid, v[0], v[1], k, *v[2:]) for k, v in more[1].items()} or None
        if len(more) > 1 else None,
        tuple(more[2]) if len(more) > 2 else (),  # none stored before the fraud signals
        tuple(more[3]) if len(more) > 3 else (),
    )


def _pending_steps(rows: list[object]) -> tuple[PendingRefund, ...]:
    # tables written before refunds kept their steps hold one row: the largest seen
    if rows and not isinstance(rows[0], list):
        return (PendingRefund(*rows),)  # type: ignore[arg-type]
    return tuple(PendingRefund(*row) for row in rows)  # type: ignore[misc]
