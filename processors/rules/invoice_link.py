"""Stage "invoice": the joins of facts that name no customer with the customer they concern.

- Key: invoice id. Under API versions 2025-03-31 and later a charge no longer names its
  invoice; the link is an `invoice_payment.paid` event, which names no customer. This stage
  waits for both halves (in either order) and sends the customer stage a `PaymentLink` for
  each payment.
- Key: "charge:<id>". A dispute names only its charge; the customer stage says which of its
  charges paid a payment (`ChargeSeen`). Either may come first; each dispute's latest state
  goes to the customer stage once both are known (docs/rules.md#disputes).
- Key: "identity:<token>". Every customer that shows one identity (a keyed token of an
  e-mail address or a card: processors/rules/identity.py): the referrals whose customer shows it
  (`IdentitySeen`) and the referrers whose own customer shows it (`OwnIdentity`). Where they
  meet, the referral's customer hears of it (`IdentityMatch`): its referrer owns the
  identity (self-referral), or the card pays for more than one referral (shared card). Both
  are facts about the set of members, which only grows, so the order they join in changes
  what is found when, never what is found (docs/rules.md#fraud-signals).
"""

from __future__ import annotations

from typing import NamedTuple, cast

import orjson

from processors.rules.identity import is_card
from schemas.commands import SELF_REFERRAL, SHARED_CARD
from schemas.events import (
    CUSTOMER,
    ChargeSeen,
    DisputeSeen,
    DisputeUpdate,
    IdentityMatch,
    IdentitySeen,
    InvoicePaymentPaid,
    InvoiceSeen,
    OwnIdentity,
    PaymentLink,
    Routed,
    routed,
)
from schemas.rules import MAX_REFERRALS_PER_CARD, RuleBook

InvoiceMessage = InvoicePaymentPaid | InvoiceSeen | ChargeSeen | DisputeSeen | IdentitySeen | OwnIdentity
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


class IdentityState(NamedTuple):
    identity: str
    referred: tuple[tuple[str, str, str], ...]  # (ucc, referral id, customer id), as they joined
    owners: tuple[tuple[str, str], ...]  # (ucc, customer id) of referrers' own customers


# built with `tuple.__new__`: the NamedTuples' generated `__new__` is a Python function,
# called several times per event even in the compiled core
_new = tuple.__new__


def _referrals(referred: tuple[tuple[str, str, str], ...]) -> int:
    return len({(ucc, rid) for ucc, rid, _ in referred})


def _match(member: tuple[str, str, str], signal: str, referrals: int) -> Routed:
    ucc, rid, customer = member
    return routed(CUSTOMER, customer, IdentityMatch(customer, ucc, rid, signal, referrals))


def _identity_step(state: IdentityState | None, m: IdentitySeen | OwnIdentity
                   ) -> tuple[IdentityState, list[Routed]]:
    if state is None:
        state = _new(IdentityState, (m.identity, (), ()))
    if type(m) is OwnIdentity:
        owner = (m.ucc, m.customer_id)
        if owner in state.owners:
            return state, []
        new_referrer = all(ucc != m.ucc for ucc, _ in state.owners)
        state = _new(IdentityState, (state.identity, state.referred, (*state.owners, owner)))
        if not new_referrer:
            return state, []
        # the referrer's referrals that show its own identity: self-referrals
        return state, [_match(x, SELF_REFERRAL, 0) for x in state.referred if x[0] == m.ucc]
    m = cast(IdentitySeen, m)
    member = (m.ucc, m.referral_id, m.customer_id)
    if member in state.referred:
        return state, []  # a duplicate
    before = _referrals(state.referred)
    state = _new(IdentityState, (state.identity, (*state.referred, member), state.owners))
    out = []
    if any(ucc == m.ucc for ucc, _ in state.owners):
        out.append(_match(member, SELF_REFERRAL, 0))
    if is_card(state.identity):
        count = _referrals(state.referred)
        if count > before and 2 <= count <= MAX_REFERRALS_PER_CARD + 1:
            # the count grew: every referral of the card hears it, up to one past the largest
            # limit a rules file may set (each has heard a count above its limit by then)
            out += [_match(x, SHARED_CARD, count) for x in state.referred]
        elif count >= 2:
            out.append(_match(member, SHARED_CARD, count))  # the newcomer hears where it stands
    return state, out


def _newer(new: DisputeSeen, old: DisputeSeen) -> bool:
    """Later `created` wins; at the same time a closed status beats an open one."""
    return (new.created, new.status in CLOSED) > (old.created, old.status in CLOSED)


