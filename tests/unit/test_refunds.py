"""docs/rules.md#refunds-cancellation-and-deletion: cumulative reversals, every way a
charge links to its invoice, unlinked refunds, subscription cancellation and
deletion. Amounts computed by hand."""

from __future__ import annotations

from processors.rules.engine import Engine
from schemas.commands import RECURRING_REWARDS_CANCELLED, REWARD_EARNED, REWARD_REVERSED, UNLINKED_REFUND
from schemas.rules import Rules
from tests.unit.builders import (
    charge,
    customer,
    invoice_paid,
    invoice_payment_paid,
    refund,
    subscription,
    ts,
)
from tests.unit.conftest import cases, decide, feed, make_rules, notifications, run

JAN10 = ts("2026-01-10")
JAN11 = ts("2026-01-11")
NO_CAP = {"signup_bonus": 500, "purchase_bonus": 1000, "min_payout": 1}


def signed_up(rules: Rules) -> Engine:
    engine = Engine(rules)
    feed(engine, customer("cus_A", JAN10, ucc="ucc_X", user="u1"))
    return engine


def reversed_(engine: Engine, *bodies: bytes) -> list[int]:
    return [n.amount for n in notifications(feed(engine, *bodies), REWARD_REVERSED)]


def refunded(amount_refunded: int, day: str, *, amount: int = 10000, ch: str = "ch_1", **kw: object) -> bytes:
    return refund(ch, "cus_A", JAN11, amount=amount, amount_refunded=amount_refunded, at=ts(day), **kw)  # type: ignore[arg-type]


def test_reversals_are_cumulative_and_happen_once(rules: Rules) -> None:
    engine = signed_up(rules)
    feed(engine, invoice_paid("in_1", "cus_A", JAN11, amount_paid=10000, charge="ch_1"))  # r = 2500
    # a quarter refunded: round(2500 × 2500 / 10000) = 625
    assert reversed_(engine, refunded(2500, "2026-01-20")) == [625]
    # cumulative half: 1250 in all, so 625 more
    assert reversed_(engine, refunded(5000, "2026-01-21", type_="charge.updated")) == [625]
    # the same cumulative again, and an older event arriving late: nothing
    assert reversed_(engine, refunded(5000, "2026-01-22"), refunded(2500, "2026-01-20")) == []
    # all of it: the rest of the 2500; the purchase and signup bonuses are not reversed
    assert reversed_(engine, refunded(10000, "2026-01-23")) == [1250]
    usd = engine.referrer("ucc_X").currencies["usd"]  # type: ignore[union-attr]
    assert (usd.earned, usd.reversed, usd.net) == (4000, 2500, 1500)


def test_reversal_rounds_half_up_on_the_reward_actually_earned(rules: Rules) -> None:
    engine = signed_up(rules)
    feed(engine, invoice_paid("in_1", "cus_A", JAN11, amount_paid=20000, charge="ch_1"))  # 5000
    feed(engine, invoice_paid("in_2", "cus_A", JAN11, amount_paid=20000, charge="ch_2"))  # cut to 3500
    # r = 3500 (after the cap): a full refund reverses 3500, not 5000
    assert reversed_(engine, refunded(20000, "2026-01-20", amount=20000, ch="ch_2")) == [3500]
    # round(5000 × 1 / 20000) = 0.25 → 0; 2 → 0.5 → 1
    assert reversed_(engine, refunded(1, "2026-01-20", amount=20000, ch="ch_1")) == []
    assert reversed_(engine, refunded(2, "2026-01-21", amount=20000, ch="ch_1")) == [1]


def test_reversal_of_an_annual_plan_counts_only_the_kept_instalments() -> None:
    engine = signed_up(make_rules(currency_usd=NO_CAP))
    # kept: 2501 + 9 × 2500 = 25001 (two instalments fell after the window)
    feed(engine, invoice_paid("in_y", "cus_A", ts("2026-03-10"), amount_paid=120004, sub="sub_1", months=12,
                              charge="ch_y"))
    assert reversed_(engine, refund("ch_y", "cus_A", ts("2026-03-10"), amount=120004, amount_refunded=120004,
                                    at=ts("2026-04-01"), invoice="in_y")) == [25001]


