"""docs/rules.md#review-cases: every review case's life is also written as case states (the
review-cases topic that `refstream review list` and `resolve` read): one when it opens, one
when it ends (approved, rejected, or linked for an unlinked refund), each standing alone."""

from __future__ import annotations

import orjson

from processors.delivery import MessageId, murmur2_partition
from processors.publisher import command_id
from processors.rules import referrer
from processors.rules.engine import Engine, Routed
from processors.stages import Counters, Wiring, stages
from schemas import commands
from schemas.commands import (
    ATTRIBUTION_CONFLICT,
    LARGE_REWARD,
    LATE_ATTRIBUTION,
    UNLINKED_REFUND,
    UNSUPPORTED_CURRENCY,
    CaseState,
    ReviewCase,
    fact_id,
)
from schemas.events import CASES, NOTIFICATIONS, REFERRER, REVIEWS
from schemas.rules import Rules
from tests.unit.builders import customer, invoice_paid, invoice_payment_paid, refund, ts
from tests.unit.conftest import cases, decide, feed, make_rules, payouts, released, run

JAN10 = ts("2026-01-10")
JAN11 = ts("2026-01-11")
LATER = ts("2026-06-01")


def states(out: list[Routed]) -> list[CaseState]:
    return [r.record for r in out if isinstance(r.record, CaseState)]


def opened(out: list[Routed]) -> tuple[ReviewCase, CaseState]:
    """The one case `out` opened, and its state: both say the same, to the field."""
    [case] = cases(out)
    [state] = states(out)
    assert [r.dest for r in out if r.record in (case, state)] == [REVIEWS, CASES]
    assert [r.key for r in out if r.record is state] == [case.ucc]  # routed by its referrer
    assert state == CaseState(fact_id("case_state", case.case_id, "open"), case.case_id, case.kind, case.ucc,
                              case.referral_id, "open", case.details, case.opened_at, None, None)
    return case, state


def test_every_kind_of_case_opens_with_a_state_saying_what_its_review_case_says(rules: Rules) -> None:
    kinds = []
    engine = Engine(rules)  # attribution conflict
    feed(engine, customer("cus_A", JAN10, ucc="ucc_X", user="u1"))
    kinds.append(opened(feed(engine, customer("cus_A", JAN10, ucc="ucc_Y", user="u1",
                                              type_="customer.updated", at=ts("2026-01-12")))))
    engine = Engine(rules)  # a payment 50 days before its attribution
    feed(engine, customer("cus_B", JAN10), invoice_paid("in_1", "cus_B", JAN11, amount_paid=4000))
    kinds.append(opened(feed(engine, customer("cus_B", JAN10, ucc="ucc_X", user="u2",
                                              type_="customer.updated", at=ts("2026-03-02")))))
    engine = Engine(rules)  # gbp has no [currency.gbp] table
    feed(engine, customer("cus_C", JAN10, ucc="ucc_X", user="u3"))
    kinds.append(opened(feed(engine, invoice_paid("in_1", "cus_C", JAN11, amount_paid=10000,
                                                  currency="gbp"))))
    engine = Engine(make_rules(currency_usd={"min_payout": 1, "review_above": 1999}))
    feed(engine, customer("cus_D", JAN10, ucc="ucc_X", user="u4"))
    kinds.append(opened(feed(engine, invoice_paid("in_1", "cus_D", JAN11, amount_paid=8000))))
    engine = Engine(rules)  # a refund of a charge nothing links, at the next payout run
    feed(engine, customer("cus_E", JAN10, ucc="ucc_X", user="u5"),
         invoice_paid("in_1", "cus_E", JAN11, amount_paid=10000, new_shape=True),
         refund("ch_x", "cus_E", JAN11, amount=10000, amount_refunded=4000, at=ts("2026-01-20")))
    kinds.append(opened(run(engine, "r1", ts("2026-02-01"))))
    assert [case.kind for case, _ in kinds] == [ATTRIBUTION_CONFLICT, LATE_ATTRIBUTION, UNSUPPORTED_CURRENCY,
                                                LARGE_REWARD, UNLINKED_REFUND]
    assert kinds[-1][1].opened_at == ts("2026-02-01")  # the run's requested_at, as on the case


def test_a_decision_ends_the_case_with_its_time_and_reason_and_what_it_opened_with(rules: Rules) -> None:
    for approve, status in ((True, "approved"), (False, "rejected")):
        engine = Engine(rules)
        feed(engine, customer("cus_A", JAN10, ucc="ucc_X", user="u1"),
             invoice_paid("in_1", "cus_A", JAN11, amount_paid=10000, currency="gbp"))
        case, was = opened(feed(engine, invoice_paid("in_2", "cus_A", ts("2026-01-12"), amount_paid=10000,
                                                     currency="eur")))
        out = decide(engine, case, approve, ts("2026-02-01"))
        [ended] = states(out)
        assert ended == CaseState(fact_id("case_state", case.case_id, status), case.case_id, case.kind,
                                  "ucc_X", case.referral_id, status, was.details, was.opened_at,
                                  ts("2026-02-01"), "checked by a test")
        assert out[0].record == ended  # ended before what the decision released
        assert decide(engine, case, not approve, ts("2026-02-02")) == []  # a second decision: nothing
        # the other case of the referral is still open, and says so
        summary = engine.referrer("ucc_X", as_of=LATER)
        assert summary is not None and summary.open_cases == 1