def _update(customer: str, d: DisputeSeen) -> Routed:
    return routed(CUSTOMER, customer, DisputeUpdate(
        customer, d.charge_id, d.payment_intent_id, d.dispute_id, d.status, d.amount, d.created, d.event_id))


def _charge_step(state: ChargeState | None, message: ChargeSeen | DisputeSeen
                 ) -> tuple[ChargeState, list[Routed]]:
    if state is None:
        state = _new(ChargeState, (message.charge_id, None, {}))
    if type(message) is ChargeSeen:
        if state.customer_id is not None:
            return state, []  # a charge has one customer
        new = _new(ChargeState, (state.charge_id, message.customer_id, state.disputes))
        return new, [_update(message.customer_id, d) for _, d in sorted(state.disputes.items())]
    seen = cast(DisputeSeen, message)
    old = state.disputes.get(seen.dispute_id)
    if old is not None and not _newer(seen, old):
        return state, []  # a duplicate, or an older state arriving late
    disputes = {**state.disputes, seen.dispute_id: seen}
    new = _new(ChargeState, (state.charge_id, state.customer_id, disputes))
    return new, [] if new.customer_id is None else [_update(new.customer_id, seen)]


def step(
    state: InvoiceLinkState | ChargeState | IdentityState | None, message: InvoiceMessage, rules: RuleBook
) -> tuple[InvoiceLinkState | ChargeState | IdentityState, list[Routed]]:
    # `type(message) is`: each record is built as exactly its class, and a failed isinstance
    # against a msgspec Struct class is slow (docs/performance.md#compiled-core)
    if type(message) is IdentitySeen or type(message) is OwnIdentity:
        assert state is None or isinstance(state, IdentityState)
        return _identity_step(state, message)
    if type(message) is ChargeSeen or type(message) is DisputeSeen:
        assert state is None or isinstance(state, ChargeState)
        return _charge_step(state, message)
    assert state is None or isinstance(state, InvoiceLinkState)
    if state is None:
        state = _new(InvoiceLinkState, (message.invoice_id, None, ()))  # type: ignore[union-attr]
    if type(message) is InvoiceSeen:
        if state.customer_id is not None:
            return state, []  # first customer wins; an invoice has one customer
        new = _new(InvoiceLinkState, (state.invoice_id, message.customer_id, state.payments))
        return new, [_link(new, p) for p in new.payments]
    paid = cast(InvoicePaymentPaid, message)
    pair = (paid.charge_id, paid.payment_intent_id)
    if pair in state.payments or pair == (None, None):
        return state, []
    new = _new(InvoiceLinkState, (state.invoice_id, state.customer_id, (*state.payments, pair)))
    return new, [] if new.customer_id is None else [_link(new, pair)]


def _link(state: InvoiceLinkState, pair: tuple[str | None, str | None]) -> Routed:
    assert state.customer_id is not None
    return routed(
        CUSTOMER, state.customer_id, PaymentLink(state.customer_id, state.invoice_id, pair[0], pair[1])
    )


def dumps(state: InvoiceLinkState | ChargeState | IdentityState) -> bytes:
    if isinstance(state, IdentityState):
        return orjson.dumps(["identity", state.identity, state.referred, state.owners])
    if isinstance(state, ChargeState):
        disputes = {k: [d.charge_id, d.payment_intent_id, d.status, d.amount, d.created, d.event_id]
                    for k, d in state.disputes.items()}
        return orjson.dumps(["charge", state.charge_id, state.customer_id, disputes])
    return orjson.dumps([state.invoice_id, state.customer_id, state.payments])


def loads(raw: bytes) -> InvoiceLinkState | ChargeState | IdentityState:
    row = orjson.loads(raw)
    if len(row) == 4 and row[0] == "identity":
        _, identity, referred, owners = row
        return _new(IdentityState, (identity, tuple((u, r, c) for u, r, c in referred),
                                    tuple((u, c) for u, c in owners)))
    if len(row) == 4 and row[0] == "charge":
        _, charge, customer, disputes = row
        return _new(ChargeState, (charge, customer, {
            k: DisputeSeen(v[0], v[1], k, *v[2:]) for k, v in disputes.items()}))
    invoice_id, customer_id, payments = row
    return _new(InvoiceLinkState, (invoice_id, customer_id, tuple((c, p) for c, p in payments)))
