"""The console's fold over real topics: after a first fold it folds only what was appended
since, and that gives exactly what a fold of the whole log gives (docs/console.md#limits).

The log is written the way ingest and a worker write it (Stripe records keyed by customer,
control records, the worker's markers in every stripe-events partition and its placement
notes), so the placement rules of docs/design.md#one-order are exercised without a worker.
"""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaProducer

from projections.demo import (
    Programme,
    customer,
    customer_of,
    invoice_paid,
    late_attribution_example,
    programme,
    ts,
    worked_example,
)
from refstream.console import model
from refstream.console.sources import Config, Projector, fold_log
from schemas import control
from schemas.rules import load_rules
from schemas.topics import Topics, marker_key, placed_key
from tests.console.helpers import RULES

pytestmark = pytest.mark.kafka

PARTITIONS = 4  # tests/pipeline/stack.py creates 4


class Log:
    """Writes to the environment's stripe-events and control topics as ingest and a worker do."""

    def __init__(self, producer: AIOKafkaProducer, topics: Topics) -> None:
        self.producer, self.topics = producer, topics

    async def stripe(self, bodies: list[bytes]) -> None:
        for body in bodies:
            await self.producer.send_and_wait(self.topics.stripe_events, body, key=customer_of(body).encode())

    async def control(self, record: control.ControlRecord, *, place: bool = True) -> int:
        meta = await self.producer.send_and_wait(self.topics.control, control.encode(record))
        if place:
            await self.place(meta.offset, control.encode(record))
        return int(meta.offset)

    async def place(self, offset: int, value: bytes) -> None:
        markers = {}
        for p in range(PARTITIONS):
            meta = await self.producer.send_and_wait(self.topics.stripe_events, value, key=marker_key(offset),
                                                     partition=p)
            markers[str(p)] = meta.offset
        note = control.encode(control.ControlPlaced(offset, markers))
        await self.producer.send_and_wait(self.topics.control, note, key=placed_key(offset), partition=0)


def same(a: model.Fold, b: model.Fold, as_of: int) -> None:
    assert model.totals(a, as_of) == model.totals(b, as_of)
    assert model.rows(a, as_of) == model.rows(b, as_of)
    assert sorted(a.payouts, key=lambda p: p.payout_id) == sorted(b.payouts, key=lambda p: p.payout_id)
    assert a.effects == b.effects
    for ucc in a.engine.referrers:
        assert model.detail(a, ucc, as_of) == model.detail(b, ucc, as_of), ucc


async def test_folding_what_was_appended_gives_what_a_whole_fold_gives(
    stack: object, bootstrap: str, topics: Topics
) -> None:
    cfg = Config(bootstrap, topics, worker_urls=(), ingest_url=None)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        log = Log(producer, topics)
        revision = load_rules(RULES).revision
        await log.control(control.RulesRevision(revision, 0, RULES.read_text(), 1, "worker", "first"))
        await log.stripe([*worked_example(), *late_attribution_example(), *programme(Programme(4, 10, 3))])
        projector = Projector(cfg)
        first, fresh = await projector.current()
        assert fresh and not first.incremental and first.stripe_events > 0

        # more events, a decision and a payout run, each placed by "the worker"
        [late] = [cid for cid, c in first.engine.referrers["ucc_R"].cases.items()]
        await log.control(control.ReviewDecision(late, "ucc_R", True, "confirmed", ts("2026-02-20"), "Ada"))
        await log.stripe([customer("evt_n_cus", "cus_N", ts("2026-01-20"), ucc="ucc_X", user="u_n"),
                          invoice_paid("evt_n_inv", "in_N1", "cus_N", ts("2026-01-21"), amount_paid=4900,
                                       total=4900, total_excluding_tax=4900, charge="ch_N1")])
        await log.control(control.PayoutRun("march", ts("2026-03-01"), ts("2026-03-02"), "Ada", "March"))
        projector.invalidate()  # as after the console's own action: no waiting for the next fold
        second, fresh = await projector.current()
        assert fresh and second.incremental  # only what was appended was read
        assert first.payouts == [] and "ucc_R" not in {p.ucc for p in first.payouts}  # the first is untouched
        same(second, await asyncio.to_thread(fold_log, cfg), ts("2026-04-01"))
        assert second.effects[late].released == {"usd": 500}

        # a control record no worker has placed yet is folded by its time, as replay folds
        # it; the fold after that starts over, so it takes effect where the worker puts it
        april = control.PayoutRun("april", ts("2026-04-01"), ts("2026-04-02"), "Ada", "April")
        offset = await log.control(april, place=False)
        projector.invalidate()
        third, _ = await projector.current()
        assert third.incremental and third.unplaced == {offset}
        same(third, await asyncio.to_thread(fold_log, cfg), ts("2026-05-01"))
        await log.stripe([invoice_paid("evt_n_inv2", "in_N2", "cus_N", ts("2026-03-01"), amount_paid=10000,
                                       total=10000, total_excluding_tax=10000, charge="ch_N2")])
        await log.place(offset, control.encode(april))
        projector.invalidate()
        fourth, fresh = await projector.current()
        assert fresh and not fourth.incremental and not fourth.unplaced
        same(fourth, await asyncio.to_thread(fold_log, cfg), ts("2026-05-01"))
        # the payment appended after the run but before its markers is paid by it, as live
        def april_to_x(f: model.Fold) -> list[int]:
            return [p.amount for p in f.payouts if p.run_id == "april" and p.ucc == "ucc_X"]

        assert april_to_x(third) == [] and april_to_x(fourth) == [2500]
    finally:
        await producer.stop()
