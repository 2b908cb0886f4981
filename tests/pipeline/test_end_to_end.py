"""Signed webhooks through ingest and the worker give exactly the pure core's commands."""

from __future__ import annotations

import random

import pytest

from projections.demo import Programme, programme, worked_example
from schemas.commands import PayoutCommand
from tests.pipeline.stack import Stack, of_kind

pytestmark = pytest.mark.kafka


async def test_duplicated_and_shuffled_webhooks_give_the_engines_commands_with_the_same_ids(
    stack: Stack,
) -> None:
    rng = random.Random(11)
    bodies = worked_example() + list(programme(Programme(referrers=6, customers=30, seed=11)))
    bodies += rng.sample(bodies, len(bodies) // 5)  # Stripe delivers some events twice
    rng.shuffle(bodies)
    await stack.start_ingest()
    worker = await stack.start_worker()
    await stack.post(bodies)
    before_run = await stack.assert_outputs_match_engine()
    assert of_kind(before_run, PayoutCommand) == []

    await stack.payout_run("2026-02-15T00:00:00+00:00")
    got = await stack.assert_outputs_match_engine()
    payouts = of_kind(got, PayoutCommand)
    assert payouts, "the run paid nobody"
    # the worked example (docs/rules.md#worked-example) inside the mix: ucc_X is paid 500 + 2500 + 1000 − 1250
    assert [(p.ucc, p.amount, p.currency) for p in payouts if p.ucc == "ucc_X"] == [("ucc_X", 2750, "usd")]
    status, summary = await stack.get_json(worker, "/referrers/ucc_X?as_of=1771113600")
    assert status == 200
    usd = {figure: money["amount"] for figure, money in summary["currencies"]["usd"].items()}
    assert usd == {"earned": 4000, "reversed": 1250, "net": 2750, "paid": 2750, "payable": 0}
    assert {money["currency"] for money in summary["currencies"]["usd"].values()} == {"usd"}

    # the same command again (same run id, derived from --as-of) pays nothing more
    await stack.payout_run("2026-02-15T00:00:00+00:00")
    again = await stack.assert_outputs_match_engine()
    assert len(of_kind(again, PayoutCommand)) == len(payouts)
