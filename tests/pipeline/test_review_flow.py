"""Review flow: a case opens, the referral's payout is withheld, approval releases it on
the next run, and deciding the case again changes nothing; an open case outlives the
output topics' retention (docs/rules.md#review-cases)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from projections.demo import customer, invoice_paid, ts, worked_example
from refstream.commands.review import read_to_end
from schemas import commands
from schemas.commands import CaseState, PayoutCommand, ReviewCase
from tests.pipeline.stack import Stack, of_kind

pytestmark = pytest.mark.kafka

JAN10 = ts("2026-01-10")


async def test_a_case_withholds_the_payout_until_approved_and_a_second_decision_changes_nothing(
    stack: Stack,
) -> None:
    await stack.start_ingest()
    worker = await stack.start_worker()
    await stack.post([
        *worked_example(),  # ucc_X: a referrer without a case, paid as usual
        customer("evt_r_cus", "cus_R", JAN10, ucc="ucc_R", user="u_r"),
        # euros are not configured in the rules: an unsupported_currency case
        invoice_paid("evt_r_inv", "in_R1", "cus_R", JAN10 + 3600, amount_paid=10000, total=10000,
                     total_excluding_tax=10000, charge="ch_R1", currency="eur"),
    ])
    got = await stack.assert_outputs_match_engine()
    [case] = of_kind(got, ReviewCase)
    assert (case.kind, case.ucc) == ("unsupported_currency", "ucc_R")
    listed = stack.cli("review", "list").stdout
    assert case.case_id in listed and "1 open" in listed

    # the case pauses the referral: its signup bonus is payable but withheld
    await stack.payout_run("2026-03-01T00:00:00+00:00", "march")
    got = await stack.assert_outputs_match_engine()
    assert {p.ucc for p in of_kind(got, PayoutCommand)} == {"ucc_X"}
    _, summary = await stack.get_json(worker, f"/referrers/ucc_R?as_of={ts('2026-03-01')}")
    assert summary["open_cases"] == 1 and summary["currencies"]["usd"]["payable"]["amount"] == 0  # withheld

    resolved = stack.cli("review", "resolve", case.case_id, "--approve", "--reason", "EUR deal agreed")
    assert "approve" in resolved.stdout
    assert "No open review cases." in stack.cli("review", "list").stdout
    await stack.payout_run("2026-03-01T00:00:00+00:00", "march-after-review")
    got = await stack.assert_outputs_match_engine()
    released = sorted((p.currency, p.amount) for p in of_kind(got, PayoutCommand) if p.ucc == "ucc_R")
    # eur: 25 % of 10000 by the normal rule, without a cap (and min_payout 1 by default);
    # the usd signup bonus (500) is released too but stays below usd's min_payout of 2000
    assert released == [("eur", 2500)]

    again = stack.cli("review", "resolve", case.case_id, "--reject", "--reason", "changed my mind")
    assert "changes nothing" in again.stdout
    await stack.payout_run("2026-04-01T00:00:00+00:00", "april")
    got = await stack.assert_outputs_match_engine()
    assert sorted((p.currency, p.amount) for p in of_kind(got, PayoutCommand) if p.ucc == "ucc_R") == released
    _, summary = await stack.get_json(worker, f"/referrers/ucc_R?as_of={ts('2026-04-01')}")
    assert summary["open_cases"] == 0
    assert summary["currencies"]["eur"]["paid"] == {"amount": 2500, "currency": "eur"}
    assert summary["currencies"]["usd"]["payable"] == {"amount": 500, "currency": "usd"}


async def test_resolving_an_unknown_case_names_the_problem_and_the_fix(stack: Stack) -> None:
    result = stack.cli("review", "resolve", "case_nope", "--approve", "--reason", "x", check=False)
    assert result.returncode != 0
    assert "no review case 'case_nope'" in result.stderr and "refstream review list" in result.stderr


async def delete_every_record(bootstrap: str, topics: Sequence[str]) -> None:
    """What retention does to a topic in time: every record up to its end offset is deleted."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await consumer.start()
    await admin.start()
    try:
        await consumer._client.force_metadata_update()  # every topic's partitions
        tps = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]
        assert {tp.topic for tp in tps} == set(topics)
        ends = {tp: end for tp, end in (await consumer.end_offsets(tps)).items() if end > 0}
        # the new start of each partition is its end: nothing left to read
        assert await admin.delete_records({tp: RecordsToDelete(end) for tp, end in ends.items()}) == ends
    finally:
        await admin.close()
        await consumer.stop()


async def test_an_open_case_stays_listable_and_resolvable_after_the_reviews_topic_lost_it(
    stack: Stack,
) -> None:
    await stack.start_ingest()
    await stack.start_worker()
    await stack.post([
        customer("evt_r_cus", "cus_R", JAN10, ucc="ucc_R", user="u_r"),
        invoice_paid("evt_r_inv", "in_R1", "cus_R", JAN10 + 3600, amount_paid=10000, total=10000,
                     total_excluding_tax=10000, charge="ch_R1", currency="eur"),
    ])
    got = await stack.assert_outputs_match_engine()
    [case] = of_kind(got, ReviewCase)
    [opened] = of_kind(got, CaseState)
    assert (opened.case_id, opened.status) == (case.case_id, "open")

    # the case is older than the outputs' retention: every record of the reviews topic (and of
    # the other 30-day outputs) is gone
    t = stack.topics
    await delete_every_record(stack.bootstrap, [t.reviews, t.notifications, t.payouts])
    assert await read_to_end(stack.bootstrap, [t.reviews, t.notifications, t.payouts]) == []

    listed = stack.cli("review", "list").stdout
    assert case.case_id in listed and "unsupported_currency" in listed and "1 open" in listed
    resolved = stack.cli("review", "resolve", case.case_id, "--approve", "--reason", "EUR deal agreed")
    assert (f"appended decision approve for case {case.case_id} (unsupported_currency, ucc ucc_R)"
            in resolved.stdout)
    assert "No open review cases." in stack.cli("review", "list").stdout

    async def ended() -> list[CaseState]:  # the worker applied the decision
        records = await read_to_end(stack.bootstrap, [t.review_cases])
        return [s for s in map(commands.decode, (v for _, v in records))
                if isinstance(s, CaseState) and s.status == "approved"]

    [approved] = await stack.until("the case's approved state", ended, 60)
    assert (approved.case_id, approved.reason, approved.details) == (case.case_id, "EUR deal agreed",
                                                                      case.details)
    listed_all = stack.cli("review", "list", "--all").stdout
    assert case.case_id in listed_all and listed_all.rstrip().endswith("approved")

    # the referral is released: the next run pays it
    await stack.payout_run("2026-03-01T00:00:00+00:00", "after-review")

    async def paid() -> list[PayoutCommand]:
        return [p for p in of_kind([v for _, v in await read_to_end(stack.bootstrap, [t.payouts])],
                                   PayoutCommand) if p.ucc == "ucc_R"]

    payouts = await stack.until("ucc_R's payout", paid, 60)
    assert [(p.run_id, p.currency, p.amount) for p in payouts] == [("after-review", "eur", 2500)]
