"""Stage "referrer" (key: ucc): referrals, bonuses, caps, rewards, reversals, review cases,
the ledger per currency, payout runs and their outcomes, manual adjustments (docs/rules.md).

One `step` folds one message (a domain event from stage "customer", or a control record:
a payout run, a review decision, a payout's outcome, an adjustment…) into the referrer's
frozen state and returns the output records it caused (docs/cli.md#output-records). Every
id is `fact_id(...)` of the facts, so the same history gives the same ids.

Each step also writes the lines of the referrer's history (`Line`, `history()`): every fact
that changed the referrer and every cent it moved, with its source, which is what
`refstream audit` and the worker's `/referrers/{ucc}/history` show.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, NamedTuple

import orjson

from processors.rules.money import DAY, add_months, instalments, percent_of, pro_rata, split
from schemas.commands import (
    ATTRIBUTION_CONFLICT,
    LARGE_REWARD,
    LATE_ATTRIBUTION,
    NEW_SIGNUP,
    PAYOUT_CREATED,
    PAYOUT_FAILED,
    PAYOUT_RETURNED,
    RECURRING_REWARDS_CANCELLED,
    REWARD_EARNED,
    REWARD_REVERSED,
    SELF_REFERRAL,
    SHARED_CARD,
    SUSPECTED_FRAUD,
    UNLINKED_REFUND,
    UNSUPPORTED_CURRENCY,
    VELOCITY,
    CaseState,
    NotificationCommand,
    PayoutCommand,
    ReviewCase,
    case_state_id,
    fact_id,
)
from schemas.control import (
    FAILED,
    PAID,
    CampaignAssignment,
    LedgerAdjustment,
    PayoutOutcome,
    PayoutRun,
    ReviewDecision,
    outcome_applies,
)
from schemas.control import PENDING as control_pending
from schemas.events import (
    CASES,
    NOTIFICATIONS,
    PAYOUTS,
    REVIEWS,
    AttributionConflict,
    DisputeChanged,
    IdentityMatch,
    Payment,
    ReferrerEvent,
    Refund,
    Routed,
    Signup,
    SubscriptionEnded,
    UnlinkedRefund,
    routed,
)
from schemas.rules import RuleBook, Rules

ReferrerMessage = (ReferrerEvent | PayoutRun | ReviewDecision | CampaignAssignment | PayoutOutcome
                   | LedgerAdjustment)

# PaymentRecord.status
PENDING = "pending"  # only refunds seen so far
HELD = "held"  # waiting in a late_attribution / unsupported_currency case
REWARDED = "rewarded"
INELIGIBLE = "ineligible"  # outside the window, or the referral was rejected

# Case.status (the first four are also the statuses of the CaseState records)
OPEN = "open"
APPROVED = "approved"
REJECTED = "rejected"
# unlinked_refund only: a refund whose charge has no link yet. It opens (OPEN) at the next
# payout run if it is still unlinked then, and it ends (LINKED) when its link arrives, so
# neither depends on whether the link or the refund reached the referrer first
# (docs/rules.md#refunds).
WAITING = "waiting"
LINKED = "linked"


class Entry(NamedTuple):
    """A ledger line not yet paid: positive (earned) or negative (a reversal)."""

    entry_id: str
    referral_id: str  # "" for the referrer's own entries: adjustments, payouts paid again
    payment_id: str | None  # None: the signup bonus, or a reversal of an unlinked refund
    currency: str
    amount: int
    payable_at: int  # earned time + hold_days (positive); the reversal's time (negative)


class Line(NamedTuple):
    """One line of a referrer's history (docs/rules.md#audit-trail): a fact that changed the
    referrer, and the money it moved."""

    at: int  # the time of the fact
    kind: str  # LINE_KINDS
    source: str  # the Stripe event id, or the control record's id
    amount: int  # signed effect on what the referrer is owed (net − paid); 0 for a fact alone
    currency: str | None
    ref: str | None  # what it is about: a payment, case, payout or adjustment id
    note: str


# Line.kind → which summary figure its amount moves (docs/rules.md#audit-trail): earned
# by +amount, reversed by −amount, paid by −amount; a kind not here moves no figure
# (an adjustment moves earned or reversed by its sign).
FIGURES = {
    "signup": "earned", "purchase_bonus": "earned", "reward": "earned", "voided": "earned",
    "reversal": "reversed", "dispute_reversal": "reversed", "reversal_voided": "reversed",
    "payout": "paid", "payout_failed": "paid", "payout_returned": "paid",
}
LINE_KINDS = (
    "signup", "purchase_bonus", "reward", "payment_ineligible", "reversal",
    "dispute", "dispute_reversal", "subscription_ended", "case_opened", "case_approved",
    "case_rejected", "case_linked", "voided", "reversal_voided", "campaign_assigned", "payout",
    "payout_paid", "payout_failed", "payout_returned", "adjustment",
)


class PayoutRecord(NamedTuple):
    """A payout the referrer was paid, and what became of it (docs/rules.md#the-payout-lifecycle)."""

    run_id: str
    currency: str
    amount: int
    made_at: int  # the run's requested_at
    as_of: int  # the run's as_of: a payout paid again is payable as of then, as its entries were
    status: str  # PAYOUT_PENDING, or the outcome's: paid, failed, returned
    reference: str  # the outcome's (a transfer id, the operator's reference)


PAYOUT_PENDING = control_pending


class ChargeRefund(NamedTuple):
    amount: int  # the charge's amount (0: not known yet)
    amount_refunded: int  # largest cumulative amount seen
    reversed: int  # reversed so far for this charge
    lost: int = 0  # reversed for its disputes closed as lost (docs/rules.md#disputes)


class PaymentRecord(NamedTuple):
    status: str
    currency: str
    reward: int = 0  # r: the percentage reward actually earned (after the cap, kept instalments)
    paid: bool = False  # some of its reward was paid out
    refunds: dict[str, ChargeRefund] | None = None
    amount: int = 0  # what the payment paid (0: unknown), for disputes that name no charge amount


class ReferralState(NamedTuple):
    referral_id: str
    signed_up_at: int
    rejected: bool
    purchase_bonus_granted: bool
    paid_any: bool
    gross: dict[str, int]  # earned per currency, for the cap
    payments: dict[str, PaymentRecord]
    open_cases: tuple[str, ...]
    entries: tuple[Entry, ...]  # unpaid, not voided, in the order they were made
    lines: tuple[Line, ...] = ()  # the referral's history


class DisputeState(NamedTuple):
    """The latest state of a dispute of one of the referrer's payments."""

    referral_id: str
    payment_id: str
    charge_id: str
    status: str
    amount: int
    created: int


DISPUTE_CLOSED = ("won", "lost")


class Case(NamedTuple):
    kind: str
    referral_id: str
    status: str
    held: Payment | None = None  # late_attribution / unsupported_currency
    refund: UnlinkedRefund | None = None  # unlinked_refund: the largest cumulative seen
    reversed: int = 0  # unlinked_refund: reversed after approval
    details: dict[str, object] | None = None  # while open: the ReviewCase's, for its CaseState
    opened_at: int = 0  # when it opened (0: waiting, or stored before cases kept it)


class ReferrerState(NamedTuple):
    ucc: str
    referrals: dict[str, ReferralState]
    earned: dict[str, int]
    reversed: dict[str, int]
    paid: dict[str, int]
    cases: dict[str, Case]
    runs: tuple[str, ...]  # payout run ids already applied
    # (effective from, campaign name), oldest first: the referrer's campaign assignments
    campaigns: tuple[tuple[int, str], ...]
    disputes: dict[str, DisputeState]  # by dispute id
    payouts: dict[str, PayoutRecord]  # by payout id
    ledger: tuple[Entry, ...]  # the referrer's own unpaid entries (referral_id ""), in order
    lines: tuple[Line, ...]  # the referrer's own history: payouts, outcomes, adjustments…


# Building a NamedTuple with `tuple.__new__` skips the generated `__new__` and `_replace`'s
# generic keyword handling (about five times the work): the hot steps rebuild a referral
# or the referrer's state through the helpers below, each naming every field it keeps.
_new = tuple.__new__


def _referral(r: ReferralState, *, purchase_bonus_granted: bool | None = None,
              paid_any: bool | None = None, gross: dict[str, int] | None = None,
              payments: dict[str, PaymentRecord] | None = None,
              entries: tuple[Entry, ...] | None = None,
              lines: tuple[Line, ...] | None = None) -> ReferralState:
    """`r._replace(...)` for the fields the hot steps change (None: unchanged)."""
    return _new(ReferralState, (
        r.referral_id, r.signed_up_at, r.rejected,
        r.purchase_bonus_granted if purchase_bonus_granted is None else purchase_bonus_granted,
        r.paid_any if paid_any is None else paid_any,
        r.gross if gross is None else gross,
        r.payments if payments is None else payments,
        r.open_cases,
        r.entries if entries is None else entries,
        r.lines if lines is None else lines,
    ))


def empty_state(ucc: str) -> ReferrerState:
    return ReferrerState(ucc, {}, {}, {}, {}, {}, (), (), {}, {}, (), ())


def unpaid_entries(state: ReferrerState) -> list[Entry]:
    return [e for r in state.referrals.values() for e in r.entries] + list(state.ledger)


@dataclass(frozen=True, slots=True)
class CurrencySummary:
    earned: int
    reversed: int
    net: int
    paid: int
    payable: int


@dataclass(frozen=True, slots=True)
class ReferrerSummary:
    ucc: str
    referrals: int
    currencies: dict[str, CurrencySummary]
    open_cases: int


class _Tx:
    """Working copy of one step: containers are copied on first write (most steps touch
    two or three of them); `done()` freezes it into the new state."""

    def __init__(self, s: ReferrerState, book: RuleBook):
        self.ucc = s.ucc
        self.book = book
        self.campaigns = s.campaigns
        self.disputes = s.disputes
        # the rules that price the fact at hand: set by `price(t)` before it is priced
        self.rules: Rules = book.at(0).campaign(campaign_at(s.campaigns, 0))
        self.referrals = s.referrals
        self.added: dict[str, list[Entry]] = {}
        self.earned = s.earned
        self.reversed = s.reversed
        self.paid = s.paid
        self.cases = s.cases
        self.runs = s.runs
        self.payouts = s.payouts
        self.ledger = s.ledger
        # history lines made by this step, by referral id ("": the referrer's own)
        self.lines: dict[str, list[Line]] = {}
        self.out: list[Routed] = []
        self._state = s

    def put(self, rid: str, ref: ReferralState) -> None:
        if self.referrals is self._state.referrals:
            self.referrals = dict(self.referrals)
        self.referrals[rid] = ref

    def w_earned(self) -> dict[str, int]:
        if self.earned is self._state.earned:
            self.earned = dict(self.earned)
        return self.earned

    def w_reversed(self) -> dict[str, int]:
        if self.reversed is self._state.reversed:
            self.reversed = dict(self.reversed)
        return self.reversed

    def w_paid(self) -> dict[str, int]:
        if self.paid is self._state.paid:
            self.paid = dict(self.paid)
        return self.paid

    def w_cases(self) -> dict[str, Case]:
        if self.cases is self._state.cases:
            self.cases = dict(self.cases)
        return self.cases

    def w_payouts(self) -> dict[str, PayoutRecord]:
        if self.payouts is self._state.payouts:
            self.payouts = dict(self.payouts)
        return self.payouts

    def done(self) -> tuple[ReferrerState, list[Routed]]:
        lines = self.lines
        for rid, new in self.added.items():
            if not rid:
                self.ledger = self.ledger + tuple(new)
                continue
            r = self.referrals[rid]
            made = lines.pop(rid, None)
            self.put(rid, _referral(r, entries=r.entries + tuple(new),
                                    lines=r.lines + tuple(made) if made else None))
        own = self._state.lines
        for rid, made in lines.items():
            if not rid:
                own = own + tuple(made)
                continue
            r = self.referrals[rid]
            self.put(rid, _referral(r, lines=r.lines + tuple(made)))
        return ReferrerState(
            self.ucc, self.referrals, self.earned, self.reversed, self.paid, self.cases, self.runs,
            self.campaigns, self.disputes, self.payouts, self.ledger, own,
        ), self.out

    def line(self, referral_id: str, at: int, kind: str, source: str, amount: int = 0,
             currency: str | None = None, ref: str | None = None, note: str = "") -> None:
        """A line of the history of the referral (or, with "", of the referrer itself)."""
        made = _new(Line, (at, kind, source, amount, currency, ref, note))
        known = self.lines.get(referral_id)
        if known is None:
            self.lines[referral_id] = [made]
        else:
            known.append(made)

    # --- building blocks ---

    def add_entry(self, e: Entry, kind: str | None, source: str = "", at: int = 0, note: str = "",
                  counts: bool = True) -> None:
        """A new unpaid entry and, unless `kind` is None (the caller writes one line for
        several entries), its history line. `counts`: it is earned (positive) or reversed
        (negative); False for a payout paid again, which was earned before."""
        added = self.added.get(e.referral_id)
        if added is None:
            self.added[e.referral_id] = [e]
        else:
            added.append(e)
        if kind is not None:
            self.line(e.referral_id, at, kind, source, e.amount, e.currency, e.payment_id or e.entry_id, note)
        if not counts:
            return
        if e.amount > 0:
            earned = self.w_earned()
            earned[e.currency] = earned.get(e.currency, 0) + e.amount
        else:
            rev = self.w_reversed()
            rev[e.currency] = rev.get(e.currency, 0) - e.amount

    def notify(self, kind: str, nid: str, referral_id: str | None, currency: str | None, amount: int,
               source: str, at: int) -> None:
        self.out.append(routed(NOTIFICATIONS, self.ucc, NotificationCommand(
            nid, kind, self.ucc, referral_id, currency, amount, source, at,
        )))

    def open_case(self, kind: str, case_id: str, ref: ReferralState, details: dict[str, object],
                  at: int, source: str, held: Payment | None = None, refund: UnlinkedRefund | None = None
                  ) -> ReferralState:
        if case_id in self.cases:
            return ref
        case = _new(Case, (kind, ref.referral_id, OPEN, held, refund, 0, details, at))
        self.w_cases()[case_id] = case
        self.out.append(routed(REVIEWS, self.ucc, ReviewCase(
            case_id, kind, self.ucc, ref.referral_id, details, at,
        )))
        self.line(ref.referral_id, at, "case_opened", source, 0, None, case_id, kind)
        self.case_state(case_id, case, OPEN, None, None)
        ref = ref._replace(open_cases=(*ref.open_cases, case_id))
        self.put(ref.referral_id, ref)
        return ref

    def case_state(self, case_id: str, case: Case, status: str, at: int | None, reason: str | None) -> None:
        """The case's new state for the review-cases topic: it opened (`case` as opened) or
        it ended (`case` as it was while open, `at` and `reason` saying how)."""
        self.out.append(routed(CASES, self.ucc, CaseState(
            case_state_id(case_id, status), case_id, case.kind, self.ucc, case.referral_id, status,
            case.details or {}, case.opened_at, at, reason,
        )))

    def price(self, t: int) -> Rules:
        """Price a fact of time `t`: the revision in force then, and the referrer's campaign
        then (docs/rules.md#revisions, docs/rules.md#campaigns)."""
        self.rules = self.book.at(t).campaign(campaign_at(self.campaigns, t))
        return self.rules

    def room(self, ref: ReferralState, currency: str, capped: bool) -> int | None:
        cfg = self.rules.currency_rules(currency)
        if not capped or cfg is None or cfg.max_reward_per_referral is None:
            return None
        return max(0, cfg.max_reward_per_referral - ref.gross.get(currency, 0))


def campaign_at(campaigns: tuple[tuple[int, str], ...], t: int) -> str | None:
    """The campaign a referrer is on at time `t` (None: the default one)."""
    name = None
    for since, campaign in campaigns:
        if since <= t:
            name = campaign
    return name


def _with_payment(ref: ReferralState, payment_id: str, rec: PaymentRecord) -> ReferralState:
    return _referral(ref, payments={**ref.payments, payment_id: rec})


def _cut(amount: int, room: int | None) -> int:
    return amount if room is None else min(amount, room)


# --- step -----------------------------------------------------------------------------------


def step(
    state: ReferrerState | None, message: ReferrerMessage, rules: RuleBook | Rules
) -> tuple[ReferrerState, list[Routed]]:
    """Fold one message. With `state=None` and a control record: an empty state, no output
    (a payout run or decision for a referrer with nothing; callers need not store it)."""
    book = rules if isinstance(rules, RuleBook) else RuleBook.of(rules)
    if state is None:
        state = empty_state(message.ucc if not isinstance(message, PayoutRun) else "")
    if type(message) is PayoutRun:
        # a run steps every referrer; most have nothing to pay, and then only the run id is
        # recorded (no working copy)
        if message.run_id in state.runs:
            return state, []  # the same run id twice pays nothing more
        opened: list[Routed] = []
        if state.cases and any(c.status == WAITING for c in state.cases.values()):
            tx = _Tx(state, book)
            _open_waiting_refunds(tx, message)
            state, opened = tx.done()
        payable = _payable(state.referrals, None, message.as_of, _disputed(state.disputes), state.ledger)
        # min_payout and the revision the commands carry
        priced = book.at(message.as_of).campaign(campaign_at(state.campaigns, message.as_of))
        if not payable or not any(_reaches(b, c, priced) for c, b in _balances(payable).items()):
            return note_run(state, message), opened  # nothing to pay: the run's id, no working copy
        tx = _Tx(state, book)
        tx.rules = priced
        _on_payout_run(tx, message, payable)
        state, out = tx.done()
        return state, opened + out
    tx = _Tx(state, book)
    # `type(message) is`: each record is built as exactly its class, and a failed isinstance
    # against a msgspec Struct class is slow (docs/performance.md#compiled-core)
    if type(message) is Payment:
        _on_payment(tx, message)
    elif type(message) is Refund:
        _on_refund(tx, message)
    elif type(message) is Signup:
        _on_signup(tx, message)
    elif type(message) is ReviewDecision:
        _on_decision(tx, message)
    elif type(message) is UnlinkedRefund:
        _on_unlinked_refund(tx, message)
    elif type(message) is SubscriptionEnded:
        _on_subscription_ended(tx, message)
    elif type(message) is AttributionConflict:
        _on_conflict(tx, message)
    elif type(message) is CampaignAssignment:
        _on_assignment(tx, message)
    elif type(message) is DisputeChanged:
        _on_dispute(tx, message)
    elif type(message) is PayoutOutcome:
        _on_outcome(tx, message)
    elif type(message) is LedgerAdjustment:
        _on_adjustment(tx, message)
    elif type(message) is IdentityMatch:
        _on_identity_match(tx, message)
    return tx.done()


def _on_signup(tx: _Tx, m: Signup) -> None:
    if m.referral_id in tx.referrals:
        return  # several customers, one referral: one signup
    ref = ReferralState(m.referral_id, m.signed_up_at, False, False, False, {}, {}, (), ())
    rules = tx.price(m.signed_up_at)
    currency = rules.currency
    bonus = _cut(rules.signup_bonus, tx.room(ref, currency, True))
    # one line: the signup and its bonus (if any)
    tx.line(m.referral_id, m.signed_up_at, "signup", m.event_id, bonus, currency if bonus > 0 else None,
            m.customer_id)
    if bonus > 0:
        tx.add_entry(_new(Entry, (
            fact_id("signup_bonus", tx.ucc, m.referral_id), m.referral_id, None, currency, bonus,
            m.signed_up_at + rules.hold_days * DAY,
        )), None)
        ref = ref._replace(gross={currency: bonus})
    tx.put(m.referral_id, ref)
    tx.notify(NEW_SIGNUP, fact_id(NEW_SIGNUP, tx.ucc, m.referral_id), m.referral_id, currency, bonus,
              m.event_id, m.signed_up_at)
    _check_velocity(tx, m.signed_up_at)


def _on_payment(tx: _Tx, p: Payment) -> None:
    ref = tx.referrals.get(p.referral_id)
    if ref is None:
        return  # a signup always comes first from stage "customer"; nothing to attach to
    tx.price(p.earned_at)
    rec = ref.payments.get(p.payment_id)
    if rec is not None and rec.status == HELD and not p.late and _late_case_open(tx, ref, p.payment_id):
        # judged late against a later attribution event; an earlier one has arrived since.
        # Rewarded now; the case stays open (and pausing) until a person decides it.
        _judge_payment(tx, ref, p, rec.refunds, late_ok=True)
        return
    if rec is not None and rec.status != PENDING:
        return  # one reward per invoice id
    refunds = rec.refunds if rec is not None else None
    window_end = add_months(ref.signed_up_at, tx.rules.reward_months)
    if ref.rejected or not (ref.signed_up_at <= p.created < window_end):
        tx.put(p.referral_id, _with_payment(ref, p.payment_id, PaymentRecord(
            INELIGIBLE, p.currency, refunds=refunds)))
        tx.line(p.referral_id, p.earned_at, "payment_ineligible", p.event_id, 0, None, p.payment_id,
                "referral rejected" if ref.rejected else "outside the reward window")
        return
    _judge_payment(tx, ref, p, refunds, late_ok=False)


def _late_case_open(tx: _Tx, ref: ReferralState, payment_id: str) -> bool:
    case = tx.cases.get(fact_id(LATE_ATTRIBUTION, tx.ucc, ref.referral_id, payment_id))
    return case is not None and case.status == OPEN


def _details(p: Payment) -> dict[str, object]:
    return {"customer_id": p.customer_id, "payment_id": p.payment_id, "currency": p.currency,
            "base": p.base, "created": p.created}


def _judge_payment(tx: _Tx, ref: ReferralState, p: Payment, refunds: dict[str, ChargeRefund] | None,
                   late_ok: bool) -> None:
    if p.late and not late_ok:
        ref = _with_payment(ref, p.payment_id, PaymentRecord(HELD, p.currency, refunds=refunds))
        tx.put(ref.referral_id, ref)
        tx.open_case(LATE_ATTRIBUTION, fact_id(LATE_ATTRIBUTION, tx.ucc, ref.referral_id, p.payment_id),
                     ref, _details(p), p.earned_at, p.event_id, held=p)
        return
    if tx.rules.currency_rules(p.currency) is None:
        ref = _with_payment(ref, p.payment_id, PaymentRecord(HELD, p.currency, refunds=refunds))
        tx.put(ref.referral_id, ref)
        tx.open_case(UNSUPPORTED_CURRENCY,
                     fact_id(UNSUPPORTED_CURRENCY, tx.ucc, ref.referral_id, p.payment_id),
                     ref, _details(p), p.earned_at, p.event_id, held=p)
        return
    _reward(tx, ref, p, refunds, capped=True)


def _reward(tx: _Tx, ref: ReferralState, p: Payment, refunds: dict[str, ChargeRefund] | None,
            capped: bool) -> None:
    """The normal rule: purchase bonus first, then the (capped) reward in instalments."""
    rules = tx.rules
    cfg = rules.currency_rules(p.currency)
    room = tx.room(ref, p.currency, capped)
    rid = ref.referral_id
    bonus = 0
    granted = ref.purchase_bonus_granted
    if not granted:
        granted = True
        bonus = _cut(cfg.purchase_bonus if cfg else 0, room)
        if room is not None:
            room -= bonus
        if bonus > 0:
            bonus_id = fact_id("purchase_bonus", tx.ucc, rid, p.payment_id)
            tx.add_entry(_new(Entry, (bonus_id, rid, p.payment_id, p.currency, bonus,
                                      p.earned_at + rules.hold_days * DAY)),
                         "purchase_bonus", p.event_id, p.earned_at)
    if p.plans:
        pools = _plan_rewards(rules, ref, p, room, capped)
        reward = sum(amount for _, amount in pools)
    else:  # no line names a price or product: the campaign's rate on the whole base
        reward = _cut(percent_of(p.base, rules.reward_percent), room)
        pools = [(p.currency, reward)]
    window_end = add_months(ref.signed_up_at, rules.reward_months)
    kept = 0
    reward_id = fact_id("reward", tx.ucc, rid, p.payment_id)
    parts = instalments(reward, p.months)
    for i, amount in enumerate(parts):
        at = add_months(p.earned_at, i) if i else p.earned_at
        if i > 0 and at >= window_end:
            break  # instalments earned after the reward window are dropped
        kept += amount
        if amount > 0:
            tx.add_entry(_new(Entry, (f"{reward_id}.{i}" if i else reward_id, rid, p.payment_id,
                                      p.currency, amount, at + rules.hold_days * DAY)), None)
    if kept > 0:  # one line for its instalments
        tx.line(rid, p.earned_at, "reward", p.event_id, kept, p.currency, p.payment_id)
    gross = dict(ref.gross)
    if bonus:
        gross[p.currency] = gross.get(p.currency, 0) + bonus
    # each cap pool is charged with its share of what was kept (all of it unless instalments
    # after the window were dropped); the rounding rest goes to the first pool
    charges = [amount for _, amount in pools] if kept == reward else split(kept, [a for _, a in pools])
    for (pool, _), charged in zip(pools, charges, strict=True):
        if charged:
            gross[pool] = gross.get(pool, 0) + charged
    rec = _new(PaymentRecord, (REWARDED, p.currency, kept, False, None, p.amount))
    ref = _referral(ref, purchase_bonus_granted=granted, gross=gross,
                    payments={**ref.payments, p.payment_id: rec})
    tx.put(rid, ref)
    if bonus + kept > 0:
        tx.notify(REWARD_EARNED, fact_id(REWARD_EARNED, tx.ucc, rid, p.payment_id), rid, p.currency,
                  bonus + kept, p.event_id, p.earned_at)
    if cfg is not None and cfg.review_above is not None and kept > cfg.review_above:
        ref = tx.open_case(LARGE_REWARD, fact_id(LARGE_REWARD, tx.ucc, rid, p.payment_id), ref, {
            "customer_id": p.customer_id, "payment_id": p.payment_id, "currency": p.currency,
            "amount": kept, "review_above": cfg.review_above,
        }, p.earned_at, p.event_id)
    # refunds that arrived before the reward was computed
    for charge, cr in sorted((refunds or {}).items()):
        _reverse(tx, rid, p.payment_id, charge, cr.amount, cr.amount_refunded, p.earned_at, p.event_id)
    # disputes lost before the reward was computed
    for dispute_id, d in sorted(tx.disputes.items()):
        if d.payment_id == p.payment_id and d.referral_id == rid and d.status == "lost":
            _reverse_dispute(tx, dispute_id, d, p.earned_at, p.event_id)


def _plan_rewards(rules: Rules, ref: ReferralState, p: Payment, room: int | None, capped: bool
                  ) -> list[tuple[str, int]]:
    """The reward of a payment whose lines name prices or products, per cap pool: lines of a
    plan with its own cap form the pool `<currency>|<plan>`, every other line the currency's
    pool (with the bonuses). Lines of one rate and pool are added before rounding, so an
    invoice whose lines all earn at the campaign rate earns exactly as without plans."""
    named = orjson.loads(p.plans)
    rest = p.base - sum(base for _, _, base in named)
    groups: dict[tuple[Decimal, str, int | None], int] = {}
    if rest:
        groups[(rules.reward_percent, p.currency, None)] = rest
    plans = rules.plans
    for price, product, base in named:
        # the line's price first, then its product (docs/rules.md#the-rules-file)
        plan_id = price if price in plans else product if product in plans else None
        plan = plans[plan_id] if plan_id is not None else None
        rate = rules.reward_percent if plan is None or plan.reward_percent is None else plan.reward_percent
        key: tuple[Decimal, str, int | None] = (rate, p.currency, None)
        if plan is not None and plan.max_reward_per_referral is not None:
            key = (rate, f"{p.currency}|{plan_id}", plan.max_reward_per_referral)
        groups[key] = groups.get(key, 0) + base
    out: list[tuple[str, int]] = []
    for (rate, pool, cap), base in groups.items():
        amount = percent_of(base, rate)
        if pool == p.currency:
            amount = _cut(amount, room)
            if room is not None:
                room -= amount
        elif capped and cap is not None:
            amount = min(amount, max(0, cap - ref.gross.get(pool, 0)))
        out.append((pool, amount))
    return out


def _reverse(tx: _Tx, rid: str, payment_id: str, charge: str, amount: int, refunded: int, at: int,
             source: str) -> None:
    """Bring a charge's cumulative refund reversal to round(r × amount_refunded / amount),
    never beyond what its lost disputes left of the reward."""
    ref = tx.referrals[rid]
    rec = ref.payments[payment_id]
    refunds = dict(rec.refunds or {})
    prev = refunds.get(charge)
    if prev is None:
        # an approved unlinked_refund case may already have reversed part of this charge
        case = tx.cases.get(fact_id(UNLINKED_REFUND, tx.ucc, rid, charge))
        prev = ChargeRefund(amount, 0, case.reversed if case is not None and case.status == APPROVED else 0)
    refunded = max(refunded, prev.amount_refunded)
    # never more than the reward, whatever a (malformed) refund claims
    target = min(rec.reward - prev.lost, pro_rata(rec.reward, refunded, amount or prev.amount))
    delta = target - prev.reversed
    if rec.status != REWARDED or delta <= 0:
        refunds[charge] = _new(ChargeRefund, (amount or prev.amount, refunded, prev.reversed, prev.lost))
        tx.put(rid, _with_payment(ref, payment_id, rec._replace(refunds=refunds)))
        return
    refunds[charge] = _new(ChargeRefund, (amount or prev.amount, refunded, target, prev.lost))
    tx.put(rid, _with_payment(ref, payment_id, rec._replace(refunds=refunds)))
    if ref.rejected and not rec.paid:
        return  # its reward was voided: so is its reversal
    eid = fact_id("reversal", tx.ucc, rid, payment_id, charge, target)
    tx.add_entry(_new(Entry, (eid, rid, payment_id, rec.currency, -delta, at)), "reversal", source, at)
    tx.notify(REWARD_REVERSED, fact_id(REWARD_REVERSED, eid), rid, rec.currency, delta, source, at)


def _reverse_dispute(tx: _Tx, dispute_id: str, d: DisputeState, at: int, source: str) -> None:
    """A lost dispute reverses round(r × disputed / the charge's amount) of the payment's reward,
    its own entry beside the refunds' (so the order they arrive in changes nothing), never more
    than what the refunds and other disputes left (docs/rules.md#disputes)."""
    ref = tx.referrals[d.referral_id]
    rec = ref.payments[d.payment_id]
    if rec.status != REWARDED:
        return  # applied with the reward (`_reward` calls this again)
    refunds = dict(rec.refunds or {})
    prev = refunds.get(d.charge_id) or ChargeRefund(0, 0, 0)
    whole = prev.amount or rec.amount or d.amount
    taken = sum(c.reversed + c.lost for c in refunds.values())
    delta = min(pro_rata(rec.reward, min(d.amount, whole), whole), rec.reward - taken)
    if delta <= 0:
        return
    refunds[d.charge_id] = prev._replace(lost=prev.lost + delta)
    tx.put(d.referral_id, _with_payment(ref, d.payment_id, rec._replace(refunds=refunds)))
    if ref.rejected and not rec.paid:
        return
    eid = fact_id("dispute_reversal", tx.ucc, d.referral_id, d.payment_id, d.charge_id, dispute_id)
    entry = _new(Entry, (eid, d.referral_id, d.payment_id, rec.currency, -delta, at))
    tx.add_entry(entry, "dispute_reversal", source, at)
    tx.notify(REWARD_REVERSED, fact_id(REWARD_REVERSED, eid), d.referral_id, rec.currency, delta, source, at)


def _on_refund(tx: _Tx, m: Refund) -> None:
    ref = tx.referrals.get(m.referral_id)
    if ref is None:
        return
    if m.payment_id not in ref.payments:
        # the refund came before its payment: kept and applied with the reward
        ref = _with_payment(ref, m.payment_id, PaymentRecord(PENDING, ""))
        tx.put(m.referral_id, ref)
    _reverse(tx, m.referral_id, m.payment_id, m.charge_id, m.amount, m.amount_refunded, m.created, m.event_id)
    _end_unlinked_case(tx, m)


def _on_unlinked_refund(tx: _Tx, m: UnlinkedRefund) -> None:
    ref = tx.referrals.get(m.referral_id)
    if ref is None:
        return
    case_id = fact_id(UNLINKED_REFUND, tx.ucc, m.referral_id, m.charge_id)
    case = tx.cases.get(case_id)
    if case is None:
        if _charge_linked(ref, m.charge_id):
            return  # its link arrived first after all: the normal rule has it
        # waits for its link; it opens at the next payout run if still unlinked then
        # (no history line: whether a refund waits depends on when its link arrives; what it
        # reverses, or the case it opens at a run, has one)
        tx.w_cases()[case_id] = Case(UNLINKED_REFUND, m.referral_id, WAITING, None, m)
        return
    assert case.refund is not None
    if m.amount_refunded <= case.refund.amount_refunded or case.status == LINKED:
        return
    tx.w_cases()[case_id] = case._replace(refund=m)
    if case.status == APPROVED:
        _reverse_unlinked(tx, case_id, m.created, m.event_id)


def _percentage_earned(ref: ReferralState) -> bool:
    return any(r.status == REWARDED and r.reward > 0 for r in ref.payments.values())


def _open_waiting_refunds(tx: _Tx, run: PayoutRun) -> None:
    """Before a run pays: a refund still waiting for its link opens its `unlinked_refund`
    case (and pauses the referral) if the referral has a percentage reward it could take
    back. Which refunds wait at a run is the same live and in replay: the run takes effect
    where its markers sit in the log (docs/design.md#one-order)."""
    for case_id, case in sorted(tx.cases.items()):
        if case.status != WAITING:
            continue
        ref = tx.referrals[case.referral_id]
        if not _percentage_earned(ref):
            continue  # nothing it could take back (yet): it keeps waiting
        m = case.refund
        assert m is not None
        details: dict[str, object] = {
            "customer_id": m.customer_id, "charge_id": m.charge_id, "currency": m.currency,
            "amount": m.amount, "amount_refunded": m.amount_refunded, "refunded_at": m.created,
        }
        opened = case._replace(status=OPEN, details=details, opened_at=run.requested_at)
        tx.w_cases()[case_id] = opened
        tx.out.append(routed(REVIEWS, tx.ucc, ReviewCase(case_id, UNLINKED_REFUND, tx.ucc, ref.referral_id,
                                                         details, run.requested_at)))
        tx.case_state(case_id, opened, OPEN, None, None)
        tx.line(ref.referral_id, run.requested_at, "case_opened", run.control_id, 0, None, case_id,
                UNLINKED_REFUND)
        tx.put(ref.referral_id, ref._replace(open_cases=(*ref.open_cases, case_id)))


def _end_unlinked_case(tx: _Tx, m: Refund) -> None:
    """The charge's link arrived: its waiting or open `unlinked_refund` case ends (LINKED),
    un-pausing the referral if it was the last open one; the normal rule reverses."""
    rid = m.referral_id
    case_id = fact_id(UNLINKED_REFUND, tx.ucc, rid, m.charge_id)
    case = tx.cases.get(case_id)
    if case is None or case.status not in (WAITING, OPEN):
        return
    tx.w_cases()[case_id] = case._replace(status=LINKED, details=None)
    if case.status == OPEN:
        tx.case_state(case_id, case, LINKED, m.created,
                      f"the refunded charge is linked to its payment now (refund event {m.event_id}); "
                      "the normal rule reverses the refund")
        tx.line(rid, m.created, "case_linked", m.event_id, 0, None, case_id, UNLINKED_REFUND)
        ref = tx.referrals[rid]
        tx.put(rid, ref._replace(open_cases=tuple(c for c in ref.open_cases if c != case_id)))


def _charge_linked(ref: ReferralState, charge: str) -> bool:
    return any(rec.refunds and charge in rec.refunds for rec in ref.payments.values())


def _reversal_room(tx: _Tx, ref: ReferralState, except_case: str) -> int:
    """What the referral earned as percentage rewards, net of every reversal so far: the
    most any further reversal may take back."""
    earned = sum(r.reward for r in ref.payments.values() if r.status == REWARDED)
    reversed_ = sum(cr.reversed for r in ref.payments.values() for cr in (r.refunds or {}).values())
    reversed_ += sum(c.reversed for cid, c in tx.cases.items()
                     if c.kind == UNLINKED_REFUND and c.referral_id == ref.referral_id and cid != except_case)
    return max(0, earned - reversed_)


def _reverse_unlinked(tx: _Tx, case_id: str, at: int, source: str) -> None:
    """An approved unlinked refund is reversed at the referral's percent, never beyond what
    the referral earned as percentage rewards net of earlier reversals."""
    case = tx.cases[case_id]
    m = case.refund
    assert m is not None
    ref = tx.referrals[case.referral_id]
    if _charge_linked(ref, m.charge_id):
        return  # linked since: the normal rule reverses it
    wanted = percent_of(min(m.amount_refunded, m.amount), tx.price(m.created).reward_percent)
    delta = min(wanted - case.reversed, _reversal_room(tx, ref, case_id))
    if delta <= 0:
        return
    target = case.reversed + delta
    tx.w_cases()[case_id] = case._replace(reversed=target)
    if ref.rejected and not ref.paid_any:
        return
    eid = fact_id("reversal", tx.ucc, ref.referral_id, None, m.charge_id, target)
    tx.add_entry(_new(Entry, (eid, ref.referral_id, None, m.currency, -delta, at)), "reversal", source, at)
    tx.notify(REWARD_REVERSED, fact_id(REWARD_REVERSED, eid), ref.referral_id, m.currency, delta, source, at)


def _on_dispute(tx: _Tx, m: DisputeChanged) -> None:
    """An open dispute withholds its payment's entries from payouts; won releases them;
    lost reverses the reward pro rata to the disputed amount, together with the charge's
    refunds (docs/rules.md#disputes). The latest state wins whatever the arrival order."""
    ref = tx.referrals.get(m.referral_id)
    if ref is None:
        return
    old = tx.disputes.get(m.dispute_id)
    closed = m.status in DISPUTE_CLOSED
    if old is not None and (old.created, old.status in DISPUTE_CLOSED) >= (m.created, closed):
        return  # a duplicate, or an older state arriving late
    d = _new(DisputeState, (m.referral_id, m.payment_id, m.charge_id, m.status, m.amount, m.created))
    tx.disputes = {**tx.disputes, m.dispute_id: d}
    if closed:
        # how it ended; which open states reach the referrer depends on their arrival order
        tx.line(m.referral_id, m.created, "dispute", m.event_id, 0, None, m.dispute_id, m.status)
    if m.status == "lost" and m.payment_id in ref.payments:
        _reverse_dispute(tx, m.dispute_id, d, m.created, m.event_id)  # else: with the reward


def _on_subscription_ended(tx: _Tx, m: SubscriptionEnded) -> None:
    if m.referral_id not in tx.referrals:
        return
    tx.notify(RECURRING_REWARDS_CANCELLED,
              fact_id(RECURRING_REWARDS_CANCELLED, tx.ucc, m.referral_id, m.customer_id, m.subscription_id),
              m.referral_id, None, 0, m.event_id, m.ended_at)
    tx.line(m.referral_id, m.ended_at, "subscription_ended", m.event_id, 0, None, m.subscription_id)


def _on_conflict(tx: _Tx, m: AttributionConflict) -> None:
    ref = tx.referrals.get(m.referral_id)
    if ref is None:
        return
    tx.open_case(ATTRIBUTION_CONFLICT,
                 fact_id(ATTRIBUTION_CONFLICT, tx.ucc, m.referral_id, m.customer_id, m.other_ucc),
                 ref, {"customer_id": m.customer_id, "other_ucc": m.other_ucc}, m.created, m.event_id)


# --- fraud signals (docs/rules.md#fraud-signals) -----------------------------------------------
# Each signal is a fact about a set that only grows (the identities a join has seen, the
# signups of a referrer), so the cases it opens do not depend on the order the facts arrive
# in. A case's details and time are facts of its referral alone, never of the piece of
# evidence that happened to complete the set, so live and replay write the same case.


def _open_fraud_case(tx: _Tx, ref: ReferralState, signal: str, details: dict[str, object]) -> None:
    """One `suspected_fraud` case per referral and signal; it pauses the referral like every
    case. Dated at the referral's signup, the fact under suspicion."""
    if ref.rejected:
        return  # voided already: nothing left to pause
    case_id = fact_id(SUSPECTED_FRAUD, tx.ucc, ref.referral_id, signal)
    tx.open_case(SUSPECTED_FRAUD, case_id, ref, {"signal": signal, **details}, ref.signed_up_at,
                 _signup_source(tx, ref.referral_id))


def _signup_source(tx: _Tx, rid: str) -> str:
    """The event of the referral's signup: the source of its fraud cases' history lines, which
    no arrival order changes (the evidence that completed a match may differ)."""
    pending: list[Line] = tx.lines.get(rid, [])
    for line in (*tx.referrals[rid].lines, *pending):
        if line.kind == "signup":
            return line.source
    return ""


def _on_identity_match(tx: _Tx, m: IdentityMatch) -> None:
    """A join found the referral's customer showing its referrer's own identity, or paying
    with a card that pays for `referrals` referrals. Judged by the rules (campaign and
    revision) in force at the referral's signup."""
    ref = tx.referrals.get(m.referral_id)
    if ref is None:
        return  # its signup always comes first from stage "customer"
    rules = tx.price(ref.signed_up_at)
    if m.signal == SELF_REFERRAL:
        if rules.self_referral_check:
            _open_fraud_case(tx, ref, SELF_REFERRAL, {"customer_id": m.customer_id})
    elif m.signal == SHARED_CARD:
        limit = rules.max_referrals_per_card
        if limit and m.referrals > limit:
            _open_fraud_case(tx, ref, SHARED_CARD, {"customer_id": m.customer_id,
                                                   "max_referrals_per_card": limit})


def _check_velocity(tx: _Tx, t: int) -> None:
    """A signup at `t` joined the referrer's signups: every referral that now lies in a
    24-hour window [s, s + 1 day) with more than its `max_signups_per_day` signups is
    suspect. Only windows holding `t` changed, and each starts at a signup time in
    (t − 1 day, t], so only referrals signed up within a day of `t` are looked at."""
    close = 0
    for r in tx.referrals.values():
        if -DAY < r.signed_up_at - t < DAY:
            close += 1
            if close > 1:
                break
    else:
        return  # alone within a day of t: no window holds more than one signup, and a limit is ≥ 1
    lo, hi = t - 2 * DAY, t + 2 * DAY
    near = sorted((r.signed_up_at, rid) for rid, r in tx.referrals.items() if lo < r.signed_up_at < hi)
    times = [at for at, _ in near]
    # the windows that hold t: (start index, number of signups in it)
    windows = [(i, bisect_left(times, times[i] + DAY) - i) for i in range(len(times))
               if t - DAY < times[i] <= t and (i == 0 or times[i - 1] != times[i])]
    best = max((count for _, count in windows), default=0)
    for j, (at, rid) in enumerate(near):
        if abs(at - t) >= DAY:
            continue
        ref = tx.referrals[rid]
        limit = tx.price(at).max_signups_per_day
        if not limit or best <= limit or ref.rejected:
            continue
        if fact_id(SUSPECTED_FRAUD, tx.ucc, rid, VELOCITY) in tx.cases:
            continue
        if any(i <= j < i + count and count > limit for i, count in windows):
            _open_fraud_case(tx, ref, VELOCITY, {"max_signups_per_day": limit})


# --- control ------------------------------------------------------------------------------


def _on_assignment(tx: _Tx, a: CampaignAssignment) -> None:
    """From `published_at` on, never before: facts priced earlier keep their campaign."""
    entry = (a.published_at, a.campaign)
    if entry in tx.campaigns:
        return
    tx.campaigns = tuple(sorted((*tx.campaigns, entry)))
    tx.line("", a.published_at, "campaign_assigned", a.control_id, 0, None, a.campaign,
            _by(a.actor, a.reason))


def _on_decision(tx: _Tx, d: ReviewDecision) -> None:
    case = tx.cases.get(d.case_id)
    if case is None or case.status != OPEN:
        return  # unknown, or already decided: deciding twice changes nothing
    ref = tx.referrals[case.referral_id]
    ref = ref._replace(open_cases=tuple(c for c in ref.open_cases if c != d.case_id))
    tx.put(ref.referral_id, ref)
    status = APPROVED if d.approve else REJECTED
    tx.w_cases()[d.case_id] = case._replace(status=status, held=None, details=None)
    tx.case_state(d.case_id, case, status, d.decided_at, d.reason)
    tx.line(ref.referral_id, d.decided_at, f"case_{status}", d.control_id, 0, None, d.case_id,
            f"{case.kind}: {_by(d.actor, d.reason)}")
    if case.kind == UNLINKED_REFUND:
        if d.approve:
            _reverse_unlinked(tx, d.case_id, d.decided_at, d.case_id)
        return  # rejected: the refund is ignored
    if not d.approve:
        _void(tx, ref, d)
        return
    p = case.held
    if p is None:
        return  # attribution_conflict / large_reward: releasing is un-pausing
    rec = ref.payments.get(p.payment_id)
    if rec is not None and rec.status != HELD:
        return  # rewarded since (an earlier attribution event arrived): nothing more
    refunds = rec.refunds if rec is not None else None
    tx.price(p.earned_at)  # priced as when it was paid, not when it was decided
    if ref.rejected:
        tx.put(ref.referral_id, _with_payment(ref, p.payment_id, PaymentRecord(
            INELIGIBLE, p.currency, refunds=refunds)))
        return
    if case.kind == LATE_ATTRIBUTION:
        _judge_payment(tx, ref, p, refunds, late_ok=True)
    else:  # unsupported_currency: the normal rule, without a cap
        _reward(tx, ref, p, refunds, capped=False)


def _void(tx: _Tx, ref: ReferralState, d: ReviewDecision) -> None:
    """Reject: the referral's unpaid entries and their reversals are never payable."""
    keep: list[Entry] = []
    # (kind, payment, currency) → what leaves the figures, for one history line each
    gone: dict[tuple[str, str, str], int] = {}
    for e in ref.entries:
        if e.amount < 0:
            rec = ref.payments.get(e.payment_id) if e.payment_id else None
            paid = rec.paid if rec is not None else ref.paid_any
            if paid:
                keep.append(e)  # takes back money already paid
                continue
            tx.w_reversed()[e.currency] -= -e.amount
            key = ("reversal_voided", e.payment_id or "", e.currency)
        else:
            tx.w_earned()[e.currency] -= e.amount
            key = ("voided", e.payment_id or "", e.currency)
        gone[key] = gone.get(key, 0) - e.amount
    for (kind, payment_id, currency), amount in gone.items():
        tx.line(ref.referral_id, d.decided_at, kind, d.control_id, amount, currency, payment_id or None)
    tx.put(ref.referral_id, ref._replace(rejected=True, entries=tuple(keep)))


def _disputed(disputes: dict[str, DisputeState]) -> frozenset[str]:
    """Payments with an open dispute: their positive entries wait (docs/rules.md#disputes)."""
    if not disputes:
        return frozenset()
    return frozenset(d.payment_id for d in disputes.values() if d.status not in DISPUTE_CLOSED)


def _payable(referrals: dict[str, ReferralState], currency: str | None, as_of: int,
             disputed: frozenset[str] = frozenset(), ledger: tuple[Entry, ...] = ()) -> list[Entry]:
    # the referrer's own entries (adjustments, payouts paid again) are never paused
    out = [e for e in ledger if (currency is None or e.currency == currency) and e.payable_at <= as_of]
    for r in referrals.values():
        paused = bool(r.open_cases)
        for e in r.entries:
            if currency is not None and e.currency != currency:
                continue
            if e.payable_at > as_of:
                continue
            if e.amount > 0 and (paused or (disputed and e.payment_id in disputed)):
                continue  # paused by a review case, or its payment's charge is disputed
            out.append(e)
    return out


def _balances(payable: list[Entry]) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in payable:
        out[e.currency] = out.get(e.currency, 0) + e.amount
    return out


def _reaches(balance: int, currency: str, rules: Rules) -> bool:
    """Whether a payable balance is paid out: it reaches the currency's min_payout (1 for a
    currency the rules do not configure); a smaller or negative one carries over."""
    cfg = rules.currency_rules(currency)
    return balance >= (cfg.min_payout if cfg else 1)


def note_run(state: ReferrerState, run: PayoutRun) -> ReferrerState:
    """What a payout run does to a referrer it pays nothing and opens nothing for: its id is
    recorded (once), so the same run id again pays nothing more."""
    if run.run_id in state.runs:
        return state
    return _new(ReferrerState, (state.ucc, state.referrals, state.earned, state.reversed, state.paid,
                                state.cases, (*state.runs, run.run_id), state.campaigns, state.disputes,
                                state.payouts, state.ledger, state.lines))


# `due_at` of a referrer a run must always step (a refund case waits to open)
ALWAYS = -(2**62)


def due_at(state: ReferrerState, book: RuleBook) -> int | None:
    """The earliest `as_of` at which a payout run can do more for this referrer than
    `note_run`: open a waiting refund case, or pay a currency. None: no run can, whatever its
    `as_of`, until the referrer changes. Never later than the truth: every unpaid earning
    counts, whether or not a review case or a dispute pauses it and without the reversals
    that lower the balance, against the smallest min_payout any revision or campaign of
    `book` sets, so a run with an earlier `as_of` finds nothing to pay (the engine's payout
    runs skip such referrers: docs/performance.md#payout-runs)."""
    if state.cases and any(c.status == WAITING for c in state.cases.values()):
        return ALWAYS
    earnings: dict[str, list[tuple[int, int]]] = {}
    for r in state.referrals.values():
        for e in r.entries:
            if e.amount > 0:
                earnings.setdefault(e.currency, []).append((e.payable_at, e.amount))
    for e in state.ledger:
        if e.amount > 0:
            earnings.setdefault(e.currency, []).append((e.payable_at, e.amount))
    due: int | None = None
    for currency, items in earnings.items():
        floor = min_payout_floor(book, currency)
        items.sort()
        total = 0
        for at, amount in items:
            total += amount
            if total >= floor:
                if due is None or at < due:
                    due = at
                break
    return due


def min_payout_floor(book: RuleBook, currency: str) -> int:
    """The smallest min_payout of `currency` in any revision and campaign of `book` (1 where
    one does not configure the currency)."""
    floor: int | None = None
    for revision in book.revisions:
        default = revision.rules
        for rules in (default, *default.campaigns.values()):
            cfg = rules.currency_rules(currency)
            least = cfg.min_payout if cfg else 1
            if floor is None or least < floor:
                floor = least
    return 1 if floor is None else floor


def opens_referrer(message: ReferrerMessage) -> bool:
    """Whether `message` makes a referrer of a ucc with no state yet: every domain event, an
    assignment or an adjustment does; a payout run, a review decision or a payout's outcome
    for a referrer with nothing changes nothing, so a caller need neither step nor store it."""
    return not isinstance(message, PayoutRun | ReviewDecision | PayoutOutcome)


def _on_payout_run(tx: _Tx, run: PayoutRun, payable: list[Entry]) -> None:
    tx.runs = (*tx.runs, run.run_id)
    rules = tx.rules
    by_currency: dict[str, list[Entry]] = {}
    for e in payable:
        by_currency.setdefault(e.currency, []).append(e)
    covered: set[str] = set()
    # referral id → the payment ids whose reward is now (partly) paid, in entry order
    paid_by_referral: dict[str, list[str | None]] = {}
    for currency in sorted(by_currency):
        entries = by_currency[currency]
        balance = sum(e.amount for e in entries)
        if not _reaches(balance, currency, rules):
            continue  # a small or negative balance carries over
        payout_id = fact_id("payout", tx.ucc, run.run_id, currency)
        tx.out.append(routed(PAYOUTS, tx.ucc, PayoutCommand(
            payout_id, run.run_id, tx.ucc, currency, balance, run.as_of,
            # sorted: which entries a payout covers is a fact, the order they arrived in is not
            tuple(sorted(e.entry_id for e in entries)), rules.revision,
        )))
        tx.notify(PAYOUT_CREATED, fact_id(PAYOUT_CREATED, payout_id), None, currency, balance,
                  run.control_id, run.requested_at)
        tx.w_paid()[currency] = tx.paid.get(currency, 0) + balance
        tx.w_payouts()[payout_id] = _new(PayoutRecord, (run.run_id, currency, balance, run.requested_at,
                                                        run.as_of, PAYOUT_PENDING, ""))
        # (its history line is the PayoutRecord itself: `history()` writes it)
        for e in entries:
            covered.add(e.entry_id)
            paid = paid_by_referral.setdefault(e.referral_id, [])
            if e.amount > 0:
                paid.append(e.payment_id)
    if tx.ledger and paid_by_referral.pop("", None) is not None:
        tx.ledger = tuple(e for e in tx.ledger if e.entry_id not in covered)
    # one update per referral: its paid entries leave, their payments are marked paid
    for rid, payment_ids in paid_by_referral.items():
        ref = tx.referrals[rid]
        if payment_ids:
            payments = ref.payments
            for pid in payment_ids:
                rec = payments.get(pid) if pid else None
                if rec is not None and not rec.paid:
                    if payments is ref.payments:
                        payments = dict(payments)
                    payments[pid or ""] = _new(PaymentRecord, (rec.status, rec.currency, rec.reward, True,
                                                               rec.refunds, rec.amount))
            ref = _referral(ref, payments=payments, paid_any=True)
        tx.put(rid, _referral(ref, entries=tuple(e for e in ref.entries if e.entry_id not in covered)))


def _on_outcome(tx: _Tx, o: PayoutOutcome) -> None:
    """What became of a payout (docs/rules.md#the-payout-lifecycle). Paid: recorded. Failed or
    returned: no longer paid, and its amount is owed again, payable as of the payout's own
    `as_of` (an entry of the referrer's own that the next run pays), with a notification. A
    payout has one outcome, but a paid one may come back returned; failed and returned are
    final."""
    rec = tx.payouts.get(o.payout_id)
    if rec is None:
        return  # not a payout of this referrer (yet): nothing to apply
    if not outcome_applies(rec.status, o.status):
        return  # a second outcome, or one that cannot follow the first: changes nothing
    tx.w_payouts()[o.payout_id] = rec._replace(status=o.status, reference=o.reference or rec.reference)
    note = _by(o.actor, o.reason) + (f"; reference {o.reference}" if o.reference else "")
    if o.status == PAID:
        tx.line("", o.at, "payout_paid", o.control_id, 0, rec.currency, o.payout_id, note)
        return
    kind = PAYOUT_FAILED if o.status == FAILED else PAYOUT_RETURNED
    tx.w_paid()[rec.currency] = tx.paid.get(rec.currency, 0) - rec.amount
    entry = _new(Entry, (fact_id(kind, o.payout_id), "", None, rec.currency, rec.amount, rec.as_of))
    tx.add_entry(entry, None, counts=False)
    tx.line("", o.at, kind, o.control_id, rec.amount, rec.currency, o.payout_id, note)
    tx.notify(kind, fact_id(kind, o.payout_id), None, rec.currency, rec.amount, o.control_id, o.at)


def _on_adjustment(tx: _Tx, a: LedgerAdjustment) -> None:
    """A person's ledger entry, payable from its time on, earned (positive) or reversed
    (negative) like any other (docs/rules.md#manual-adjustments). Its id adjusts once."""
    if any(line.kind == "adjustment" and line.ref == a.adjustment_id for line in tx._state.lines):
        return
    eid = fact_id("adjustment", tx.ucc, a.adjustment_id)
    tx.add_entry(_new(Entry, (eid, "", None, a.currency, a.amount, a.at)), None)
    tx.line("", a.at, "adjustment", a.control_id, a.amount, a.currency, a.adjustment_id,
            _by(a.actor, a.reason))


def _by(actor: str, reason: str) -> str:
    return f"{reason} (by {actor})" if actor else reason


# --- queries --------------------------------------------------------------------------------


def summary(state: ReferrerState, as_of: int) -> ReferrerSummary:
    """Referrals, and per currency earned, reversed, net, paid and payable as of `as_of`."""
    currencies = sorted(set(state.earned) | set(state.reversed) | set(state.paid))
    out: dict[str, CurrencySummary] = {}
    for c in currencies:
        earned = state.earned.get(c, 0)
        rev = state.reversed.get(c, 0)
        payable = sum(e.amount for e in _payable(state.referrals, c, as_of, _disputed(state.disputes),
                                                 state.ledger))
        out[c] = CurrencySummary(earned, rev, earned - rev, state.paid.get(c, 0), payable)
    open_cases = sum(1 for case in state.cases.values() if case.status == OPEN)
    return ReferrerSummary(state.ucc, len(state.referrals), out, open_cases)


@dataclass(frozen=True, slots=True)
class HistoryLine:
    """A line of `history()`: `Line` with the referral it belongs to (None: the referrer's own)
    and the summary figure its amount moves (FIGURES)."""

    at: int
    kind: str
    source: str
    referral_id: str | None
    amount: int
    currency: str | None
    figure: str | None
    ref: str | None
    note: str


def figure_of(kind: str, amount: int) -> str | None:
    if kind == "adjustment":
        return "earned" if amount > 0 else "reversed"
    return FIGURES.get(kind)


_RANK = {kind: i for i, kind in enumerate(LINE_KINDS)}


def history(state: ReferrerState) -> list[HistoryLine]:
    """Everything that happened to the referrer, oldest first: by the time of each fact, then
    its source, then in the order one fact makes its lines; so the live worker and replay,
    which may fold two customers' events in either order, list them alike. Per currency,
    the amounts add up to net − paid, and those of each figure to that figure of `summary`
    (earned: +, reversed: −, paid: −) (docs/rules.md#audit-trail)."""
    out = [HistoryLine(line.at, line.kind, line.source, None, line.amount, line.currency,
                       figure_of(line.kind, line.amount), line.ref, line.note) for line in state.lines]
    for payout_id, p in state.payouts.items():
        out.append(HistoryLine(p.made_at, "payout", PayoutRun(p.run_id, 0, 0).control_id, None, -p.amount,
                               p.currency, "paid", payout_id, f"run {p.run_id}"))
    for rid, r in state.referrals.items():
        out += [HistoryLine(line.at, line.kind, line.source, rid, line.amount, line.currency,
                            figure_of(line.kind, line.amount), line.ref, line.note) for line in r.lines]
    out.sort(key=lambda h: (h.at, h.source, _RANK.get(h.kind, len(_RANK)), h.referral_id or "", h.ref or "",
                            h.note, h.amount))
    return out


# --- table value codec ----------------------------------------------------------------------

_STATUS = (PENDING, HELD, REWARDED, INELIGIBLE)


def _payment_row(p: Payment) -> list[object]:
    return [p.ucc, p.referral_id, p.customer_id, p.payment_id, p.currency, p.base, p.created, p.earned_at,
            p.months, p.late, p.event_id, p.plans, p.amount]


def _refund_row(m: UnlinkedRefund) -> list[object]:
    return [m.ucc, m.referral_id, m.customer_id, m.charge_id, m.currency, m.amount, m.amount_refunded,
            m.created, m.event_id]


def _referral_row(r: ReferralState) -> list[object]:
    return [r.signed_up_at, r.rejected, r.purchase_bonus_granted, r.paid_any, r.gross,
            {pid: [_STATUS.index(p.status), p.currency, p.reward, p.paid,
                   {ch: [c.amount, c.amount_refunded, c.reversed, c.lost] for ch, c in p.refunds.items()}
                   if p.refunds else None, p.amount]
             for pid, p in r.payments.items()},
            r.open_cases,
            [[e.entry_id, e.payment_id, e.currency, e.amount, e.payable_at] for e in r.entries],
            [_line_row(line) for line in r.lines]]


# What `dumps` may reuse: each referral's encoded row, by referral id, with the referral it
# encodes. States are immutable and a step shares the referrals it did not touch with the
# state before it, so a referral that is the very same object encodes to the same bytes.
EncodedReferrals = dict[str, tuple[ReferralState, orjson.Fragment]]


def dumps(s: ReferrerState, encoded: EncodedReferrals | None = None) -> bytes:
    """The state as compact JSON (lists, not objects: it is stored once per referrer).

    With `encoded` (kept by the caller for this referrer between calls, updated here),
    only the referrals that changed since the last call are encoded again: a step touches
    one or two referrals of a referrer that may have hundreds. The bytes are the same
    either way."""
    if encoded is None:
        referrals: dict[str, object] = {rid: _referral_row(r) for rid, r in s.referrals.items()}
    else:
        referrals = {}
        for rid, r in s.referrals.items():
            known = encoded.get(rid)
            if known is None or known[0] is not r:
                known = encoded[rid] = (r, orjson.Fragment(orjson.dumps(_referral_row(r))))
            referrals[rid] = known[1]
    return orjson.dumps([
        s.ucc,
        referrals,
        s.earned, s.reversed, s.paid,
        {cid: [c.kind, c.referral_id, c.status, _payment_row(c.held) if c.held else None,
               _refund_row(c.refund) if c.refund else None, c.reversed, c.details, c.opened_at]
         for cid, c in s.cases.items()},
        s.runs,
        s.campaigns,
        {k: list(d) for k, d in s.disputes.items()},
        {k: [p.run_id, p.currency, p.amount, p.made_at, p.as_of] if p.status == PAYOUT_PENDING else list(p)
         for k, p in s.payouts.items()},
        [[e.entry_id, e.currency, e.amount, e.payable_at] for e in s.ledger],
        [_line_row(line) for line in s.lines],
    ])


_KIND_CODES = {kind: i for i, kind in enumerate(LINE_KINDS)}
_EMPTY = (None, None, "")  # trailing currency, ref, note left out of a stored line


def _line_row(line: Line) -> list[object]:
    """A history line as stored: its kind as a number, trailing empty fields left out (a
    referrer keeps every line it ever made)."""
    row: list[object] = [line.at, _KIND_CODES[line.kind], line.source, line.amount, line.currency, line.ref,
                         line.note]
    while len(row) > 4 and row[-1] == _EMPTY[len(row) - 5]:
        row.pop()
    return row


def _line(row: list[Any]) -> Line:
    return Line(row[0], LINE_KINDS[row[1]], row[2], row[3], *row[4:], *(None, None, "")[len(row) - 4:])


def _payment(row: list[Any]) -> Payment:
    # rows stored before plans have 11 fields, before the amount 12
    return Payment(*[*row, *["", 0][len(row) - 11:]])


def _payout_record(row: list[Any]) -> PayoutRecord:
    if len(row) in (4, 6):  # stored before payouts kept their as_of: their request time stands in
        row = [*row[:4], row[3], *row[4:]]
    return PayoutRecord(*[*row, PAYOUT_PENDING, ""][:7])


def loads(raw: bytes) -> ReferrerState:
    ucc, referrals, earned, reversed_, paid, cases, runs, *more = orjson.loads(raw)
    campaigns = tuple((int(t), str(c)) for t, c in more[0]) if more else ()  # none before campaigns
    disputes = {k: DisputeState(*d) for k, d in more[1].items()} if len(more) > 1 else {}
    # values stored before payouts, adjustments and the history have none of them
    payouts = ({k: _payout_record(p) for k, p in more[2].items()} if len(more) > 2 else {})
    ledger = tuple(Entry(e[0], "", None, *e[1:]) for e in more[3]) if len(more) > 3 else ()
    own_lines = tuple(_line(row) for row in more[4]) if len(more) > 4 else ()
    return ReferrerState(
        ucc,
        {rid: ReferralState(
            rid, r[0], r[1], r[2], r[3], r[4],
            {pid: PaymentRecord(_STATUS[p[0]], p[1], p[2], p[3],
                                {ch: ChargeRefund(*c) for ch, c in p[4].items()} if p[4] else None,
                                *p[5:6])
             for pid, p in r[5].items()},
            tuple(r[6]), tuple(Entry(e[0], rid, *e[1:]) for e in r[7]),
            tuple(_line(row) for row in r[8]) if len(r) > 8 else ())
         for rid, r in referrals.items()},
        earned, reversed_, paid,
        # rows stored before cases kept their details and opening time have six fields
        {cid: Case(c[0], c[1], c[2], _payment(c[3]) if c[3] else None,
                   UnlinkedRefund(*c[4]) if c[4] else None, c[5], *c[6:8])
         for cid, c in cases.items()},
        tuple(runs),
        campaigns,
        disputes,
        payouts,
        ledger,
        own_lines,
    )
