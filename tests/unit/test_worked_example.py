"""The worked example of docs/rules.md#worked-example, amount by amount."""

from __future__ import annotations

from processors.rules.engine import Engine
from schemas.commands import NEW_SIGNUP, PAYOUT_CREATED, REWARD_EARNED, REWARD_REVERSED
from schemas.rules import Rules
from tests.unit.builders import customer, invoice_paid, refund, ts
from tests.unit.conftest import feed, notifications, payouts, run


def test_worked_example(rules: Rules) -> None:
    engine = Engine(rules)
    # Given cus_A created 2026-01-10 with cello_ucc=ucc_X, new_user_id=u1
    out = feed(engine, customer("cus_A", ts("2026-01-10"), ucc="ucc_X", user="u1"))
    # Then one new_signup with the signup bonus of 500
    [signup] = notifications(out)
    assert (signup.kind, signup.ucc, signup.referral_id, signup.amount, signup.currency) == (
        NEW_SIGNUP, "ucc_X", "user:u1", 500, "usd")

    # When invoice.paid: amount_paid 11900, total 11900, total_excluding_tax 10000
    paid = invoice_paid("in_A1", "cus_A", ts("2026-01-10T09:00"), amount_paid=11900, total=11900,
                        total_excluding_tax=10000, charge="ch_A1")
    out = feed(engine, paid)
    # Then base 10000, reward 2500, purchase bonus 1000 (one reward_earned of 3500)
    [earned] = notifications(out)
    assert (earned.kind, earned.amount) == (REWARD_EARNED, 2500 + 1000)
    # The same invoice delivered again: nothing
    assert feed(engine, paid) == []

    # charge.refunded with amount_refunded 5950 (half): reversal −1250
    half = refund("ch_A1", "cus_A", ts("2026-01-10T09:00"), amount=11900, amount_refunded=5950,
                  at=ts("2026-01-20"), invoice="in_A1")
    [reversed_] = notifications(feed(engine, half))
    assert (reversed_.kind, reversed_.amount) == (REWARD_REVERSED, 1250)
    # a second event with the same cumulative 5950: nothing
    again = refund("ch_A1", "cus_A", ts("2026-01-10T09:00"), amount=11900, amount_refunded=5950,
                   at=ts("2026-01-21"), invoice="in_A1")
    assert feed(engine, again) == []

    # Payout run as of 2026-02-15: entries of 2026-01-10 payable from 2026-02-09
    out = run(engine, "run-2026-02-15", ts("2026-02-15"))
    [payout] = payouts(out)
    assert (payout.ucc, payout.currency, payout.amount, payout.rules_revision) == ("ucc_X", "usd", 2750, 3)
    assert len(payout.entry_ids) == 4  # signup bonus, purchase bonus, reward, reversal
    [created] = notifications(out)
    assert (created.kind, created.amount) == (PAYOUT_CREATED, 2750)

    summary = engine.referrer("ucc_X")
    assert summary is not None
    usd = summary.currencies["usd"]
    assert (summary.referrals, usd.earned, usd.reversed, usd.net, usd.paid, usd.payable) == (
        1, 4000, 1250, 2750, 2750, 0)
