"""Replay equals live: after the real pipeline (ingest + worker processes) has processed a
programme, `refstream replay` with the same rules reports exactly the worker's per-referrer
figures and the payouts on the payout topic, from Kafka and from an export."""

from __future__ import annotations

import collections
import random
from pathlib import Path

import orjson
import pytest

from projections.demo import Programme, programme, worked_example
from schemas.commands import PayoutCommand
from tests.pipeline.stack import RULES, Stack, of_kind

pytestmark = pytest.mark.kafka

AS_OF = 1782777600  # 2026-06-30T00:00:00Z: some entries past their hold, some not


async def test_replay_reports_the_workers_tables_and_payouts_from_kafka_and_from_an_export(
    stack: Stack, tmp_path: Path,
) -> None:
    rng = random.Random(5)
    bodies = worked_example() + list(programme(Programme(referrers=6, customers=30, seed=5)))
    bodies += rng.sample(bodies, len(bodies) // 5)  # Stripe delivers some events twice
    rng.shuffle(bodies)
    await stack.start_ingest()
    worker = await stack.start_worker()
    await stack.post(bodies)
    await stack.assert_outputs_match_engine()  # drained: every event is in the tables
    await stack.payout_run("2026-02-15T00:00:00+00:00")
    await stack.payout_run("2026-05-01T00:00:00+00:00")
    got = await stack.assert_outputs_match_engine()
    payouts = of_kind(got, PayoutCommand)
    assert payouts, "the runs paid nobody"

    from_kafka = stack.cli("replay", "--rules", str(RULES), "--format", "json", "--as-of", str(AS_OF),
                           "--no-progress").stdout
    export = tmp_path / "log.jsonl.gz"
    stack.cli("export", "--out", str(export), "--no-progress")
    from_file = stack.cli("replay", "--rules", str(RULES), "--format", "json", "--as-of", str(AS_OF),
                          "--source", str(export), "--no-progress").stdout
    assert from_file == from_kafka

    report = orjson.loads(from_kafka)
    rows = report["rows"]
    assert report["events"]["skipped"] == 0
    assert len({r["ucc"] for r in rows}) >= 6
    # per referrer and currency: exactly what the worker's table answers
    for row in rows:
        status, live = await stack.get_json(worker, f"/referrers/{row['ucc']}?as_of={AS_OF}")
        assert status == 200, live
        assert live["referrals"] == row["referrals"], row["ucc"]
        figures = live["currencies"].get(row["currency"], {})
        money = {k: figures[k]["amount"] if k in figures else 0
                 for k in ("earned", "reversed", "net", "paid", "payable")}
        assert {k: row[k] for k in ("earned", "reversed", "net", "paid", "payable")} == money, row["ucc"]
    # and what was paid is exactly the payout topic
    paid = collections.Counter()
    for p in payouts:
        paid[(p.ucc, p.currency)] += p.amount
    assert {(r["ucc"], r["currency"]): r["paid"] for r in rows if r["paid"]} == dict(paid)
