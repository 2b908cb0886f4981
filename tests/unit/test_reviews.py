"""docs/rules.md#review-cases: every review case kind pauses the referral; approve releases, reject voids;
deciding twice changes nothing. Amounts computed by hand (rules: examples/rules.toml)."""

from __future__ import annotations

from processors.rules.engine import Engine
from schemas.commands import (
    ATTRIBUTION_CONFLICT,
    LARGE_REWARD,
    LATE_ATTRIBUTION,
    REWARD_EARNED,
    REWARD_REVERSED,
    UNLINKED_REFUND,
    UNSUPPORTED_CURRENCY,
    ReviewCase,
)
from schemas.rules import Rules
from tests.unit.builders import customer, invoice_paid, refund, ts
from tests.unit.conftest import (
    case_states,
    cases,
    decide,
    feed,
    make_rules,
    notifications,
    payouts,
    released,
    run,
)

JAN10 = ts("2026-01-10")
JAN11 = ts("2026-01-11")
LATER = ts("2026-06-01")


def with_conflict(rules: Rules) -> tuple[Engine, ReviewCase]:
    engine = Engine(rules)
    feed(engine, customer("cus_A", JAN10, ucc="ucc_X", user="u1"),
         invoice_paid("in_1", "cus_A", JAN11, amount_paid=10000, charge="ch_1"))  # 500 + 1000 + 2500
    [case] = cases(feed(engine, customer("cus_A", JAN10, ucc="ucc_Y", user="u1", type_="customer.updated",
                                         at=ts("2026-01-12"))), ATTRIBUTION_CONFLICT)
    return engine, case


def test_an_open_case_withholds_the_referrals_positive_entries(rules: Rules) -> None:
    engine, _ = with_conflict(rules)
    assert payouts(run(engine, "r1", LATER)) == []
    summary = engine.referrer("ucc_X", as_of=LATER)
    assert summary is not None and summary.open_cases == 1
    assert (summary.currencies["usd"].earned, summary.currencies["usd"].payable) == (4000, 0)


def test_approve_releases_and_deciding_twice_changes_nothing(rules: Rules) -> None:
    engine, case = with_conflict(rules)
    out = decide(engine, case, True, ts("2026-02-01"))
    assert released(out) == [] and case_states(out) == [(case.case_id, "approved")]
    [payout] = payouts(run(engine, "r1", LATER))
    assert payout.amount == 4000
    assert decide(engine, case, False, ts("2026-02-02")) == []  # already decided: not even a case state
    assert engine.referrer("ucc_X").currencies["usd"].earned == 4000  # type: ignore[union-attr]


def test_reject_voids_the_referrals_unpaid_entries_and_later_rewards(rules: Rules) -> None:
    engine, case = with_conflict(rules)
    decide(engine, case, False, ts("2026-02-01"))
    assert payouts(run(engine, "r1", LATER)) == []
    usd = engine.referrer("ucc_X").currencies["usd"]  # type: ignore[union-attr]
    assert (usd.earned, usd.payable) == (0, 0)
    # the rejected referral earns nothing more, and reversing its voided reward takes nothing back
    out = feed(engine, invoice_paid("in_2", "cus_A", ts("2026-02-11"), amount_paid=10000),
               refund("ch_1", "cus_A", JAN11, amount=10000, amount_refunded=10000, at=ts("2026-02-12"),
                      invoice="in_1"))
    assert notifications(out) == []
    assert decide(engine, case, True, ts("2026-02-02")) == []


def test_reject_keeps_the_reversal_of_a_reward_already_paid(rules: Rules) -> None:
    engine = Engine(rules)
    feed(engine, customer("cus_A", JAN10, ucc="ucc_X", user="u1"),
         invoice_paid("in_1", "cus_A", JAN11, amount_paid=10000, charge="ch_1"))
    [paid] = payouts(run(engine, "r1", ts("2026-03-01")))
    assert paid.amount == 4000
    feed(engine, invoice_paid("in_2", "cus_A", ts("2026-03-11"), amount_paid=4000))  # +1000, unpaid
    feed(engine, refund("ch_1", "cus_A", JAN11, amount=10000, amount_refunded=10000, at=ts("2026-03-12"),
                        invoice="in_1"))  # −2500 of a paid reward
    [case] = cases(feed(engine, customer("cus_A", JAN10, ucc="ucc_Y", user="u1", type_="customer.updated",
                                         at=ts("2026-03-13"))))
    decide(engine, case, False, ts("2026-03-14"))
    usd = engine.referrer("ucc_X", as_of=LATER).currencies["usd"]  # type: ignore[union-attr]
    # the unpaid 1000 is void; the clawback of 2500 stays and carries over as a negative balance
    assert (usd.earned, usd.reversed, usd.paid, usd.payable) == (4000, 2500, 4000, -2500)


