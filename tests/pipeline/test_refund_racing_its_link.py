"""A refund posted right after the `invoice_payment.paid` that links its charge (issue #12).

The link travels through the invoice stage and back to the customer stage; the refund goes
straight to the customer stage, so the worker usually folds the refund first. Through the
real ingest and worker: no review case opens, the payout run pays what `refstream replay`
says it pays, and replay from Kafka and from an export agree
(docs/design.md#one-order).
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from schemas.commands import PayoutCommand, ReviewCase
from tests.pipeline.stack import RULES, Stack, of_kind
from tests.unit.builders import customer, invoice_paid, invoice_payment_paid, refund, ts

pytestmark = pytest.mark.kafka

JAN10 = ts("2026-01-10")
AS_OF = ts("2026-02-15")


def bodies(n: int) -> list[list[bytes]]:
    """Per referrer: signup, a paid invoice of the 2025-03-31+ shape (no charge on it), then
    the link and the half refund back to back. The worked example's figures: 500 signup
    bonus + 1,000 purchase bonus + 2,500 reward − 1,250 reversed = 2,750."""
    out = []
    for i in range(n):
        cus, inv, ch = f"cus_race_{i}", f"in_race_{i}", f"ch_race_{i}"
        out.append([
            customer(cus, JAN10, ucc=f"ucc_race_{i}", user=f"u_race_{i}"),
            invoice_paid(inv, cus, JAN10 + 3600, amount_paid=11900, total=11900, total_excluding_tax=10000,
                         new_shape=True),
            invoice_payment_paid(inv, JAN10 + 3600, charge=ch),
            refund(ch, cus, JAN10 + 3600, amount=11900, amount_refunded=5950, at=JAN10 + 7200),
        ])
    return out


async def test_a_refund_right_after_its_link_opens_no_case_and_pays_what_replay_pays(
    stack: Stack, tmp_path: Path,
) -> None:
    await stack.start_ingest()
    await stack.start_worker()
    referrers = bodies(4)
    for history in referrers:
        await stack.post(history[:2])
    await stack.wait_drained()
    for history in referrers:
        await stack.post(history[2:])  # link and refund back to back
    await stack.payout_run("2026-02-15T00:00:00+00:00", "race-run")
    got = await stack.assert_outputs_match_engine()
    assert of_kind(got, ReviewCase) == []
    payouts = sorted((p.ucc, p.currency, p.amount) for p in of_kind(got, PayoutCommand))
    assert payouts == [(f"ucc_race_{i}", "usd", 2750) for i in range(len(referrers))]

    from_kafka = stack.cli("replay", "--rules", str(RULES), "--format", "json", "--as-of", str(AS_OF),
                           "--no-progress").stdout
    export = tmp_path / "log.jsonl.gz"
    stack.cli("export", "--out", str(export), "--no-progress")
    from_file = stack.cli("replay", "--rules", str(RULES), "--format", "json", "--as-of", str(AS_OF),
                          "--source", str(export), "--no-progress").stdout
    assert from_file == from_kafka
    rows = {r["ucc"]: r for r in orjson.loads(from_kafka)["rows"]}
    for ucc, _, amount in payouts:
        assert (rows[ucc]["paid"], rows[ucc]["reversed"], rows[ucc]["payable"]) == (amount, 1250, 0)
