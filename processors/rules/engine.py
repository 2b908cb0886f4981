"""The three stages composed in memory: what replay, tests and benchmarks run.

`route_stripe_event` is the entry of the log into the stages; `Engine` keeps each stage's
states in a dict and steps routed records (first in, first out) until nothing is left,
returning the output records. The Faust workers call the same `step` functions, one stage
per agent, so live and replay cannot disagree. Iteration is in sorted key order wherever
a choice exists, so outputs are byte-stable.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from mypy_extensions import mypyc_attr

from processors.rules import invoice_link, referral, referrer
from processors.rules.invoice_link import InvoiceLinkState
from processors.rules.referral import CustomerState
from processors.rules.referrer import ReferrerState, ReferrerSummary
from schemas import control
from schemas.events import (
    CUSTOMER,
    INVOICE,
    OUTPUTS,
    REFERRER,
    DisputeSeen,
    InvoicePaymentPaid,
    Routed,
    routed,
)
from schemas.rules import Revision, RuleBook, Rules, parse_rules_cached
from schemas.stripe import Dispute, InvoicePayment, StripeEvent, customer_of, parse_event

__all__ = ["Engine", "Routed", "revision_of", "route_stripe_event"]


def revision_of(record: control.RulesRevision) -> Revision:
    """A published revision as the rule book holds it (raises RulesError if its text is bad)."""
    return Revision(record.effective_from, parse_rules_cached(record.rules), key=record.control_id)


def route_stripe_event(event: StripeEvent) -> list[Routed]:
    """Where a log event goes: stage "customer" (key: customer id) for everything about a
    customer; stage "invoice" (key: invoice id) for `invoice_payment.paid`; else nowhere."""
    obj = event.object
    if obj is None:
        return []
    if isinstance(obj, InvoicePayment):
        if obj.status not in (None, "paid") or (obj.charge is None and obj.payment_intent is None):
            return []
        return [routed(INVOICE, obj.invoice, InvoicePaymentPaid(
            obj.invoice, obj.charge, obj.payment_intent, event.id,
        ))]
    if isinstance(obj, Dispute):
        # a dispute names its charge only: the invoice stage joins it with the charge's customer
        seen = DisputeSeen(obj.charge, obj.payment_intent, obj.id, obj.status, obj.amount, event.created,
                           event.id)
        return [routed(INVOICE, f"charge:{key}", seen) for key in (obj.charge, obj.payment_intent) if key]
    customer = customer_of(event)
    if customer is None:
        return []  # a charge or invoice without a customer cannot belong to a referral
    return [routed(CUSTOMER, customer, event)]


@mypyc_attr(allow_interpreted_subclasses=True)  # tests wrap it (tests/unit/test_state_codec.py)
class Engine:
    """All stage states in memory; `feed_*` return the output records in the order made."""

    def __init__(self, rules: Rules | RuleBook, *, follow_log: bool = True,
                 identity_key: bytes | None = None):
        """`rules`: one rules file for all time, or a book of revisions. `follow_log`: rules
        revisions met in the log are added as they come, as the live worker adds them
        (docs/rules.md#revisions); False for a what-if replay that replaces them all.
        `identity_key`: the key of the identity tokens the fraud signals compare
        (REFSTREAM_IDENTITY_KEY; default: the book's own, none for a rules file)."""
        book = rules if isinstance(rules, RuleBook) else RuleBook.of(rules)
        self.book = book if identity_key is None else book.keyed(identity_key)
        self.follow_log = follow_log
        # parallel replay (projections/parallel.py): what the referrer stage would fold goes
        # here, in the order it would be folded, instead of being folded in this process
        self.referrer_sink: Callable[[str, Any], None] | None = None
        self.customers: dict[str, CustomerState] = {}
        self.invoices: dict[str, InvoiceLinkState] = {}
        self.referrers: dict[str, ReferrerState] = {}
        self.latest = 0  # the latest event or control time seen: the default "as of"
        # payout runs (docs/performance.md#payout-runs): by ucc, the state a run left the
        # referrer in, the book it was priced with, and the referrer's `due_at` then (None
        # while not known yet); a referrer still in that state, not due by a run's as_of,
        # only has the run's id noted
        self._due: dict[str, tuple[ReferrerState, RuleBook, int | None, bool]] = {}

    @property
    def rules(self) -> Rules:
        """The latest revision's default campaign (what a summary names its currency by)."""
        return self.book.latest.rules

    def feed_stripe(self, raw: bytes) -> list[Routed]:
        """Parse (raises StripeParseError on a malformed body) and fold one log record."""
        return self.feed_event(parse_event(raw))

    def feed_event(self, event: StripeEvent) -> list[Routed]:
        if event.created > self.latest:
            self.latest = event.created
        obj = event.object
        if obj is None or type(obj) is InvoicePayment or type(obj) is Dispute:
            return self._run(route_stripe_event(event))
        # the common case, routed inline: an event about a customer steps that customer's
        # state directly (no envelope, no queue); what it produces runs as `_run` would
        customer = customer_of(event)
        if customer is None:
            return []
        customers = self.customers
        customers[customer], produced = referral.step(customers.get(customer), event, self.book)
        return self._run(produced) if produced else []

    def feed_referrer(self, ucc: str, record: Any) -> list[Routed]:
        """Fold one record of the referrer stage (a shard of a parallel replay)."""
        return self._run([routed(REFERRER, ucc, record)])

    def feed_control(self, raw: bytes) -> list[Routed]:
        """Decode (raises ControlDecodeError) and apply one control record."""
        return self.feed_control_record(control.decode(raw))

    def feed_control_record(self, record: control.ControlRecord) -> list[Routed]:
        if isinstance(record, control.PayoutRun):
            self.latest = max(self.latest, record.requested_at)
            return self._payout_run(record)
        if isinstance(record, control.ControlPlaced):
            return []  # where a control event takes effect; the merged log already says it
        if isinstance(record, control.RulesRevision):
            if self.follow_log:
                self.book = self.book.adding(revision_of(record))
            return []
        if isinstance(record, control.ReferrerLink):
            # takes effect at the customer it names (docs/rules.md#fraud-signals)
            return self._run([routed(CUSTOMER, record.customer_id, record)])
        if isinstance(record, control.LedgerAdjustment | control.PayoutOutcome):
            self.latest = max(self.latest, record.at)
        elif isinstance(record, control.ReviewDecision):
            self.latest = max(self.latest, record.decided_at)
        elif not isinstance(record, control.CampaignAssignment):
            return []  # a referrer's payout account: for `payouts execute`, not the ledger
        if record.ucc not in self.referrers and not referrer.opens_referrer(record):
            return []  # for no referrer (yet): its rule says it changes nothing
        return self._run([routed(REFERRER, record.ucc, record)])

    def _payout_run(self, run: control.PayoutRun) -> list[Routed]:
        """A payout run reaches every referrer, in a stable order, stepped directly (one
        envelope per referrer would be the run's main cost), then their outputs in order.

        A referrer the previous run left as it is now, and whose `due_at` is later than this
        run's as_of, has nothing this run can pay or open: it only has the run's id noted,
        without a look at its referrals (docs/performance.md#payout-runs). Its `due_at` is
        worked out once, at the first run that finds it unchanged; any step in between makes
        it another state, which the next run steps in full."""
        referrers, book, step, known = self.referrers, self.book, referrer.step, self._due
        produced: list[Routed] = []
        for ucc in sorted(referrers):
            state = referrers[ucc]
            seen = known.get(ucc)
            if seen is not None and seen[0] is state and seen[1] is book:
                due = seen[2] if seen[3] else referrer.due_at(state, book)
                if due is None or due > run.as_of:
                    state = referrers[ucc] = referrer.note_run(state, run)
                    known[ucc] = (state, book, due, True)
                    continue
            state, out = step(state, run, book)
            referrers[ucc] = state
            known[ucc] = (state, book, None, False)
            if out:
                produced += out
        return self._run(produced) if produced else []

    def _run(self, first: Iterable[Routed]) -> list[Routed]:
        queue = deque(first)
        outputs: list[Routed] = []
        rules = self.book
        # dest → (step function, its states); built per call, so rebinding a table is safe
        stages: dict[str, tuple[Callable[[Any, Any, RuleBook], tuple[Any, list[Routed]]], dict[str, Any]]] = {
            CUSTOMER: (referral.step, self.customers),
            INVOICE: (invoice_link.step, self.invoices),
            REFERRER: (referrer.step, self.referrers),
        }
        sink = self.referrer_sink
        while queue:
            r = queue.popleft()
            if sink is not None and r.dest == REFERRER:
                if not isinstance(r.record, control.ControlRecord):  # the shards take those themselves
                    sink(r.key, r.record)
                continue
            stage = stages.get(r.dest)
            if stage is None:
                if r.dest not in OUTPUTS:
                    raise ValueError(f"unknown destination {r.dest!r}")
                outputs.append(r)
                continue
            step, states = stage
            key = r.key
            states[key], produced = step(states.get(key), r.record, rules)
            if produced:
                queue.extend(produced)
        return outputs

    def referrer(self, ucc: str, as_of: int | None = None) -> ReferrerSummary | None:
        """The referrer's summary; payable as of `as_of` (default: the latest time seen)."""
        state = self.referrers.get(ucc)
        if state is None:
            return None
        return referrer.summary(state, self.latest if as_of is None else as_of)

    def summaries(self, as_of: int | None = None) -> list[ReferrerSummary]:
        at = self.latest if as_of is None else as_of
        return [referrer.summary(self.referrers[u], at) for u in sorted(self.referrers)]