def test_late_attribution_approved_is_rewarded_by_the_normal_rule(rules: Rules) -> None:
    engine = Engine(rules)
    feed(engine, customer("cus_A", JAN10), invoice_paid("in_1", "cus_A", ts("2026-01-15"), amount_paid=4000))
    [case] = cases(feed(engine, customer("cus_A", JAN10, ucc="ucc_X", user="u1", type_="customer.updated",
                                         at=ts("2026-03-01"))), LATE_ATTRIBUTION)
    assert payouts(run(engine, "r1", LATER)) == []  # paused, even the signup bonus
    out = decide(engine, case, True, ts("2026-03-02"))
    [n] = notifications(out, REWARD_EARNED)
    assert n.amount == 1000 + 1000
    [payout] = payouts(run(engine, "r2", LATER))
    assert payout.amount == 500 + 2000


def test_late_attribution_rejected_voids_the_referral(rules: Rules) -> None:
    engine = Engine(rules)
    feed(engine, customer("cus_A", JAN10), invoice_paid("in_1", "cus_A", ts("2026-01-15"), amount_paid=4000))
    [case] = cases(feed(engine, customer("cus_A", JAN10, ucc="ucc_X", user="u1", type_="customer.updated",
                                         at=ts("2026-03-01"))))
    out = decide(engine, case, False, ts("2026-03-02"))
    assert released(out) == [] and case_states(out) == [(case.case_id, "rejected")]
    assert payouts(run(engine, "r1", LATER)) == []
    assert engine.referrer("ucc_X").currencies["usd"].earned == 0  # type: ignore[union-attr]


def test_unsupported_currency_approved_is_rewarded_without_a_cap(rules: Rules) -> None:
    engine = Engine(rules)
    out = feed(engine, customer("cus_A", JAN10, ucc="ucc_X", user="u1"),
               invoice_paid("in_1", "cus_A", JAN11, amount_paid=100000, currency="gbp"))
    [case] = cases(out, UNSUPPORTED_CURRENCY)
    [n] = notifications(decide(engine, case, True, ts("2026-01-12")), REWARD_EARNED)
    assert (n.currency, n.amount) == ("gbp", 25000)  # no cap, no purchase bonus configured for gbp
    out = run(engine, "r1", LATER)
    assert sorted((p.currency, p.amount) for p in payouts(out)) == [("gbp", 25000)]  # usd 500 < 2000


def unlinked_case(engine: Engine, amount_refunded: int, *, amount: int = 10000) -> ReviewCase:
    """A refund of a charge nothing links, whose case opens at a payout run (docs/rules.md#refunds)."""
    assert feed(engine, refund("ch_x", "cus_A", JAN11, amount=amount, amount_refunded=amount_refunded,
                               at=ts("2026-01-20"))) == []
    [case] = cases(run(engine, "r0", ts("2026-01-21")), UNLINKED_REFUND)
    return case


def test_unlinked_refund_approved_is_reversed_at_the_referrals_percent(rules: Rules) -> None:
    engine = Engine(rules)
    feed(engine, customer("cus_A", JAN10, ucc="ucc_X", user="u1"),
         invoice_paid("in_1", "cus_A", JAN11, amount_paid=10000, new_shape=True))
    case = unlinked_case(engine, 4000)
    [n] = notifications(decide(engine, case, True, ts("2026-01-21")), REWARD_REVERSED)
    assert n.amount == 1000  # 25 % of 4000
    # a larger cumulative refund of the same charge afterwards: reversed at once, the difference only
    [n] = notifications(feed(engine, refund("ch_x", "cus_A", JAN11, amount=10000, amount_refunded=6000,
                                            at=ts("2026-01-22"))), REWARD_REVERSED)
    assert n.amount == 500
    [payout] = payouts(run(engine, "r1", LATER))
    assert payout.amount == 4000 - 1500


