"""The payout lifecycle, adjustments and the audit trail through the real worker
(docs/rules.md#the-payout-lifecycle, #manual-adjustments, #audit-trail): a failed payout
comes back in the next run with an adjustment, the commands equal the Engine's, and the
history `refstream audit` prints from the log is the worker's, explaining every cent of
the summary the worker answers; `GET /referrers` pages through every referrer."""

from __future__ import annotations

from collections import defaultdict

import orjson
import pytest

from projections.demo import Programme, programme, worked_example
from schemas.commands import PAYOUT_FAILED, NotificationCommand, PayoutCommand, fact_id
from tests.pipeline.stack import Stack, of_kind

pytestmark = pytest.mark.kafka

AS_OF = 1772323200  # 2026-03-01


async def test_a_failed_payout_comes_back_with_an_adjustment_and_the_history_explains_every_cent(
        stack: Stack) -> None:
    await stack.start_ingest()
    worker = await stack.start_worker()
    await stack.post(worked_example() + list(programme(Programme(referrers=4, customers=12, seed=5))))
    await stack.payout_run("2026-02-15T00:00:00+00:00")
    got = await stack.assert_outputs_match_engine()
    [first] = [p for p in of_kind(got, PayoutCommand) if p.ucc == "ucc_X"]
    assert first.amount == 2750

    failed = stack.cli("payouts", "mark-failed", first.payout_id, "--reason", "the account is closed",
                       "--actor", "ana")
    assert "its amount is owed again and the next payout run pays it" in failed.stdout
    stack.cli("ledger", "adjust", "ucc_X", "--amount", "250", "--currency", "usd", "--reason",
              "goodwill for the delay", "--at", "2026-02-20T00:00:00Z", "--actor", "ana")
    shown = stack.cli("payouts", "run", "--as-of", "2026-03-01T00:00:00Z", "--yes", "--reason",
                      "March").stdout
    assert "ucc_X" in shown and "$30.00" in shown, shown  # the preview: 2750 again, and the 250
    got = await stack.assert_outputs_match_engine()  # the worker pays what the Engine pays, ids and all
    [told] = [n for n in of_kind(got, NotificationCommand) if n.kind == PAYOUT_FAILED]
    assert (told.ucc, told.amount) == ("ucc_X", 2750)
    [again] = [p for p in of_kind(got, PayoutCommand) if p.ucc == "ucc_X" and p.run_id != first.run_id]
    assert again.amount == 2750 + 250
    assert fact_id(PAYOUT_FAILED, first.payout_id) in again.entry_ids

    # the worker's history is the one `refstream audit` folds from the log
    status, live = await stack.get_json(worker, f"/referrers/ucc_X/history?as_of={AS_OF}")
    assert status == 200, live
    audit = orjson.loads(stack.cli("audit", "ucc_X", "--json", "--as-of", str(AS_OF)).stdout)
    assert {k: v for k, v in audit.items() if k != "accounts"} == live
    status, summary = await stack.get_json(worker, f"/referrers/ucc_X?as_of={AS_OF}")
    assert status == 200 and {k: v for k, v in live.items() if k != "history"} == summary
    # … and it explains every cent of what the worker reports
    usd = {figure: money["amount"] for figure, money in summary["currencies"]["usd"].items()}
    lines = [h for h in live["history"] if h["amount"] is not None]
    owed = usd["net"] - usd["paid"]
    assert sum(h["amount"]["amount"] for h in lines) == owed == lines[-1]["balance"]["amount"]
    by_figure: dict[str, int] = defaultdict(int)
    for h in lines:
        by_figure[h["figure"]] += h["amount"]["amount"]
    assert (by_figure["earned"], -by_figure["reversed"], -by_figure["paid"]) == (
        usd["earned"], usd["reversed"], usd["paid"])
    kinds = [h["kind"] for h in live["history"]]
    assert kinds.count("payout") == 2 and "payout_failed" in kinds and "adjustment" in kinds
    failed_line = next(h for h in live["history"] if h["kind"] == "payout_failed")
    assert failed_line["note"] == "the account is closed (by ana)" and failed_line["ref"] == first.payout_id

    # every referrer, a page of two at a time, from the worker
    uccs = sorted({n.ucc for n in of_kind(got, NotificationCommand)})
    seen: list[str] = []
    after = ""
    while True:
        status, page = await stack.get_json(worker, f"/referrers?limit=2&after={after}&as_of={AS_OF}")
        assert status == 200, page
        seen += [r["ucc"] for r in page["referrers"]]
        if page["next_after"] is None:
            break
        after = page["next_after"]
    assert seen == uccs
    status, page = await stack.get_json(worker, f"/referrers?limit=100&as_of={AS_OF}")
    assert next(r for r in page["referrers"] if r["ucc"] == "ucc_X") == summary