def test_a_refund_before_its_invoice_is_kept_and_applied_with_the_reward(rules: Rules) -> None:
    engine = signed_up(rules)
    assert feed(engine, refunded(5000, "2026-01-20", invoice="in_1")) == []
    out = feed(engine, invoice_paid("in_1", "cus_A", JAN11, amount_paid=10000, charge="ch_1"))
    assert [n.amount for n in notifications(out, REWARD_EARNED)] == [3500]
    assert [n.amount for n in notifications(out, REWARD_REVERSED)] == [1250]


def test_link_by_charge_invoice(rules: Rules) -> None:
    engine = signed_up(rules)
    feed(engine, invoice_paid("in_1", "cus_A", JAN11, amount_paid=10000))  # names no charge
    assert reversed_(engine, refunded(10000, "2026-01-20", invoice="in_1")) == [2500]


def test_link_by_invoice_charge(rules: Rules) -> None:
    engine = signed_up(rules)
    feed(engine, invoice_paid("in_1", "cus_A", JAN11, amount_paid=10000, charge="ch_1"))
    assert reversed_(engine, refunded(10000, "2026-01-20")) == [2500]  # the charge names no invoice


def test_link_by_invoice_payments(rules: Rules) -> None:
    engine = signed_up(rules)
    feed(engine, invoice_paid("in_1", "cus_A", JAN11, amount_paid=10000, new_shape=True,
                              payments_charge="ch_1"))
    assert reversed_(engine, refunded(10000, "2026-01-20")) == [2500]


def test_link_by_invoice_payment_paid_in_either_order(rules: Rules) -> None:
    for first_link in (True, False):
        engine = signed_up(rules)
        link = invoice_payment_paid("in_1", JAN11, charge="ch_1")
        paid = invoice_paid("in_1", "cus_A", JAN11, amount_paid=10000, new_shape=True)
        feed(engine, *((link, paid) if first_link else (paid, link)))
        assert reversed_(engine, refunded(10000, "2026-01-20")) == [2500]


def test_link_by_payment_intent(rules: Rules) -> None:
    engine = signed_up(rules)
    feed(engine, invoice_paid("in_1", "cus_A", JAN11, amount_paid=10000, new_shape=True),
         invoice_payment_paid("in_1", JAN11, payment_intent="pi_1"))
    assert reversed_(engine, refunded(10000, "2026-01-20", payment_intent="pi_1")) == [2500]


def test_an_unlinked_refund_waits_for_its_link_and_opens_its_case_at_the_next_payout_run(
        rules: Rules) -> None:
    engine = signed_up(rules)
    feed(engine, invoice_paid("in_1", "cus_A", JAN11, amount_paid=10000, new_shape=True))
    # no link yet: nothing happens now, whichever of refund and link the worker sees first
    assert feed(engine, refunded(4000, "2026-01-20", ch="ch_unknown")) == []
    out = run(engine, "r1", ts("2026-06-01"))
    [case] = cases(out, UNLINKED_REFUND)
    assert (case.details["charge_id"], case.details["amount_refunded"]) == ("ch_unknown", 4000)
    assert case.opened_at == ts("2026-06-01")  # the run's requested_at
    summary = engine.referrer("ucc_X", as_of=ts("2026-06-01"))
    assert summary is not None and summary.currencies["usd"].payable == 0  # paused by it
    assert run(engine, "r1", ts("2026-06-01")) == []  # the same run again: no second case


def test_an_unlinked_refund_without_a_percentage_reward_opens_nothing(rules: Rules) -> None:
    engine = signed_up(rules)  # only the signup bonus, which is never reversed
    assert feed(engine, refunded(4000, "2026-01-20", ch="ch_unknown")) == []
    assert cases(run(engine, "r1", ts("2026-06-01"))) == []


def test_a_refund_linked_before_the_run_is_reversed_and_opens_no_case(rules: Rules) -> None:
    engine = signed_up(rules)
    feed(engine, invoice_paid("in_1", "cus_A", JAN11, amount_paid=10000, new_shape=True))
    assert feed(engine, refunded(10000, "2026-01-20")) == []
    out = feed(engine, invoice_payment_paid("in_1", JAN11, charge="ch_1"))
    assert [n.amount for n in notifications(out, REWARD_REVERSED)] == [2500]
    assert cases(run(engine, "r1", ts("2026-06-01"))) == []
    summary = engine.referrer("ucc_X", as_of=ts("2026-06-01"))
    assert summary is not None and summary.currencies["usd"].payable == 500 + 1000 + 2500 - 2500


