"""docs/rules.md#holding-and-payouts: holding, payout runs, minimum payout,
negative carry-over, idempotent run ids."""

from __future__ import annotations

from processors.rules.engine import Engine
from schemas.rules import Rules
from tests.unit.builders import customer, invoice_paid, refund, ts
from tests.unit.conftest import feed, make_rules, payouts, run

JAN10 = ts("2026-01-10")
JAN11 = ts("2026-01-11")


def started(rules: Rules) -> Engine:
    engine = Engine(rules)
    feed(engine, customer("cus_A", JAN10, ucc="ucc_X", user="u1"),
         invoice_paid("in_1", "cus_A", JAN11, amount_paid=10000, charge="ch_1"))  # 500 + 1000 + 2500
    return engine


def test_positive_entries_wait_hold_days() -> None:
    engine = started(make_rules(currency_usd={"signup_bonus": 500, "purchase_bonus": 1000, "min_payout": 1}))
    # signup (Jan 10) payable Feb 9; the invoice's entries (Jan 11) payable Feb 10
    assert payouts(run(engine, "r0", ts("2026-02-08T23:59:59"))) == []
    [p] = payouts(run(engine, "r1", ts("2026-02-09")))
    assert p.amount == 500
    [p] = payouts(run(engine, "r2", ts("2026-02-10")))
    assert p.amount == 3500


def test_reversals_count_at_once(rules: Rules) -> None:
    engine = started(rules)
    # refunded before any entry is payable: the −1250 counts immediately …
    feed(engine, refund("ch_1", "cus_A", JAN11, amount=10000, amount_refunded=5000, at=ts("2026-01-12"),
                        invoice="in_1"))
    assert engine.referrer("ucc_X", as_of=ts("2026-01-13")).currencies["usd"].payable == -1250  # type: ignore[union-attr]
    # … and is netted in the first run
    [p] = payouts(run(engine, "r1", ts("2026-03-01")))
    assert p.amount == 4000 - 1250


def test_below_min_payout_nothing_is_paid_until_the_balance_reaches_it(rules: Rules) -> None:
    engine = Engine(rules)
    feed(engine, customer("cus_A", JAN10, ucc="ucc_X", user="u1"),
         invoice_paid("in_1", "cus_A", JAN11, amount_paid=1000))  # 500 + 1000 + 250 = 1750 < 2000
    assert payouts(run(engine, "r1", ts("2026-03-01"))) == []
    feed(engine, invoice_paid("in_2", "cus_A", ts("2026-02-11"), amount_paid=1000))  # +250
    [p] = payouts(run(engine, "r2", ts("2026-04-01")))
    assert (p.amount, len(p.entry_ids)) == (2000, 4)


def test_a_negative_balance_carries_over(rules: Rules) -> None:
    engine = started(rules)
    [p] = payouts(run(engine, "r1", ts("2026-03-01")))
    assert p.amount == 4000
    feed(engine, refund("ch_1", "cus_A", JAN11, amount=10000, amount_refunded=10000, at=ts("2026-03-02"),
                        invoice="in_1"))  # −2500
    assert payouts(run(engine, "r2", ts("2026-04-01"))) == []
    feed(engine, invoice_paid("in_2", "cus_A", ts("2026-03-11"), amount_paid=18000))  # +4500
    [p] = payouts(run(engine, "r3", ts("2026-05-01")))
    assert p.amount == 4500 - 2500


def test_the_same_run_id_twice_pays_nothing_more(rules: Rules) -> None:
    engine = started(rules)
    [p] = payouts(run(engine, "r1", ts("2026-03-01")))
    feed(engine, invoice_paid("in_2", "cus_A", ts("2026-01-20"), amount_paid=10000))
    assert run(engine, "r1", ts("2026-03-01")) == []
    # a new run id pays what is new, listing only the entries it newly covers
    [p2] = payouts(run(engine, "r2", ts("2026-03-01")))
    assert p2.amount == 2500
    assert len(p2.entry_ids) == 1 and not set(p2.entry_ids) & set(p.entry_ids)
    assert engine.referrer("ucc_X").currencies["usd"].paid == 6500  # type: ignore[union-attr]


def test_each_currency_is_paid_on_its_own() -> None:
    rules = make_rules(currency_eur={"min_payout": 100})
    engine = started(rules)
    feed(engine, invoice_paid("in_e", "cus_A", JAN11, amount_paid=1000, currency="eur"))  # 250 eur
    out = run(engine, "r1", ts("2026-03-01"))
    assert sorted((p.currency, p.amount) for p in payouts(out)) == [("eur", 250), ("usd", 4000)]


def test_ids_are_the_same_for_the_same_facts(rules: Rules) -> None:
    a, b = started(rules), started(rules)
    pa, pb = payouts(run(a, "r1", ts("2026-03-01"))), payouts(run(b, "r1", ts("2026-03-01")))
    assert pa == pb
    c = started(rules)
    assert payouts(run(c, "r-other", ts("2026-03-01")))[0].payout_id != pa[0].payout_id
