"""docs/rules.md#audit-trail: a referrer's history explains every cent of its summary. Per
currency the history's amounts add up to net − paid, and those of each figure to earned,
reversed and paid, whatever happened: rewards, refunds, disputes, cases decided either way,
runs, failed and returned payouts, adjustments."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings

from processors.rules import referrer
from processors.rules.engine import Engine
from schemas import control
from tests.unit.builders import customer, invoice_paid, refund, ts
from tests.unit.conftest import feed, payouts, run
from tests.unit.test_interleavings import LATE, RULES, logs


def explained(state: referrer.ReferrerState, as_of: int) -> None:
    """Every figure of the summary is the sum of the history's lines that move it."""
    summary = referrer.summary(state, as_of)
    lines = referrer.history(state)
    for currency, s in summary.currencies.items():
        mine = [h for h in lines if h.currency == currency]
        assert sum(h.amount for h in mine if h.figure == "earned") == s.earned, currency
        assert -sum(h.amount for h in mine if h.figure == "reversed") == s.reversed, currency
        assert -sum(h.amount for h in mine if h.figure == "paid") == s.paid, currency
        assert sum(h.amount for h in mine) == s.net - s.paid, currency
    # and no line moves money in a currency the summary does not show
    assert {h.currency for h in lines if h.amount} <= set(summary.currencies)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.data_too_large])
@given(logs())
def test_the_history_explains_every_cent_of_every_referrer(
        items: list[bytes | control.ControlRecord]) -> None:
    engine = Engine(RULES)
    for item in items:
        engine.feed_stripe(item) if isinstance(item, bytes) else engine.feed_control_record(item)
    for state in engine.referrers.values():
        explained(state, LATE)


def test_the_worked_example_reads_as_what_happened(rules: object) -> None:
    engine = Engine(rules)  # type: ignore[arg-type]
    feed(engine, customer("cus_A", ts("2026-01-10"), ucc="ucc_X", user="u1"),
         invoice_paid("in_1", "cus_A", ts("2026-01-10T01:00:00"), amount_paid=10000, charge="ch_1"),
         refund("ch_1", "cus_A", ts("2026-01-10T01:00:00"), amount=10000, amount_refunded=5000,
                at=ts("2026-01-10T02:00:00"), invoice="in_1"))
    [p] = payouts(run(engine, "run-1", ts("2026-02-15")))
    engine.feed_control_record(control.PayoutOutcome(
        p.payout_id, "ucc_X", control.FAILED, "", ts("2026-02-16"), "ana", "account closed"))
    engine.feed_control_record(control.LedgerAdjustment(
        "adj-1", "ucc_X", "usd", 250, ts("2026-02-17"), "ana", "goodwill for the delay"))
    lines = referrer.history(engine.referrers["ucc_X"])
    assert [(h.kind, h.amount, h.figure) for h in lines] == [
        ("signup", 500, "earned"),  # with its signup bonus
        ("purchase_bonus", 1000, "earned"),
        ("reward", 2500, "earned"),
        ("reversal", -1250, "reversed"),
        ("payout", -2750, "paid"),
        ("payout_failed", 2750, "paid"),
        ("adjustment", 250, "earned"),
    ]
    assert lines[0].source.startswith("evt_") and lines[0].referral_id == "user:u1"
    assert lines[3].source != lines[2].source  # the refund's event, not the invoice's
    assert lines[4].ref == p.payout_id and lines[4].referral_id is None
    assert lines[5].note == "account closed (by ana)" and lines[6].note == "goodwill for the delay (by ana)"
    explained(engine.referrers["ucc_X"], ts("2026-03-01"))
