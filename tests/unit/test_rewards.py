"""docs/rules.md#rewards: base, eligibility, rounding, caps, bonuses, instalments, late attribution,
one-off charges, unsupported currencies and large rewards — amounts computed by hand."""

from __future__ import annotations

from processors.rules.engine import Engine
from processors.rules.referrer import unpaid_entries
from schemas.commands import LARGE_REWARD, LATE_ATTRIBUTION, REWARD_EARNED, UNSUPPORTED_CURRENCY
from schemas.rules import Rules
from tests.unit.builders import charge, customer, invoice_paid, subscription, ts
from tests.unit.conftest import cases, decide, feed, make_rules, notifications, payouts, released, run

JAN10 = ts("2026-01-10")
NO_CAP = {"signup_bonus": 500, "purchase_bonus": 1000, "min_payout": 1}


def signed_up(rules: Rules, created: int = JAN10) -> Engine:
    engine = Engine(rules)
    feed(engine, customer("cus_A", created, ucc="ucc_X", user="u1"))
    return engine


def earned(engine: Engine, *bodies: bytes) -> list[int]:
    return [n.amount for n in notifications(feed(engine, *bodies), REWARD_EARNED)]


def test_base_is_amount_paid_minus_tax(rules: Rules) -> None:
    engine = signed_up(rules)
    # tax = 12100 − 11000 = 1100; base 11000; 25 % = 2750; plus the purchase bonus 1000
    assert earned(engine, invoice_paid("in_1", "cus_A", ts("2026-01-11"), amount_paid=12100, total=12100,
                                       total_excluding_tax=11000)) == [2750 + 1000]
    # without total / total_excluding_tax the tax is 0: base 2000, reward 500
    assert earned(engine, invoice_paid("in_2", "cus_A", ts("2026-02-11"), amount_paid=2000,
                                       no_totals=True)) == [500]


def test_base_of_zero_or_less_earns_nothing_not_even_the_purchase_bonus(rules: Rules) -> None:
    engine = signed_up(rules)
    assert earned(engine, invoice_paid("in_trial", "cus_A", ts("2026-01-11"), amount_paid=0)) == []
    # a 100 % coupon with tax still recorded: amount_paid 0, total 100, excl 0 → base −100
    assert earned(engine, invoice_paid("in_coupon", "cus_A", ts("2026-01-12"), amount_paid=0, total=100,
                                       total_excluding_tax=0)) == []
    # the purchase bonus waits for the first invoice that earns
    assert earned(engine, invoice_paid("in_1", "cus_A", ts("2026-02-11"), amount_paid=4000)) == [1000 + 1000]


def test_reward_rounds_half_up(rules: Rules) -> None:
    engine = signed_up(rules)
    # 10002 × 25 % = 2500.5 → 2501 (with the bonus 1000)
    assert earned(engine, invoice_paid("in_1", "cus_A", ts("2026-01-11"), amount_paid=10002)) == [3501]
    # 10001 × 25 % = 2500.25 → 2500
    assert earned(engine, invoice_paid("in_2", "cus_A", ts("2026-02-11"), amount_paid=10001)) == [2500]
    # a decimal percent: 1004 × 12.5 % = 125.5 → 126
    engine = signed_up(make_rules(reward_percent=12.5, currency_usd=NO_CAP))
    assert earned(engine, invoice_paid("in_1", "cus_A", ts("2026-01-11"), amount_paid=1004)) == [126 + 1000]


def test_bonuses_and_rewards_share_the_cap(rules: Rules) -> None:
    engine = signed_up(rules)  # cap 10000; the signup bonus took 500
    # first: bonus 1000 + 25 % of 20000 = 5000 → gross 6500
    assert earned(engine, invoice_paid("in_1", "cus_A", ts("2026-01-11"), amount_paid=20000)) == [6000]
    # second: 5000 cut to the 3500 left → gross 10000
    assert earned(engine, invoice_paid("in_2", "cus_A", ts("2026-02-11"), amount_paid=20000)) == [3500]
    # third: nothing left
    assert earned(engine, invoice_paid("in_3", "cus_A", ts("2026-03-11"), amount_paid=20000)) == []
    assert engine.referrer("ucc_X").currencies["usd"].earned == 10000  # type: ignore[union-attr]


