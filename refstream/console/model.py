"""What the console shows, computed from a fold of the log (no I/O, no clock).

The console's figures come from the same fold `refstream replay` makes: the stripe-events
and control topics merged in the workers' one order (docs/design.md#one-order) and folded
with the workers' own pure code (`processors.rules.engine.Engine`) under the log's own rules
revisions. So the console has no data of its own: every figure is the log's, as the
workers computed it, and the overview's totals are replay's totals.

`fold` also notes, while it folds, what each review decision did to its referral (released,
computed, voided), and collects the payout commands, so the console can show them without
reading the 30-day output topics. Everything else here turns a `Fold` into the rows a page
shows; amounts stay in minor units until a template formats them.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from processors.rules import referrer
from processors.rules.engine import Engine
from processors.rules.money import DAY
from processors.rules.referrer import ReferralState, ReferrerState
from projections.logsource import LogRecord
from projections.report import money
from schemas import commands, control
from schemas.events import PAYOUTS
from schemas.rules import RuleBook, Rules
from schemas.stripe import StripeParseError, parse_event
from schemas.topics import CONTROL, STRIPE_EVENTS, marker_offset, placed_offset

UNREADABLE = (StripeParseError, control.ControlDecodeError)


# --- the fold -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DecisionEffect:
    """What the first decision on a case did to the case's referral, in minor units per
    currency (docs/rules.md#review-cases)."""

    case_id: str
    approve: bool
    changed: bool  # False: the case was not open then (decided before, or unknown)
    referral_id: str
    released: dict[str, int]  # positive unpaid entries that were withheld and no longer are
    computed: dict[str, int]  # entries the decision made (a late payment's reward, a reversal)
    voided: dict[str, int]  # unpaid positive entries removed from earned
    voided_reversals: dict[str, int]  # reversals removed (as positive amounts)
    still_withheld_by: tuple[str, ...]  # other open cases that keep the referral paused


@dataclass
class Fold:
    """The log folded up to `position` (end offsets per topic partition)."""

    engine: Engine
    position: dict[str, int] = field(default_factory=dict)  # "topic#partition" → end offset folded
    control: list[control.ControlRecord] = field(default_factory=list)  # decoded, in fold order
    payouts: list[commands.PayoutCommand] = field(default_factory=list)  # in the order made
    effects: dict[str, DecisionEffect] = field(default_factory=dict)  # by case id: the first decision
    stripe_events: int = 0
    control_events: int = 0
    skipped: int = 0  # records neither workers nor replay can read (dead letters)
    seconds: float = 0.0  # how long the fold took
    has_revision: bool = True  # False: no worker has published the first rules revision yet
    incremental: bool = False  # this fold continued an earlier one with what was appended since
    control_offsets: set[int] = field(default_factory=set)  # control records folded (notes aside)
    placed: set[int] = field(default_factory=set)  # control offsets the workers placed (their notes)

    @property
    def unplaced(self) -> set[int]:
        """Control records folded by their timestamp because no worker had placed them yet:
        a later fold must start over to fold them where the workers placed them."""
        return self.control_offsets - self.placed

    def continued(self) -> Fold:
        """A copy to fold more records into, leaving this one as it is (pages may be reading
        it): the engine's states are immutable, so copying its dicts copies everything."""
        engine = copy.copy(self.engine)
        engine.referrers = dict(self.engine.referrers)
        engine.customers = dict(self.engine.customers)
        engine.invoices = dict(self.engine.invoices)
        return Fold(engine, dict(self.position), list(self.control), list(self.payouts), dict(self.effects),
                    self.stripe_events, self.control_events, self.skipped, 0.0, self.has_revision, True,
                    set(self.control_offsets), set(self.placed))


def _is_marker(rec: LogRecord) -> bool:
    key = rec.key
    return key is not None and key[:1] == b"\x00" and (
        marker_offset(key) is not None or placed_offset(key) is not None
    )


def fold(batches: Iterable[Sequence[LogRecord]], book: RuleBook, into: Fold | None = None) -> Fold:
    """Fold merged log batches (as `projections.logsource` yields them) the way replay does:
    markers skipped (the merge placed their control records), unreadable records counted and
    skipped, rules revisions followed as they come. `into`: a fold to go on with (changed in
    place; see `Fold.continued`)."""
    out = into if into is not None else Fold(Engine(book, follow_log=True))
    engine = out.engine
    for batch in batches:
        for rec in batch:
            if rec.kind == CONTROL:
                placed = placed_offset(rec.key)
                if placed is not None:
                    out.placed.add(placed)
                    continue
                out.control_offsets.add(rec.offset)
            elif _is_marker(rec):
                continue
            try:
                if rec.kind == STRIPE_EVENTS:
                    out.stripe_events += 1
                    produced = engine.feed_event(parse_event(rec.value))
                else:
                    out.control_events += 1
                    order = control.decode(rec.value)
                    out.control.append(order)
                    if isinstance(order, control.ReviewDecision):
                        before = engine.referrers.get(order.ucc)
                        produced = engine.feed_control_record(order)
                        if order.case_id not in out.effects:
                            after = engine.referrers.get(order.ucc)
                            out.effects[order.case_id] = effect_of(order, before, after)
                    else:
                        produced = engine.feed_control_record(order)
            except UNREADABLE:
                out.skipped += 1
                continue
            for r in produced:
                if r.dest == PAYOUTS and isinstance(r.record, commands.PayoutCommand):
                    out.payouts.append(r.record)
    return out


def _add(into: dict[str, int], currency: str, amount: int) -> None:
    into[currency] = into.get(currency, 0) + amount


def effect_of(d: control.ReviewDecision, before: ReferrerState | None,
              after: ReferrerState | None) -> DecisionEffect:
    """Compare the decision's referral just before and just after the decision was folded."""
    case = before.cases.get(d.case_id) if before is not None else None
    if before is None or after is None or case is None:
        return DecisionEffect(d.case_id, d.approve, False, "", {}, {}, {}, {}, ())
    rid = case.referral_id
    ref_b, ref_a = before.referrals.get(rid), after.referrals.get(rid)
    changed = case.status == referrer.OPEN and after.cases[d.case_id].status != referrer.OPEN
    if ref_b is None or ref_a is None or not changed:
        return DecisionEffect(d.case_id, d.approve, changed, rid, {}, {}, {}, {}, ())
    was = {e.entry_id: e for e in ref_b.entries}
    now = {e.entry_id: e for e in ref_a.entries}
    released: dict[str, int] = {}
    computed: dict[str, int] = {}
    voided: dict[str, int] = {}
    voided_rev: dict[str, int] = {}
    for eid, e in was.items():
        if eid not in now:
            _add(voided if e.amount > 0 else voided_rev, e.currency, abs(e.amount))
    for eid, e in now.items():
        if eid not in was:
            _add(computed, e.currency, e.amount)
    if not ref_a.open_cases and not ref_a.rejected:
        for eid, e in now.items():
            if e.amount > 0 and eid in was:
                _add(released, e.currency, e.amount)
    return DecisionEffect(d.case_id, d.approve, True, rid, released, computed, voided, voided_rev,
                          tuple(ref_a.open_cases))


def with_run(f: Fold, run: control.PayoutRun) -> list[commands.PayoutCommand]:
    """The payouts `run` would make if it were folded next, without changing `f`: the
    engine's states are immutable, so a copy of its dicts is a copy of everything."""
    engine = copy.copy(f.engine)
    engine.referrers = dict(f.engine.referrers)
    engine.customers = dict(f.engine.customers)
    engine.invoices = dict(f.engine.invoices)
    produced = engine.feed_control_record(run)
    return [r.record for r in produced if isinstance(r.record, commands.PayoutCommand)]


# --- figures --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Totals:
    """One currency over the whole programme."""

    currency: str
    earned: int = 0
    reversed: int = 0
    net: int = 0
    paid: int = 0
    payable: int = 0  # payable as of the overview's time, before min_payout
    withheld: int = 0  # positive unpaid entries of referrals paused by an open case
    held_payments: int = 0  # payments held by a case whose reward is only computed if approved


def withheld_of(state: ReferrerState) -> dict[str, int]:
    """Positive unpaid entries of the referrer's paused referrals, per currency: what its
    open cases withhold from payouts (docs/rules.md#review-cases)."""
    out: dict[str, int] = {}
    for r in state.referrals.values():
        if r.open_cases and not r.rejected:
            for e in r.entries:
                if e.amount > 0:
                    _add(out, e.currency, e.amount)
    return out


def held_payments_of(state: ReferrerState) -> list[tuple[str, Any]]:
    """(case id, the payment it holds) for open late_attribution / unsupported_currency cases."""
    return sorted(((cid, c.held) for cid, c in state.cases.items()
                   if c.status == referrer.OPEN and c.held is not None), key=lambda x: x[0])


def totals(f: Fold, as_of: int) -> list[Totals]:
    acc: dict[str, dict[str, int]] = {}
    for s in f.engine.summaries(as_of):
        for c, cs in s.currencies.items():
            t = acc.setdefault(c, {})
            for name in ("earned", "reversed", "net", "paid", "payable"):
                t[name] = t.get(name, 0) + getattr(cs, name)
    for state in f.engine.referrers.values():
        for c, amount in withheld_of(state).items():
            t = acc.setdefault(c, {})
            t["withheld"] = t.get("withheld", 0) + amount
        for _, p in held_payments_of(state):
            t = acc.setdefault(p.currency, {})
            t["held_payments"] = t.get("held_payments", 0) + 1
    return [Totals(c, **acc[c]) for c in sorted(acc)]


# --- referrers ------------------------------------------------------------------------------

SORTS = ("ucc", "currency", "referrals", "earned", "reversed", "net", "paid", "payable", "open_cases")


@dataclass(frozen=True, slots=True)
class Row:
    """A referrer in one currency (a referrer with referrals but no money yet: currency "")."""

    ucc: str
    currency: str
    referrals: int
    earned: int
    reversed: int
    net: int
    paid: int
    payable: int
    open_cases: int


def rows(f: Fold, as_of: int) -> list[Row]:
    out: list[Row] = []
    for s in f.engine.summaries(as_of):
        if not s.currencies:
            if s.referrals:
                out.append(Row(s.ucc, "", s.referrals, 0, 0, 0, 0, 0, s.open_cases))
            continue
        for c, cs in sorted(s.currencies.items()):
            out.append(Row(s.ucc, c, s.referrals, cs.earned, cs.reversed, cs.net, cs.paid, cs.payable,
                           s.open_cases))
    return out


@dataclass(frozen=True, slots=True)
class Page:
    rows: list[Row]
    total: int  # rows matching the search
    page: int  # 1-based
    pages: int
    per_page: int


def select(all_rows: Sequence[Row], *, q: str = "", currency: str = "", sort: str = "ucc",
           desc: bool = False, page: int = 1, per_page: int = 50) -> Page:
    """Search (a part of the ucc, any case), one currency, sort by a column (ties by ucc and
    currency), one page."""
    needle = q.strip().lower()
    picked = [r for r in all_rows if (not needle or needle in r.ucc.lower())
              and (not currency or r.currency == currency)]
    col = sort if sort in SORTS else "ucc"
    picked.sort(key=lambda r: (r.ucc, r.currency))
    if col not in ("ucc",):
        picked.sort(key=lambda r: getattr(r, col), reverse=desc)
    elif desc:
        picked.reverse()
    pages = max(1, -(-len(picked) // per_page))
    page = min(max(1, page), pages)
    start = (page - 1) * per_page
    return Page(picked[start:start + per_page], len(picked), page, pages, per_page)


# --- one referrer ---------------------------------------------------------------------------


def iso(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M UTC")


def day(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d")


_UNIX = re.compile(r"\b1[5-9]\d{8}\b")


# "refund of ch_1: 5950 of 11900 refunded", "dispute dp_1 of ch_1 lost: 500 of 11900"
_PART_OF = re.compile(r": (\d+) of (\d+)( refunded)?$")


def readable(note: str, currency: str | None = None) -> str:
    """A history note as a person reads it: the core notes times in Unix seconds and a
    refund's or dispute's amounts in minor units; here they are dates and money."""
    note = _UNIX.sub(lambda m: iso(int(m.group(0))), note)
    if currency:
        note = _PART_OF.sub(lambda m: f": {money(int(m.group(1)), currency)} of "
                                      f"{money(int(m.group(2)), currency)}{m.group(3) or ''}", note)
    return note


RULE_NAMES = {
    # "signup" carries the signup bonus, if there is one (`detail` names it so)
    "signup": "signup", "signup_bonus": "signup bonus", "purchase_bonus": "purchase bonus",
    "reward": "reward", "payment_ineligible": "payment not rewarded", "reversal": "refund reversal",
    "refund_waiting": "refund waiting for its link", "dispute": "dispute",
    "dispute_reversal": "lost dispute reversal", "subscription_ended": "subscription ended",
    "case_opened": "review case opened", "case_approved": "case approved", "case_rejected": "case rejected",
    "case_linked": "case ended: refund linked", "voided": "voided (referral rejected)",
    "reversal_voided": "reversal voided (referral rejected)", "campaign_assigned": "campaign assigned",
    "payout": "payout", "payout_paid": "payout paid", "payout_failed": "payout failed",
    "payout_returned": "payout returned", "adjustment": "manual adjustment",
}


def _pct(p: Decimal) -> str:
    text = format(p.normalize(), "f")
    return f"{text} %"


def terms(rules: Rules, kind: str, currency: str | None, at: int, amount: int) -> str:
    """The terms that priced a history line: the rate, the cap and the hold."""
    cfg = rules.currency_rules(currency) if currency else None
    hold = f"hold {rules.hold_days} days: payable from {day(at + rules.hold_days * DAY)}"
    cap = (f"cap {money(cfg.max_reward_per_referral, currency)} per referral"
           if cfg is not None and currency and cfg.max_reward_per_referral is not None else "no cap")
    if kind == "reward":
        rate = f"{_pct(rules.reward_percent)} of the invoice base (amount paid less tax)"
        if rules.plans:
            rate += ", plan rates where its lines name a plan"
        return f"{rate} for {rules.reward_months} months; {cap}; {hold}"
    if kind in ("signup", "signup_bonus"):
        return f"signup bonus {money(rules.signup_bonus, rules.currency)}; {cap}; {hold}"
    if kind == "purchase_bonus" and cfg is not None and currency:
        bonus = money(cfg.purchase_bonus, currency)
        return f"purchase bonus {bonus} on the first rewarded payment; {cap}; {hold}"
    if kind in ("reversal", "dispute_reversal"):
        return f"{_pct(rules.reward_percent)} of the refunded base, taken back at once"
    if kind == "payout":
        return "the balance payable as of the run" + (
            f" (at least {money(cfg.min_payout, currency)})" if cfg is not None and currency else "")
    if kind == "adjustment":
        return "payable at once" if amount < 0 else f"payable from {day(at)}"
    if kind in ("payout_failed", "payout_returned"):
        return "the amount is payable again at the next run"
    return ""


@dataclass(frozen=True, slots=True)
class LedgerLine:
    at: int
    rule: str
    kind: str
    source: str  # Stripe event id, or control record id
    about: str  # invoice / charge / payout / case id
    referral_id: str
    currency: str
    amount: int  # signed effect on net − paid
    figure: str  # earned / reversed / paid / "" (a fact alone)
    terms: str
    note: str


@dataclass(frozen=True, slots=True)
class Detail:
    ucc: str
    summary: referrer.ReferrerSummary
    withheld: dict[str, int]
    referrals: list[ReferralState]
    ledger: list[LedgerLine]
    balance: dict[str, int]  # per currency: the ledger's sum (= net − paid)
    cases: list[tuple[str, referrer.Case]]
    payouts: list[commands.PayoutCommand]
    outcomes: dict[str, referrer.PayoutRecord]  # by payout id, once an outcome is recorded
    campaign: str


def decisions(f: Fold) -> dict[str, control.ReviewDecision]:
    """The first decision per case: the one that counts."""
    out: dict[str, control.ReviewDecision] = {}
    for rec in f.control:
        if isinstance(rec, control.ReviewDecision):
            out.setdefault(rec.case_id, rec)
    return out


def outcomes(f: Fold) -> dict[str, referrer.PayoutRecord]:
    """By payout id, what became of each payout whose outcome was recorded (paid, failed,
    returned, with its reference), as the referrers' states hold it: an outcome that
    could not follow the one before changed nothing, so it is not shown."""
    return {pid: rec for state in f.engine.referrers.values() for pid, rec in state.payouts.items()
            if rec.status != referrer.PAYOUT_PENDING}


def detail(f: Fold, ucc: str, as_of: int) -> Detail | None:
    state = f.engine.referrers.get(ucc)
    if state is None or (not state.referrals and not state.cases):
        return None
    book = f.engine.book
    lines: list[LedgerLine] = []
    balance: dict[str, int] = {}
    for h in referrer.history(state):
        rules = book.at(h.at).campaign(referrer.campaign_at(state.campaigns, h.at))
        currency = h.currency or ""
        rule = RULE_NAMES.get(h.kind, h.kind.replace("_", " "))
        lines.append(LedgerLine(
            h.at, "signup bonus" if h.kind == "signup" and h.amount else rule, h.kind, h.source, h.ref or "",
            h.referral_id or "", currency, h.amount, h.figure or "",
            terms(rules, h.kind, h.currency, h.at, h.amount) if h.amount else "",
            readable(h.note, h.currency),
        ))
        if h.amount and currency:
            _add(balance, currency, h.amount)
    cases = sorted(state.cases.items(), key=lambda kv: (kv[1].opened_at, kv[0]))
    outs = outcomes(f)
    return Detail(
        ucc, referrer.summary(state, as_of), withheld_of(state),
        sorted(state.referrals.values(), key=lambda r: (r.signed_up_at, r.referral_id)),
        lines, balance, [(cid, c) for cid, c in cases if c.status != referrer.WAITING],
        [p for p in f.payouts if p.ucc == ucc], {k: v for k, v in outs.items() if k in state.payouts},
        referrer.campaign_at(state.campaigns, as_of) or "default",
    )


# --- review cases ---------------------------------------------------------------------------


def why(kind: str, d: dict[str, Any], ucc: str, rules: Rules) -> str:
    """Why a case opened, in words (docs/rules.md#review-cases)."""
    cur = str(d.get("currency") or "")

    def m(key: str) -> str:
        v = d.get(key)
        return money(int(v), cur) if isinstance(v, int) and cur else "?"

    customer = d.get("customer_id", "?")
    if kind == commands.ATTRIBUTION_CONFLICT:
        other = d.get("other_ucc", "?")
        return (f"Customer {customer} was attributed to {ucc}; a later event names {other}. "
                f"Approve keeps {ucc}; reject voids the referral.")
    if kind == commands.LATE_ATTRIBUTION:
        created = d.get("created")
        when = day(created) if isinstance(created, int) else "?"
        return (f"Customer {customer} paid {d.get('payment_id', '?')} ({m('base')} before tax) on {when}, "
                f"more than {rules.late_attribution_days} days before being attributed to {ucc}. Approve "
                f"computes its reward by the normal rule; reject voids the referral.")
    if kind == commands.UNSUPPORTED_CURRENCY:
        return (f"Customer {customer} paid {d.get('payment_id', '?')} ({m('base')} before tax) in "
                f"{cur.upper() or '?'}, a currency the rules have no [currency.{cur}] table for. Approve "
                f"computes its reward by the normal rule without a cap; reject voids the referral.")
    if kind == commands.UNLINKED_REFUND:
        at = d.get("refunded_at")
        when = day(at) if isinstance(at, int) else "?"
        return (f"Charge {d.get('charge_id', '?')} of customer {customer} was refunded "
                f"({m('amount_refunded')} of {m('amount')}) on {when}, and it links to no known payment of "
                f"the referral. Approve reverses the refund at the campaign rate; reject ignores it.")
    if kind == commands.LARGE_REWARD:
        return (f"The reward for {d.get('payment_id', '?')} of customer {customer} is {m('amount')}, above "
                f"review_above ({m('review_above')}). Approve releases it; reject voids the referral.")
    if kind == commands.SUSPECTED_FRAUD:
        return _why_fraud(d, customer, ucc)
    return f"A case of kind {kind}."


def _why_fraud(d: dict[str, Any], customer: Any, ucc: str) -> str:
    """A fraud signal in words (docs/rules.md#fraud-signals). The case holds no e-mail address or
    card, not even as a token: the operator looks the customer up in Stripe."""
    signal = d.get("signal")
    verdict = "Approve releases what the referral holds; reject voids the referral."
    if signal == commands.SELF_REFERRAL:
        return (f"Self-referral: customer {customer} shows an e-mail address or a card that one of "
                f"{ucc}'s own customers shows (see the customer in Stripe). {verdict}")
    if signal == commands.SHARED_CARD:
        limit = d.get("max_referrals_per_card", "?")
        return (f"Shared card: a card customer {customer} paid with has paid for more referrals than the "
                f"{limit} the rules allow per card (see the customer's payment methods in Stripe). {verdict}")
    if signal == commands.VELOCITY:
        limit = d.get("max_signups_per_day", "?")
        return (f"Velocity: {ucc} had more than {limit} signups within 24 hours, this referral's among "
                f"them. {verdict}")
    return f"Suspected fraud (signal {signal}). {verdict}"


_MONEY_KEYS = ("base", "amount", "amount_refunded", "review_above")
_TIME_KEYS = ("created", "refunded_at")


def detail_rows(details: dict[str, Any]) -> list[tuple[str, str]]:
    """A case's details as a person reads them: amounts in the currency's units, times as dates."""
    cur = details.get("currency")
    out = []
    for k, v in sorted(details.items()):
        if k in _MONEY_KEYS and isinstance(v, int) and isinstance(cur, str) and cur:
            text = money(v, cur)
        elif k in _TIME_KEYS and isinstance(v, int):
            text = iso(v)
        else:
            text = str(v)
        out.append((k.replace("_", " "), text))
    return out


@dataclass(frozen=True, slots=True)
class CaseView:
    state: commands.CaseState
    status: str  # as `refstream review list` says it
    why: str
    withheld: dict[str, int]  # what the paused referral has withheld now
    held_payment: Any  # the payment a late / unsupported currency case holds, or None
    decision: control.ReviewDecision | None
    effect: DecisionEffect | None


def case_view(f: Fold, state: commands.CaseState, status: str,
              decision: control.ReviewDecision | None, now: int) -> CaseView:
    ref_state = f.engine.referrers.get(state.ucc)
    withheld: dict[str, int] = {}
    held = None
    if ref_state is not None:
        r = ref_state.referrals.get(state.referral_id)
        if r is not None and state.case_id in r.open_cases and not r.rejected:
            for e in r.entries:
                if e.amount > 0:
                    _add(withheld, e.currency, e.amount)
        c = ref_state.cases.get(state.case_id)
        if c is not None and c.status == referrer.OPEN:
            held = c.held
    rules = f.engine.book.at(state.opened_at)
    return CaseView(state, status, why(state.kind, state.details, state.ucc, rules), withheld, held,
                    decision, f.effects.get(state.case_id))


# --- payout runs ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunView:
    run: control.PayoutRun
    payouts: list[commands.PayoutCommand]
    totals: dict[str, int]
    repeated: int  # later records with the same run id (they paid nothing more)


def runs(f: Fold) -> list[RunView]:
    """Every payout run in the log, newest first, with the payouts it made."""
    by_run: dict[str, list[commands.PayoutCommand]] = {}
    for p in f.payouts:
        by_run.setdefault(p.run_id, []).append(p)
    first: dict[str, control.PayoutRun] = {}
    repeats: dict[str, int] = {}
    for rec in f.control:
        if isinstance(rec, control.PayoutRun):
            if rec.run_id in first:
                repeats[rec.run_id] = repeats.get(rec.run_id, 0) + 1
            else:
                first[rec.run_id] = rec
    out = []
    for run_id, run in first.items():
        pays = sorted(by_run.get(run_id, []), key=lambda p: (p.ucc, p.currency))
        tot: dict[str, int] = {}
        for p in pays:
            _add(tot, p.currency, p.amount)
        out.append(RunView(run, pays, tot, repeats.get(run_id, 0)))
    out.reverse()
    return out


@dataclass(frozen=True, slots=True)
class Preview:
    run: control.PayoutRun
    payouts: list[commands.PayoutCommand]
    totals: dict[str, int]
    below_minimum: dict[str, tuple[int, int]]  # currency → (referrers, their payable) left for later
    already_used: bool  # the run id is in the log: a run with it pays nothing more


def preview(f: Fold, run: control.PayoutRun) -> Preview:
    pays = sorted(with_run(f, run), key=lambda p: (p.ucc, p.currency))
    tot: dict[str, int] = {}
    for p in pays:
        _add(tot, p.currency, p.amount)
    paid = {(p.ucc, p.currency) for p in pays}
    below: dict[str, tuple[int, int]] = {}
    for s in f.engine.summaries(run.as_of):
        for c, cs in s.currencies.items():
            if cs.payable > 0 and (s.ucc, c) not in paid:
                n, amount = below.get(c, (0, 0))
                below[c] = (n + 1, amount + cs.payable)
    used = any(isinstance(r, control.PayoutRun) and r.run_id == run.run_id for r in f.control)
    return Preview(run, pays, tot, below, used)


def csv_of(view: RunView, outs: dict[str, referrer.PayoutRecord]) -> str:
    """A run's payouts as CSV: one row per payout, amounts in major units and minor units."""
    import csv
    import io

    from projections.report import major

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["run_id", "payout_id", "ucc", "currency", "amount", "amount_minor", "as_of", "entries",
                "outcome", "reference"])
    for p in view.payouts:
        o = outs.get(p.payout_id)
        w.writerow([p.run_id, p.payout_id, p.ucc, p.currency, major(p.amount, p.currency).replace(",", ""),
                    p.amount, datetime.fromtimestamp(p.as_of, UTC).isoformat().replace("+00:00", "Z"),
                    len(p.entry_ids), o.status if o else "", o.reference if o else ""])
    return buf.getvalue()


# --- rules ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RevisionView:
    record: control.RulesRevision
    in_force: bool


def revisions(f: Fold, now: int) -> list[RevisionView]:
    """The published revisions, newest first; the one the rule book prices `now` with marked."""
    recs = [r for r in f.control if isinstance(r, control.RulesRevision)]
    in_force = f.engine.book.at(now).revision
    seen: set[str] = set()
    out = []
    for r in recs:
        if r.control_id not in seen:  # the same revision appended twice is one revision
            seen.add(r.control_id)
            out.append(RevisionView(r, r.revision == in_force))
    out.reverse()
    return out
