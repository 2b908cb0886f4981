"""Attribution, referral ids, the signup (docs/rules.md#attribution). Rules: examples/rules.toml."""

from __future__ import annotations

from processors.rules.engine import Engine
from schemas.commands import ATTRIBUTION_CONFLICT, NEW_SIGNUP, REWARD_EARNED
from schemas.rules import Rules
from tests.unit.builders import customer, invoice_paid, ts
from tests.unit.conftest import cases, feed, make_rules, notifications, payouts, run

JAN10 = ts("2026-01-10")


def test_metadata_values_are_trimmed() -> None:
    engine = Engine(make_rules())
    out = feed(engine, customer("cus_A", JAN10, ucc="  ucc_X ", user=" u1\t"))
    [signup] = notifications(out, NEW_SIGNUP)
    assert (signup.ucc, signup.referral_id) == ("ucc_X", "user:u1")


def test_empty_metadata_counts_as_missing() -> None:
    engine = Engine(make_rules())
    assert feed(engine, customer("cus_A", JAN10, ucc="   ", user="u1")) == []
    assert feed(engine, customer("cus_B", JAN10, ucc="ucc_X", user="")) == []
    assert engine.referrer("ucc_X") is None


def test_referral_id_is_the_user_by_default_and_the_org_at_organization_level() -> None:
    by_user = Engine(make_rules())
    [s] = notifications(feed(by_user, customer("cus_A", JAN10, ucc="ucc_X", user="u1", org="o9")))
    assert s.referral_id == "user:u1"
    by_org = Engine(make_rules(organization_level=True))
    [s] = notifications(feed(by_org, customer("cus_A", JAN10, ucc="ucc_X", user="u1", org="o9")))
    assert s.referral_id == "org:o9"
    # organisation level without an organisation id: the user
    [s] = notifications(feed(by_org, customer("cus_B", JAN10, ucc="ucc_X", user="u2")))
    assert s.referral_id == "user:u2"


def test_several_customers_of_one_referral_count_as_one_signup() -> None:
    engine = Engine(make_rules(organization_level=True))
    out = feed(engine,
               customer("cus_A", JAN10, ucc="ucc_X", user="u1", org="o9"),
               customer("cus_B", ts("2026-01-12"), ucc="ucc_X", user="u2", org="o9"))
    assert len(notifications(out, NEW_SIGNUP)) == 1
    summary = engine.referrer("ucc_X")
    assert summary is not None and summary.referrals == 1
    assert summary.currencies["usd"].earned == 500  # one signup bonus


def test_the_signup_is_at_the_customer_created_with_the_bonus_once() -> None:
    engine = Engine(make_rules())
    created = customer("cus_A", JAN10, ucc="ucc_X", user="u1")
    updated = customer("cus_A", JAN10, ucc="ucc_X", user="u1", type_="customer.updated",
                       at=ts("2026-02-01"))
    out = feed(engine, created, updated, created)
    [signup] = notifications(out)
    assert (signup.kind, signup.occurred_at, signup.amount, signup.currency) == (
        NEW_SIGNUP, JAN10, 500, "usd")
    # the bonus is earned at signed_up_at: payable after hold_days (30)
    assert payouts(run(engine, "early", ts("2026-02-08"))) == []
    assert engine.referrer("ucc_X", as_of=ts("2026-02-09")).currencies["usd"].payable == 500  # type: ignore[union-attr]


def test_new_signup_carries_zero_when_there_is_no_signup_bonus() -> None:
    engine = Engine(make_rules(currency_usd={"min_payout": 1}))
    [signup] = notifications(feed(engine, customer("cus_A", JAN10, ucc="ucc_X", user="u1")))
    assert (signup.kind, signup.amount) == (NEW_SIGNUP, 0)


def test_the_first_attribution_wins_and_a_different_ucc_opens_a_conflict(rules: Rules) -> None:
    engine = Engine(rules)
    out = feed(engine,
               customer("cus_A", JAN10, ucc="ucc_X", user="u1"),
               customer("cus_A", JAN10, ucc="ucc_Y", user="u1", type_="customer.updated",
                        at=ts("2026-01-11")))
    [case] = cases(out, ATTRIBUTION_CONFLICT)
    assert (case.ucc, case.referral_id, case.details["other_ucc"]) == ("ucc_X", "user:u1", "ucc_Y")
    assert engine.referrer("ucc_Y") is None
    # the same conflict delivered again: no second case
    assert cases(feed(engine, customer("cus_A", JAN10, ucc="ucc_Y", user="u1", type_="customer.updated",
                                       at=ts("2026-01-12")))) == []
    # rewards still go to ucc_X (held while the case is open)
    out = feed(engine, invoice_paid("in_1", "cus_A", ts("2026-01-15"), amount_paid=4000))
    [earned] = notifications(out, REWARD_EARNED)
    assert (earned.ucc, earned.amount) == ("ucc_X", 1000 + 1000)


def test_removing_the_metadata_changes_nothing(rules: Rules) -> None:
    engine = Engine(rules)
    feed(engine, customer("cus_A", JAN10, ucc="ucc_X", user="u1"))
    out = feed(engine, customer("cus_A", JAN10, type_="customer.updated", at=ts("2026-01-11")))
    assert out == []
    out = feed(engine, invoice_paid("in_1", "cus_A", ts("2026-01-15"), amount_paid=4000))
    [earned] = notifications(out, REWARD_EARNED)
    assert earned.ucc == "ucc_X"
