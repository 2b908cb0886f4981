"""docs/rules.md#disputes: an open dispute withholds its payment's reward, won releases it,
lost reverses it pro rata (with the charge's refunds), whatever the order and duplicates.
Amounts computed by hand (rules: examples/rules.toml: 25 %, 500 signup, 1,000 purchase)."""

from __future__ import annotations

import itertools

from processors.rules.engine import Engine
from schemas.commands import REWARD_REVERSED
from schemas.rules import Rules
from tests.unit.builders import charge, customer, event, invoice_paid, invoice_payment_paid, refund, ts
from tests.unit.conftest import feed, notifications

JAN10 = ts("2026-01-10")
LATER = ts("2026-06-01")


def dispute(status: str, amount: int, at: int, *, dp: str = "dp_1", ch: str = "ch_1",
            type_: str = "charge.dispute.created") -> bytes:
    return event(type_, {"id": dp, "object": "dispute", "charge": ch, "payment_intent": None,
                         "amount": amount, "currency": "usd", "status": status, "created": at,
                         "reason": "fraudulent", "livemode": False}, at)


def rewarded(rules: Rules, *, new_shape: bool = False) -> Engine:
    """cus_A paid 10,000 with charge ch_1: 500 + 1,000 + 2,500 earned."""
    engine = Engine(rules)
    feed(engine, customer("cus_A", JAN10, ucc="ucc_X", user="u1"))
    if new_shape:  # the charge's own charge.succeeded tells which customer it is
        feed(engine, invoice_paid("in_1", "cus_A", JAN10, amount_paid=10000, new_shape=True),
             invoice_payment_paid("in_1", JAN10, charge="ch_1"),
             charge("ch_1", "cus_A", JAN10, amount=10000))
    else:
        feed(engine, invoice_paid("in_1", "cus_A", JAN10, amount_paid=10000, charge="ch_1"))
    return engine


def payable(engine: Engine) -> int:
    return engine.referrer("ucc_X", as_of=LATER).currencies["usd"].payable  # type: ignore[union-attr]


def reversed_(engine: Engine) -> int:
    return engine.referrer("ucc_X").currencies["usd"].reversed  # type: ignore[union-attr]


def test_an_open_dispute_withholds_the_payments_reward_and_won_releases_it(rules: Rules) -> None:
    for new_shape in (False, True):
        engine = rewarded(rules, new_shape=new_shape)
        assert payable(engine) == 4000
        assert feed(engine, dispute("needs_response", 10000, ts("2026-01-20"))) == []
        assert payable(engine) == 500  # the signup bonus is not the payment's
        feed(engine, dispute("won", 10000, ts("2026-02-20"), type_="charge.dispute.closed"))
        assert (payable(engine), reversed_(engine)) == (4000, 0), new_shape


def test_a_lost_dispute_reverses_pro_rata_to_the_disputed_amount(rules: Rules) -> None:
    engine = rewarded(rules)
    feed(engine, dispute("needs_response", 4000, ts("2026-01-20")))
    out = feed(engine, dispute("lost", 4000, ts("2026-02-20"), type_="charge.dispute.closed"))
    assert [n.amount for n in notifications(out, REWARD_REVERSED)] == [1000]  # 2,500 × 4,000 / 10,000
    assert (payable(engine), reversed_(engine)) == (4000 - 1000, 1000)


def test_a_lost_dispute_with_partial_refunds_never_reverses_more_than_the_reward(rules: Rules) -> None:
    engine = rewarded(rules)
    refunded = refund("ch_1", "cus_A", JAN10, amount=10000, amount_refunded=3000, at=ts("2026-01-15"),
                      invoice="in_1")
    assert [n.amount for n in notifications(feed(engine, refunded), REWARD_REVERSED)] == [750]
    # the rest of the charge (7,000) disputed and lost: all of the reward is gone, no more
    out = feed(engine, dispute("lost", 9000, ts("2026-02-20"), type_="charge.dispute.closed"))
    assert [n.amount for n in notifications(out, REWARD_REVERSED)] == [1750]
    assert reversed_(engine) == 2500


def test_disputes_and_refunds_in_any_order_and_twice_give_the_same_totals(rules: Rules) -> None:
    events = [
        refund("ch_1", "cus_A", JAN10, amount=10000, amount_refunded=2000, at=ts("2026-01-15"),
               invoice="in_1"),
        dispute("needs_response", 3000, ts("2026-01-20")),
        dispute("lost", 3000, ts("2026-02-20"), type_="charge.dispute.closed"),
        dispute("warning_needs_response", 1000, ts("2026-01-21"), dp="dp_2"),
        dispute("won", 1000, ts("2026-02-21"), dp="dp_2", type_="charge.dispute.closed"),
    ]
    seen = set()
    for order in itertools.permutations(events):
        engine = rewarded(rules)
        feed(engine, *order, *order[:2])
        seen.add((reversed_(engine), payable(engine)))
    # 2,500 × (2,000 refunded + 3,000 lost) / 10,000 = 1,250; dp_2 won: nothing withheld
    assert seen == {(1250, 4000 - 1250)}


def test_a_dispute_lost_before_the_payment_was_rewarded_applies_with_the_reward(rules: Rules) -> None:
    engine = Engine(rules)
    feed(engine, customer("cus_A", JAN10, ucc="ucc_X", user="u1"),
         invoice_payment_paid("in_1", JAN10, charge="ch_1"), charge("ch_1", "cus_A", JAN10, amount=10000),
         dispute("lost", 5000, ts("2026-02-20"), type_="charge.dispute.closed"))
    feed(engine, invoice_paid("in_1", "cus_A", JAN10, amount_paid=10000, new_shape=True))
    assert reversed_(engine) == 1250


def test_a_dispute_of_an_unattributed_customers_charge_changes_nothing(rules: Rules) -> None:
    engine = Engine(rules)
    feed(engine, customer("cus_B", JAN10))
    feed(engine, invoice_paid("in_9", "cus_B", JAN10, amount_paid=10000, charge="ch_9"))
    assert feed(engine, dispute("lost", 10000, ts("2026-02-20"), ch="ch_9",
                                type_="charge.dispute.closed")) == []
    assert engine.summaries() == []