def test_an_approved_unlinked_reversal_never_exceeds_what_the_referral_earned(rules: Rules) -> None:
    # capped at 10,000 usd: 500 signup + 1,000 purchase bonus + 8,500 of the 25,000 reward
    engine = Engine(rules)
    feed(engine, customer("cus_A", JAN10, ucc="ucc_X", user="u1"),
         invoice_paid("in_1", "cus_A", JAN11, amount_paid=100000, new_shape=True))
    usd = engine.referrer("ucc_X").currencies["usd"]  # type: ignore[union-attr]
    assert usd.earned == 10000
    case = unlinked_case(engine, 100000, amount=100000)  # 25 % of it would be 25,000
    [n] = notifications(decide(engine, case, True, ts("2026-01-22")), REWARD_REVERSED)
    assert n.amount == 8500  # the percentage reward actually earned; bonuses are never reversed
    usd = engine.referrer("ucc_X").currencies["usd"]  # type: ignore[union-attr]
    assert (usd.earned, usd.reversed, usd.net) == (10000, 8500, 1500)
    # nothing is left to take back: a later linked full refund of the invoice reverses nothing more
    feed(engine, refund("ch_1", "cus_A", JAN11, amount=100000, amount_refunded=100000,
                        at=ts("2026-01-23")))
    assert engine.referrer("ucc_X").currencies["usd"].reversed == 8500  # type: ignore[union-attr]


def test_unlinked_refund_rejected_is_ignored(rules: Rules) -> None:
    engine = Engine(rules)
    feed(engine, customer("cus_A", JAN10, ucc="ucc_X", user="u1"),
         invoice_paid("in_1", "cus_A", JAN11, amount_paid=10000, new_shape=True))
    case = unlinked_case(engine, 4000)
    out = decide(engine, case, False, ts("2026-01-21"))
    assert released(out) == [] and case_states(out) == [(case.case_id, "rejected")]
    [payout] = payouts(run(engine, "r1", LATER))
    assert payout.amount == 4000  # nothing reversed, nothing voided


def test_large_reward_approved_is_released() -> None:
    rules = make_rules(currency_usd={"signup_bonus": 500, "purchase_bonus": 1000, "min_payout": 1,
                                     "review_above": 1999})
    engine = Engine(rules)
    out = feed(engine, customer("cus_A", JAN10, ucc="ucc_X", user="u1"),
               invoice_paid("in_1", "cus_A", JAN11, amount_paid=8000))
    [case] = cases(out, LARGE_REWARD)
    assert payouts(run(engine, "r1", LATER)) == []
    decide(engine, case, True, ts("2026-02-01"))
    [payout] = payouts(run(engine, "r2", LATER))
    assert payout.amount == 500 + 1000 + 2000


def test_a_decision_for_an_unknown_case_changes_nothing(rules: Rules) -> None:
    engine, case = with_conflict(rules)
    bogus = ReviewCase("no-such-case", ATTRIBUTION_CONFLICT, "ucc_X", "user:u1", {}, 0)
    assert decide(engine, bogus, False, ts("2026-02-01")) == []
    other = ReviewCase(case.case_id, case.kind, "ucc_nobody", case.referral_id, {}, 0)
    assert decide(engine, other, False, ts("2026-02-01")) == []
    assert payouts(run(engine, "r1", LATER)) == []  # still paused


def test_large_reward_rejected_voids_the_referral() -> None:
    rules = make_rules(currency_usd={"signup_bonus": 500, "purchase_bonus": 1000, "min_payout": 1,
                                     "review_above": 1999})
    engine = Engine(rules)
    [case] = cases(feed(engine, customer("cus_A", JAN10, ucc="ucc_X", user="u1"),
                        invoice_paid("in_1", "cus_A", JAN11, amount_paid=8000)), LARGE_REWARD)
    decide(engine, case, False, ts("2026-02-01"))
    assert payouts(run(engine, "r1", LATER)) == []
    assert engine.referrer("ucc_X").currencies["usd"].earned == 0  # type: ignore[union-attr]


def test_unsupported_currency_rejected_voids_the_referral(rules: Rules) -> None:
    engine = Engine(rules)
    [case] = cases(feed(engine, customer("cus_A", JAN10, ucc="ucc_X", user="u1"),
                        invoice_paid("in_1", "cus_A", JAN11, amount_paid=100000, currency="gbp")))
    decide(engine, case, False, ts("2026-01-12"))
    summary = engine.referrer("ucc_X", as_of=LATER)
    assert summary is not None and summary.currencies["usd"].earned == 0  # the signup bonus is void
    assert "gbp" not in summary.currencies
    assert payouts(run(engine, "r1", LATER)) == []