def test_purchase_bonus_comes_before_the_reward_under_the_cap() -> None:
    rules = make_rules(currency_usd={"max_reward_per_referral": 1200, "signup_bonus": 500,
                                     "purchase_bonus": 1000, "min_payout": 1})
    engine = signed_up(rules)  # 700 left after the signup bonus
    # the bonus takes min(1000, 700) = 700; the reward of 1000 gets nothing
    assert earned(engine, invoice_paid("in_1", "cus_A", ts("2026-01-11"), amount_paid=4000)) == [700]


def test_purchase_bonus_once_per_referral_in_the_invoice_currency() -> None:
    rules = make_rules(currency_usd=NO_CAP, currency_eur={"purchase_bonus": 800})
    engine = Engine(rules)
    feed(engine, customer("cus_A", JAN10, ucc="ucc_X", user="u1"),
         customer("cus_B", JAN10, ucc="ucc_X", user="u1"))  # same referral, two customers
    [first] = notifications(feed(engine, invoice_paid("in_1", "cus_B", ts("2026-01-11"), amount_paid=4000,
                                                      currency="eur")), REWARD_EARNED)
    assert (first.currency, first.amount) == ("eur", 1000 + 800)
    assert earned(engine, invoice_paid("in_2", "cus_A", ts("2026-01-12"), amount_paid=4000)) == [1000]


def test_entries_are_earned_at_paid_at_else_created() -> None:
    engine = signed_up(make_rules(currency_usd=NO_CAP))
    # created Jan 15, paid Jan 20: payable Feb 19 (hold 30 days)
    [n] = notifications(feed(engine, invoice_paid("in_1", "cus_A", ts("2026-01-15"), amount_paid=4000,
                                                  paid_at=ts("2026-01-20"))), REWARD_EARNED)
    assert n.occurred_at == ts("2026-01-20")
    summary = engine.referrer("ucc_X", as_of=ts("2026-02-18"))
    assert summary is not None and summary.currencies["usd"].payable == 500  # the signup bonus only
    summary = engine.referrer("ucc_X", as_of=ts("2026-02-19"))
    assert summary is not None and summary.currencies["usd"].payable == 500 + 1000 + 1000


def test_one_reward_per_invoice_id_whatever_the_deliveries(rules: Rules) -> None:
    engine = signed_up(rules)
    body = dict(amount_paid=4000)
    assert earned(engine, invoice_paid("in_1", "cus_A", ts("2026-01-11"), **body)) == [2000]
    # a re-delivery, and another event about the same invoice: nothing
    assert earned(engine, invoice_paid("in_1", "cus_A", ts("2026-01-11"), **body),
                  invoice_paid("in_1", "cus_A", ts("2026-01-11"), event_id="evt_other", **body)) == []


def test_the_reward_window_is_reward_months_calendar_months_from_signup(rules: Rules) -> None:
    engine = signed_up(rules)  # signed up 2026-01-10 00:00, window until 2027-01-10 00:00
    assert earned(engine, invoice_paid("in_in", "cus_A", ts("2027-01-09T23:59:59"), amount_paid=400)) == [
        100 + 1000]
    assert earned(engine, invoice_paid("in_out", "cus_A", ts("2027-01-10"), amount_paid=400)) == []


