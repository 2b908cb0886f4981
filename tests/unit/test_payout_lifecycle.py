"""docs/rules.md#the-payout-lifecycle and docs/rules.md#manual-adjustments: a failed or
returned payout is owed again and paid by the next run, a paid one stays paid, an outcome
applies once; adjustments are entries like any other, once per id, and the table keeps
them (old table values still load)."""

from __future__ import annotations

import orjson

from processors.rules import referrer
from processors.rules.engine import Engine
from schemas import control
from schemas.commands import PAYOUT_FAILED, PAYOUT_RETURNED, fact_id
from schemas.rules import Rules
from tests.unit.builders import customer, invoice_paid, ts
from tests.unit.conftest import feed, notifications, payouts, run

JAN10, JAN11 = ts("2026-01-10"), ts("2026-01-11")
MAR1, MAR5, APR1 = ts("2026-03-01"), ts("2026-03-05"), ts("2026-04-01")


def paid_once(rules: Rules) -> tuple[Engine, str]:
    """ucc_X earned 4000 (500 + 1000 + 2500) and run r1 paid it."""
    engine = Engine(rules)
    feed(engine, customer("cus_A", JAN10, ucc="ucc_X", user="u1"),
         invoice_paid("in_1", "cus_A", JAN11, amount_paid=10000, charge="ch_1"))
    [p] = payouts(run(engine, "r1", MAR1))
    assert p.amount == 4000
    return engine, p.payout_id


def outcome(engine: Engine, payout_id: str, status: str, at: int, reference: str = "") -> list[object]:
    return list(engine.feed_control(control.encode(control.PayoutOutcome(
        payout_id, "ucc_X", status, reference, at, "ana", "bank said so"))))


def adjust(engine: Engine, amount: int, at: int, adjustment_id: str = "adj-1", ucc: str = "ucc_X",
           currency: str = "usd") -> list[object]:
    return list(engine.feed_control(control.encode(control.LedgerAdjustment(
        adjustment_id, ucc, currency, amount, at, "ana", "goodwill"))))


def usd(engine: Engine, ucc: str = "ucc_X", as_of: int | None = None) -> referrer.CurrencySummary:
    summary = engine.referrer(ucc, as_of)
    assert summary is not None
    return summary.currencies["usd"]


def test_a_failed_payout_is_owed_again_and_the_next_run_pays_it(rules: Rules) -> None:
    engine, payout_id = paid_once(rules)
    out = outcome(engine, payout_id, control.FAILED, MAR5)
    [told] = notifications(out, PAYOUT_FAILED)  # type: ignore[arg-type]
    assert (told.amount, told.currency, told.referral_id, told.occurred_at) == (4000, "usd", None, MAR5)
    s = usd(engine, as_of=MAR5)
    assert (s.earned, s.paid, s.payable) == (4000, 0, 4000)  # earned once, no longer paid
    [again] = payouts(run(engine, "r2", APR1))
    assert again.amount == 4000 and again.payout_id != payout_id
    assert again.entry_ids == (fact_id(PAYOUT_FAILED, payout_id),)
    assert (usd(engine).paid, usd(engine).payable) == (4000, 0)


def test_a_returned_payout_comes_back_even_after_it_was_paid(rules: Rules) -> None:
    engine, payout_id = paid_once(rules)
    outcome(engine, payout_id, control.PAID, MAR1 + 60, "tr_1")
    out = outcome(engine, payout_id, control.RETURNED, MAR5)
    assert [n.amount for n in notifications(out, PAYOUT_RETURNED)] == [4000]  # type: ignore[arg-type]
    [again] = payouts(run(engine, "r2", APR1))
    assert again.amount == 4000


def test_an_outcome_applies_once_and_failed_is_final(rules: Rules) -> None:
    engine, payout_id = paid_once(rules)
    outcome(engine, payout_id, control.FAILED, MAR5)
    assert outcome(engine, payout_id, control.FAILED, MAR5 + 1) == []
    assert outcome(engine, payout_id, control.RETURNED, MAR5 + 2) == []
    assert outcome(engine, payout_id, control.PAID, MAR5 + 3, "tr_late") == []  # paid after failing: no
    assert usd(engine, as_of=APR1).payable == 4000
    # paid first: a second paid changes nothing either
    engine, payout_id = paid_once(rules)
    outcome(engine, payout_id, control.PAID, MAR5, "tr_1")
    assert outcome(engine, payout_id, control.PAID, MAR5 + 1, "tr_2") == []
    assert (usd(engine, as_of=APR1).paid, usd(engine, as_of=APR1).payable) == (4000, 0)
    assert engine.referrers["ucc_X"].payouts[payout_id].reference == "tr_1"