def test_a_case_opened_for_want_of_a_link_ends_when_the_link_arrives(rules: Rules) -> None:
    engine = signed_up(rules)
    feed(engine, invoice_paid("in_1", "cus_A", JAN11, amount_paid=10000, new_shape=True),
         refunded(10000, "2026-01-20"))
    [case] = cases(run(engine, "r1", ts("2026-03-01")), UNLINKED_REFUND)
    out = feed(engine, invoice_payment_paid("in_1", JAN11, charge="ch_1"))
    assert [n.amount for n in notifications(out, REWARD_REVERSED)] == [2500]  # the normal rule
    summary = engine.referrer("ucc_X", as_of=ts("2026-06-01"))
    assert summary is not None and summary.open_cases == 0  # the referral is no longer paused
    assert summary.currencies["usd"].payable == 500 + 1000 + 2500 - 2500
    # deciding the ended case changes nothing
    assert decide(engine, case, True, ts("2026-06-02")) == []


def test_subscription_deleted_sends_one_notification_and_keeps_what_was_earned(rules: Rules) -> None:
    engine = signed_up(rules)
    feed(engine, invoice_paid("in_1", "cus_A", JAN11, amount_paid=4000, sub="sub_1"))
    deleted = subscription("sub_1", "cus_A", JAN10, at=ts("2026-02-05"), status="canceled",
                           canceled_at=ts("2026-02-05"), ended_at=ts("2026-02-05"),
                           type_="customer.subscription.deleted")
    out = feed(engine, deleted, deleted)
    [n] = notifications(out)
    assert (n.kind, n.referral_id, n.occurred_at) == (
        RECURRING_REWARDS_CANCELLED, "user:u1", ts("2026-02-05"))
    assert engine.referrer("ucc_X").currencies["usd"].earned == 500 + 1000 + 1000  # type: ignore[union-attr]
    # an older snapshot (active) arriving late is ignored: the next invoice earns nothing
    feed(engine, subscription("sub_1", "cus_A", JAN10, at=ts("2026-02-01"), status="active"))
    assert notifications(feed(engine, invoice_paid("in_2", "cus_A", ts("2026-02-11"), amount_paid=4000,
                                                   sub="sub_1"))) == []


def test_a_newer_snapshot_wins_over_an_older_one(rules: Rules) -> None:
    engine = signed_up(rules)
    feed(engine, subscription("sub_1", "cus_A", JAN10, at=ts("2026-02-01"), status="active"))
    out = feed(engine, subscription("sub_1", "cus_A", JAN10, at=ts("2026-03-01"), status="canceled",
                                    canceled_at=ts("2026-02-20"), ended_at=ts("2026-03-01")))
    assert [n.kind for n in notifications(out)] == [RECURRING_REWARDS_CANCELLED]
    # ended 2026-03-01: an invoice created 2026-02-25 still earns
    assert [n.amount for n in notifications(feed(engine, invoice_paid(
        "in_1", "cus_A", ts("2026-02-25"), amount_paid=4000, sub="sub_1")))] == [2000]


def test_charges_and_refunds_of_other_customers_do_not_mix(rules: Rules) -> None:
    engine = signed_up(rules)
    feed(engine, invoice_paid("in_1", "cus_A", JAN11, amount_paid=10000, charge="ch_1"))
    out = feed(engine, charge("ch_1", "cus_B", JAN11, amount=10000, amount_refunded=10000,
                              type_="charge.refunded"))
    assert out == []


def test_a_refund_claiming_more_than_the_charge_reverses_at_most_the_reward(rules: Rules) -> None:
    engine = signed_up(rules)
    feed(engine, invoice_paid("in_1", "cus_A", JAN11, amount_paid=10000, charge="ch_1"))
    assert reversed_(engine, refunded(25000, "2026-01-20", invoice="in_1")) == [2500]