def test_annual_plan_pays_in_monthly_instalments_remainder_first() -> None:
    engine = signed_up(make_rules(currency_usd=NO_CAP))
    # 25 % of 120004 = 30001 over 12 months: 2501 then 11 × 2500; bonus 1000 with it
    out = feed(engine, invoice_paid("in_y", "cus_A", JAN10, amount_paid=120004, sub="sub_1", months=12))
    [n] = notifications(out, REWARD_EARNED)
    assert n.amount == 30001 + 1000
    state = engine.referrers["ucc_X"]
    rewards = [(e.amount, e.payable_at) for e in unpaid_entries(state)
               if e.payment_id == "in_y" and e.amount != 1000]
    assert rewards[0] == (2501, JAN10 + 30 * 86400)
    assert [a for a, _ in rewards] == [2501] + [2500] * 11
    # instalment i is earned at paid time + i calendar months
    assert rewards[11][1] == ts("2026-12-10") + 30 * 86400


def test_instalments_after_the_reward_window_are_dropped() -> None:
    engine = signed_up(make_rules(currency_usd=NO_CAP))
    # paid 2026-03-10: instalments Mar 2026 … Feb 2027; Jan and Feb 2027 fall after the window
    [n] = notifications(feed(engine, invoice_paid("in_y", "cus_A", ts("2026-03-10"), amount_paid=120004,
                                                  sub="sub_1", months=12)), REWARD_EARNED)
    assert n.amount == 2501 + 9 * 2500 + 1000


def test_the_cap_applies_before_the_instalments(rules: Rules) -> None:
    engine = signed_up(rules)  # 10000 cap − 500 signup − 1000 purchase bonus = 8500 for the reward
    [n] = notifications(feed(engine, invoice_paid("in_y", "cus_A", JAN10, amount_paid=120000, sub="sub_1",
                                                  months=12)), REWARD_EARNED)
    assert n.amount == 8500 + 1000
    amounts = [e.amount for e in unpaid_entries(engine.referrers["ucc_X"]) if e.payment_id == "in_y"]
    assert amounts == [1000, 8500 - 11 * 708] + [708] * 11


def test_payments_before_attribution_are_rewarded_when_it_arrives_in_time(rules: Rules) -> None:
    engine = Engine(rules)
    feed(engine, customer("cus_A", JAN10))  # no metadata yet
    assert feed(engine, invoice_paid("in_1", "cus_A", ts("2026-01-15"), amount_paid=4000)) == []
    # attributed 26 days after the invoice: within late_attribution_days (30)
    out = feed(engine, customer("cus_A", JAN10, ucc="ucc_X", user="u1", type_="customer.updated",
                                at=ts("2026-02-10")))
    [n] = notifications(out, REWARD_EARNED)
    assert n.amount == 1000 + 1000


def test_attribution_too_late_opens_a_late_attribution_case(rules: Rules) -> None:
    engine = Engine(rules)
    feed(engine, customer("cus_A", JAN10))
    feed(engine, invoice_paid("in_1", "cus_A", ts("2026-01-15"), amount_paid=4000))
    # 36 days later
    out = feed(engine, customer("cus_A", JAN10, ucc="ucc_X", user="u1", type_="customer.updated",
                                at=ts("2026-02-20")))
    assert notifications(out, REWARD_EARNED) == []
    [case] = cases(out, LATE_ATTRIBUTION)
    assert (case.ucc, case.referral_id, case.details["payment_id"]) == ("ucc_X", "user:u1", "in_1")


def test_one_off_charges_are_rewarded_only_when_the_rules_say_so() -> None:
    one_off = charge("ch_1", "cus_A", ts("2026-01-11"), amount=4000, invoice=None)
    engine = signed_up(make_rules(reward_one_off_charges=True))
    assert earned(engine, one_off) == [1000 + 1000]
    engine = signed_up(make_rules(reward_one_off_charges=False))
    assert earned(engine, one_off) == []
    # a charge of an invoice (no explicit null) is never a one-off
    engine = signed_up(make_rules(reward_one_off_charges=True))
    assert earned(engine, charge("ch_2", "cus_A", ts("2026-01-11"), amount=4000)) == []


