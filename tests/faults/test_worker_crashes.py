"""Ten random kill -9s of the worker while the pipeline processes a stream and a payout
run: the output topics (read_committed) equal the pure Engine's outputs exactly."""

from __future__ import annotations

import asyncio
import collections
import random

import pytest

from projections.demo import Programme, programme, worked_example
from schemas.commands import PayoutCommand
from tests.faults.conftest import Reliability
from tests.faults.worker_helpers import stats
from tests.pipeline.stack import Proc, Stack, command_id, normalized, of_kind, until

pytestmark = pytest.mark.kafka


KILLS = 10
CHUNKS = 7  # the stream arrives in 7 parts, one per kill; the last 3 kills hit payout runs


async def _kill_at_a_random_moment(stack: Stack, worker: Proc, rng: random.Random, busy: bool) -> str:
    """Kill while it processes records (busy) or at a random moment of its start and recovery."""
    if busy:
        async def processing() -> bool:
            stack.assert_alive()
            doc = await stats(stack, worker)
            return bool(doc and doc["processed"] > 0)

        await until(f"{worker.name} to process records", processing, 90, every_s=0.05)
        moment = "while processing"
    else:
        await asyncio.sleep(rng.uniform(0.2, 4.0))
        stack.assert_alive()
        moment = "while starting or recovering"
    stack.kill9(worker)
    return moment


async def test_ten_random_kill_9s_of_the_worker_lose_and_repeat_no_command(
    stack: Stack, reliability: Reliability
) -> None:
    stack, rng = stack, random.Random(6)
    bodies = worked_example() + list(programme(Programme(referrers=8, customers=60, seed=61)))
    size = -(-len(bodies) // CHUNKS)
    chunks = [bodies[i: i + size] for i in range(0, len(bodies), size)]
    await stack.start_ingest()
    worker = await stack.start_worker()

    moments: list[str] = []
    for kill in range(KILLS):
        posting = None
        if kill < len(chunks):
            posting = asyncio.create_task(stack.post(chunks[kill]))
        else:
            # everything posted and folded (a run pays what is folded when it arrives, see
            # docs/pipeline.md): a payout run per remaining kill, which lands while it is paid out
            await stack.wait_drained()
            month = 3 + kill - len(chunks)
            await stack.payout_run(f"2026-{month:02d}-01T00:00:00+00:00", f"faults-run-{month}")
        moments.append(await _kill_at_a_random_moment(stack, worker, rng, busy=kill % 2 == 0))
        if posting is not None:
            await posting
        worker = await stack.restart(worker, ready=False)

    assert len(moments) == KILLS
    got = await stack.assert_outputs_match_engine()  # waits for the restarted worker's outputs
    expected = await stack.expected()
    want = collections.Counter(normalized(r) for r in expected)
    have = collections.Counter(normalized(r) for r in got)
    missing, extra = sum((want - have).values()), sum((have - want).values())
    ids = [command_id(r) for r in got]
    duplicates = len(ids) - len(set(ids))
    assert (missing, extra, duplicates) == (0, 0, 0)
    assert of_kind(got, PayoutCommand), "the run paid nobody"

    busy = sum(m == "while processing" for m in moments)
    reliability.record(
        "test_ten_random_kill_9s_of_the_worker_lose_and_repeat_no_command",
        what=f"{KILLS} kill -9s of the worker (restarted each time) while {len(bodies)} webhooks and "
             "3 payout runs flow through ingest and the worker; outputs read with read_committed",
        sent=len(bodies), acknowledged=len(stack.posted), lost=missing, duplicated=duplicates,
        kills=KILLS,
        notes=f"{len(got)} commands, all equal to the pure Engine's (same ids, same amounts); "
              f"{busy} kills while processing, {KILLS - busy} while starting or recovering",
    )