def test_an_unlinked_refund_opens_at_the_run_and_ends_linked_when_its_link_arrives(rules: Rules) -> None:
    engine = Engine(rules)
    feed(engine, customer("cus_A", JAN10, ucc="ucc_X", user="u1"),
         invoice_paid("in_1", "cus_A", JAN11, amount_paid=10000, new_shape=True))
    # waiting for its link: no case, no state, nothing in the queue
    assert feed(engine, refund("ch_1", "cus_A", JAN11, amount=10000, amount_refunded=10000,
                               at=ts("2026-01-20"), event_id="evt_refund_1")) == []
    case, was = opened(run(engine, "r1", ts("2026-03-01")))
    out = feed(engine, invoice_payment_paid("in_1", JAN11, charge="ch_1"))
    [ended] = states(out)
    assert (ended.case_state_id, ended.status) == (fact_id("case_state", case.case_id, "linked"), "linked")
    assert (ended.details, ended.opened_at) == (was.details, was.opened_at)
    assert ended.decided_at == ts("2026-01-20")  # the time of the refund the link resolved
    assert ended.reason is not None and "linked" in ended.reason and "evt_refund_1" in ended.reason
    assert released(decide(engine, case, True, ts("2026-03-02"))) == []
    assert states(decide(engine, case, True, ts("2026-03-02"))) == []  # ended: a decision adds no state


def test_a_refund_linked_before_any_run_never_reaches_the_queue(rules: Rules) -> None:
    engine = Engine(rules)
    out = feed(engine, customer("cus_A", JAN10, ucc="ucc_X", user="u1"),
               invoice_paid("in_1", "cus_A", JAN11, amount_paid=10000, new_shape=True),
               refund("ch_1", "cus_A", JAN11, amount=10000, amount_refunded=10000, at=ts("2026-01-20")),
               invoice_payment_paid("in_1", JAN11, charge="ch_1"))
    out += run(engine, "r1", ts("2026-03-01"))
    assert states(out) == [] and cases(out) == []


def test_a_referrer_stored_before_cases_kept_their_opening_still_ends_them(rules: Rules) -> None:
    """Table values written by a worker before case states existed: their case rows have six
    fields. They load, and a decision still ends the case (with what is known of it)."""
    engine = Engine(rules)
    feed(engine, customer("cus_A", JAN10, ucc="ucc_X", user="u1"),
         invoice_paid("in_1", "cus_A", JAN11, amount_paid=10000, charge="ch_1"))
    [case] = cases(feed(engine, customer("cus_A", JAN10, ucc="ucc_Y", user="u1", type_="customer.updated",
                                         at=ts("2026-01-12"))))
    row = orjson.loads(referrer.dumps(engine.referrers["ucc_X"]))
    row[5] = {cid: c[:6] for cid, c in row[5].items()}
    engine.referrers["ucc_X"] = referrer.loads(orjson.dumps(row))
    out = decide(engine, case, True, ts("2026-02-01"))
    assert [(s.case_id, s.status, s.details, s.opened_at) for s in states(out)] == [
        (case.case_id, "approved", {}, 0)]
    [payout] = payouts(run(engine, "r1", LATER))
    assert payout.amount == 4000  # released as before


def test_a_case_state_goes_to_its_referrers_outbox_partition_keyed_by_its_own_id(rules: Rules) -> None:
    """The publisher keeps a referrer's commands in order and checks ids per outbox partition:
    a case state shares its referrer's partition, whatever its own key."""
    wiring = Wiring(stripe_events="s", control="c", customer="wc", invoice="wi", referrer="wr",
                    outbox="outbox", dead_letters="d", partitions=8)
    stage = stages(wiring, rules, Counters())[REFERRER]
    engine = Engine(rules)
    feed(engine, customer("cus_A", JAN10, ucc="ucc_X", user="u1"))
    out = feed(engine, invoice_paid("in_1", "cus_A", JAN11, amount_paid=10000, currency="gbp"))
    case, state = opened(out)
    note = Routed(NOTIFICATIONS, "ucc_X", commands.NotificationCommand(
        "n1", commands.NEW_SIGNUP, "ucc_X", "user:u1", "usd", 500, "evt_1", JAN10))
    outs = stage.route([*out, note], MessageId("wr#0", 1, 0), 0)
    by_id = {command_id(o.value): o for o in outs}
    assert set(by_id) == {case.case_id, state.case_state_id, "n1"}
    to_state = by_id[state.case_state_id]
    assert (to_state.topic, to_state.key) == ("outbox", state.case_state_id.encode())
    assert to_state.partition == murmur2_partition(b"ucc_X", 8)
    # the other commands go by their key, the ucc, to that very partition
    assert {(o.key, o.partition) for o in (by_id[case.case_id], by_id["n1"])} == {(b"ucc_X", None)}
    assert commands.decode(to_state.value) == state