def test_an_unconfigured_currency_opens_a_case_instead_of_a_reward(rules: Rules) -> None:
    engine = signed_up(rules)
    out = feed(engine, invoice_paid("in_1", "cus_A", ts("2026-01-11"), amount_paid=4000, currency="gbp"))
    assert notifications(out, REWARD_EARNED) == []
    [case] = cases(out, UNSUPPORTED_CURRENCY)
    assert case.details["currency"] == "gbp"


def test_a_reward_above_review_above_is_held_in_a_large_reward_case() -> None:
    rules = make_rules(currency_usd={"signup_bonus": 500, "purchase_bonus": 1000, "min_payout": 1,
                                     "review_above": 1999})
    engine = signed_up(rules)
    out = feed(engine, invoice_paid("in_1", "cus_A", ts("2026-01-11"), amount_paid=8000))  # reward 2000
    [case] = cases(out, LARGE_REWARD)
    assert (case.details["amount"], case.details["payment_id"]) == (2000, "in_1")
    assert notifications(out, REWARD_EARNED)[0].amount == 3000  # earned, but held
    # paused: no positive entry of the referral is paid, not even the signup bonus
    assert payouts(run(engine, "r1", ts("2026-06-01"))) == []
    # 1999 itself is not above
    engine = signed_up(rules)
    assert cases(feed(engine, invoice_paid("in_1", "cus_A", ts("2026-01-11"), amount_paid=7996))) == []


def test_no_reward_after_the_customer_was_deleted(rules: Rules) -> None:
    engine = signed_up(rules)
    deleted = customer("cus_A", JAN10, ucc="ucc_X", user="u1", type_="customer.deleted", at=ts("2026-02-01"),
                       deleted=True)
    feed(engine, deleted)
    assert earned(engine, invoice_paid("in_after", "cus_A", ts("2026-02-05"), amount_paid=4000)) == []
    # an invoice created before the deletion (delivered late) still earns; earned stays
    assert earned(engine, invoice_paid("in_before", "cus_A", ts("2026-01-20"), amount_paid=4000)) == [2000]
    assert engine.referrer("ucc_X").currencies["usd"].earned == 2500  # type: ignore[union-attr]


def test_no_reward_for_an_invoice_created_after_its_subscription_was_cancelled(rules: Rules) -> None:
    engine = signed_up(rules)
    feed(engine, subscription("sub_1", "cus_A", JAN10, at=ts("2026-03-01"), status="canceled",
                              canceled_at=ts("2026-03-01"), ended_at=ts("2026-03-01"),
                              type_="customer.subscription.deleted"))
    late = invoice_paid("in_late", "cus_A", ts("2026-03-10"), amount_paid=4000, sub="sub_1")
    assert earned(engine, late) == []
    # another subscription of the customer still earns
    assert earned(engine, invoice_paid("in_2", "cus_A", ts("2026-03-10"), amount_paid=4000, sub="sub_2")) == [
        2000]


def test_a_late_judgement_is_revisited_when_an_earlier_attribution_event_arrives(rules: Rules) -> None:
    # arrival-order dependent (docs/rules.md): the case stays open; the reward is computed
    engine = Engine(rules)
    feed(engine, invoice_paid("in_1", "cus_A", ts("2026-01-15"), amount_paid=4000))
    # the customer.deleted (carrying the metadata) arrives first: 2026-06-01 is late for in_1
    out = feed(engine, customer("cus_A", JAN10, ucc="ucc_X", user="u1", type_="customer.deleted",
                                at=ts("2026-06-01"), deleted=True))
    [case] = cases(out, LATE_ATTRIBUTION)
    # then customer.created: attributed since 2026-01-10, so in_1 was in time
    out = feed(engine, customer("cus_A", JAN10, ucc="ucc_X", user="u1"))
    [n] = notifications(out, REWARD_EARNED)
    assert n.amount == 1000 + 1000
    assert released(decide(engine, case, True, ts("2026-06-02"))) == []  # nothing more to release
    [p] = payouts(run(engine, "r1", ts("2026-07-01")))
    assert p.amount == 2500