def test_an_outcome_for_an_unknown_payout_or_referrer_changes_nothing(rules: Rules) -> None:
    engine, _ = paid_once(rules)
    before = engine.referrers["ucc_X"]
    assert outcome(engine, "no-such-payout", control.FAILED, MAR5) == []
    assert engine.referrers["ucc_X"] == before
    engine.feed_control_record(control.PayoutOutcome("p", "ucc_nobody", control.FAILED, "", MAR5, "a", "r"))
    assert "ucc_nobody" not in engine.referrers


def test_an_adjustment_is_an_entry_like_any_other(rules: Rules) -> None:
    engine, _ = paid_once(rules)
    adjust(engine, 750, MAR5)  # payable from its time on
    assert usd(engine, as_of=MAR5 - 1).payable == 0
    s = usd(engine, as_of=MAR5)
    assert (s.earned, s.reversed, s.net, s.paid, s.payable) == (4750, 0, 4750, 4000, 750)
    adjust(engine, -250, MAR5 + 1, "adj-2")  # negative: reversed, at once
    assert (usd(engine).reversed, usd(engine).payable) == (250, 500)
    assert payouts(run(engine, "r2", MAR5)) == []  # 750 − 250 is below min_payout (2000) …
    adjust(engine, 1500, MAR5 + 2, "adj-3")
    [p] = payouts(run(engine, "r3", APR1))  # … until it is not
    assert p.amount == 2000 and len(p.entry_ids) == 3


def test_the_same_adjustment_id_adjusts_once(rules: Rules) -> None:
    engine, _ = paid_once(rules)
    adjust(engine, 750, MAR5)
    adjust(engine, 750, MAR5 + 10)  # a retried command, another time: the same id
    assert usd(engine, as_of=APR1).earned == 4750


def test_an_adjustment_may_come_before_the_referrers_first_signup(rules: Rules) -> None:
    engine = Engine(rules)
    adjust(engine, 2500, JAN10, ucc="ucc_new")
    [p] = payouts(run(engine, "r1", JAN11))
    assert (p.ucc, p.amount) == ("ucc_new", 2500)
    summary = engine.referrer("ucc_new")
    assert summary is not None and summary.referrals == 0


def test_payouts_adjustments_and_history_survive_the_table_round_trip(rules: Rules) -> None:
    engine, payout_id = paid_once(rules)
    outcome(engine, payout_id, control.FAILED, MAR5)
    adjust(engine, -300, MAR5 + 1)
    state = engine.referrers["ucc_X"]
    assert referrer.loads(referrer.dumps(state)) == state
    assert state.ledger and state.lines and state.payouts


def test_a_referrer_stored_before_payouts_adjustments_and_history_still_loads(rules: Rules) -> None:
    engine, _ = paid_once(rules)
    row = orjson.loads(referrer.dumps(engine.referrers["ucc_X"]))
    old = row[:9]  # ucc … disputes: what was stored before this issue
    for referral in old[1].values():
        del referral[8]  # a referral row without its history
    state = referrer.loads(orjson.dumps(old))
    assert (state.payouts, state.ledger, state.lines) == ({}, (), ())
    assert all(r.lines == () for r in state.referrals.values())
    assert referrer.summary(state, APR1) == referrer.summary(engine.referrers["ucc_X"], APR1)
    # and it folds on: an adjustment, then a run that pays it
    adjustment = control.LedgerAdjustment("a", "ucc_X", "usd", 2000, MAR5, "ana", "r")
    moved, _ = referrer.step(state, adjustment, rules)
    moved, out = referrer.step(moved, control.PayoutRun("r2", APR1, APR1), rules)
    assert [r.record.amount for r in out if r.dest == "payouts"] == [2000]  # type: ignore[union-attr]
