"""kill -9 the worker at several points: every expected command exactly once, none missing."""

from __future__ import annotations

import pytest

from projections.demo import Programme, programme, worked_example
from schemas.commands import PayoutCommand
from tests.pipeline.stack import Stack, of_kind, until

pytestmark = pytest.mark.kafka


async def test_kill_9_mid_stream_mid_recovery_and_mid_payout_run_loses_and_repeats_nothing(
    stack: Stack,
) -> None:
    import asyncio

    bodies = worked_example() + list(programme(Programme(referrers=10, customers=120, seed=23)))
    third = len(bodies) // 3
    first, second, last = bodies[:third], bodies[third: 2 * third], bodies[2 * third:]
    await stack.start_ingest()
    worker = await stack.start_worker()

    # 1. mid-stream: webhooks arriving, the worker busy folding and publishing
    posting = asyncio.create_task(stack.post(first))
    await until("the first published commands", stack.outputs, 60, every_s=0.1)
    stack.kill9(worker)
    await posting

    # 2. more events while it is down; restart, and kill it again as soon as it works
    await stack.post(second)
    worker = await stack.restart(worker)

    async def busy() -> bool:
        status, stats = await stack.get_json(worker, "/readyz")
        return status == 200 and stats["processed"] > 0

    await until("the restarted worker to process records", busy, 60, every_s=0.05)
    stack.kill9(worker)
    worker = await stack.restart(worker)
    await stack.post(last)
    await stack.assert_outputs_match_engine()

    # 3. mid payout run: the run is on the control topic, the worker dies paying it out
    await stack.payout_run("2026-03-01T00:00:00+00:00")
    stack.kill9(worker)
    worker = await stack.restart(worker)
    got = await stack.assert_outputs_match_engine()
    assert of_kind(got, PayoutCommand), "the run paid nobody"
