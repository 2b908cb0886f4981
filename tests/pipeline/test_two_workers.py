"""Two workers share the partitions; stopping one hands its share to the other."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import aiohttp
import orjson
import pytest

from projections.demo import Programme, programme, worked_example
from schemas.commands import NotificationCommand
from schemas.topics import DEFAULT_PARTITIONS
from tests.pipeline.stack import Proc, Stack, of_kind

pytestmark = pytest.mark.kafka


async def test_two_workers_share_hand_over_and_answer_for_every_referrer(stack: Stack) -> None:
    bodies = worked_example() + list(programme(Programme(referrers=8, customers=60, seed=31)))
    half = len(bodies) // 2
    stack.web_token = "s3cret-web-token"
    await stack.start_ingest()
    one = await stack.start_worker("worker-1")
    two = await stack.start_worker("worker-2")
    await stack.post(bodies[:half])
    got = await stack.assert_outputs_match_engine()

    # both took part: each folded records of its own partitions
    for worker in (one, two):
        _, stats = await stack.get_json(worker, "/readyz")
        assert stats["processed"] > 0, f"{worker.name} got no partitions"

    # any worker answers for any referrer, from the partition that owns it
    uccs = sorted({n.ucc for n in of_kind(got, NotificationCommand)})
    for ucc in uccs:
        answers = [await stack.get_json(w, f"/referrers/{ucc}?as_of=1771113600") for w in (one, two)]
        assert answers[0][0] == 200, answers[0]
        assert answers[0] == answers[1]
    status, body = await stack.get_json(one, "/referrers/ucc_nobody")
    assert status == 404 and "no referrer" in body["error"]
    # … and its history; and either worker pages through every referrer, gathered from both
    path = f"/referrers/{uccs[0]}/history?as_of=1771113600"
    histories = [await stack.get_json(w, path) for w in (one, two)]
    assert histories[0][0] == 200 and histories[0] == histories[1]
    for worker in (one, two):
        listed: list[str] = []
        after = ""
        while True:
            status, page = await stack.get_json(worker, f"/referrers?limit=3&after={after}&as_of=1771113600")
            assert status == 200, page
            listed += [r["ucc"] for r in page["referrers"]]
            if page["next_after"] is None:
                break
            after = page["next_after"]
        assert listed == uccs
    # REFSTREAM_WEB_TOKEN is set: without the bearer token, no answer (also when forwarded)
    for worker in (one, two):
        status, body = await stack.get_json(worker, f"/referrers/{uccs[0]}", auth=False)
        assert status == 401 and "Bearer" in body["fix"]

    # stopping one: the other takes over its partitions, with the same guarantee
    stack.stop(one)
    await stack.post(bodies[half:])
    await stack.payout_run("2026-02-15T00:00:00+00:00")
    got = await stack.assert_outputs_match_engine()
    for ucc in sorted({n.ucc for n in of_kind(got, NotificationCommand)}):
        status, summary = await stack.get_json(two, f"/referrers/{ucc}?as_of=1771113600")
        assert status == 200 and summary["ucc"] == ucc, orjson.dumps(summary)


async def test_webhooks_arriving_while_a_worker_joins_and_leaves_are_each_folded_once(
    bootstrap: str, tmp_path: Path
) -> None:
    """Scaling out and back in under traffic. Each rebalance ends with a recovery that, in
    faust 0.15.3, dropped records fetched while it finished (processors/app.py StreamFlow):
    the outputs then missed those webhooks' commands, and later ones were computed from the
    wrong state."""
    # the operator's default partition count: faust's window for the loss grew with it
    # (one round trip per assigned partition), so this stack has 8, not the tests' 4
    stack = Stack(bootstrap, f"t{uuid.uuid4().hex[:10]}", tmp_path)
    stack.create_topics(partitions=DEFAULT_PARTITIONS)
    try:
        await scale_out_and_in_under_traffic(stack)
    finally:
        stack.close()


async def scale_out_and_in_under_traffic(stack: Stack) -> None:
    bodies = list(programme(Programme(referrers=8, customers=200, seed=47)))
    await stack.start_ingest()
    one = await stack.start_worker("worker-1")
    settled = asyncio.Event()
    traffic = asyncio.create_task(stack.post_paced(bodies, settled, every_s=0.05))

    async def rebalanced(worker: Proc, after: int) -> int:
        """Wait until `worker` went through another rebalance and is ready again."""
        async def done() -> int | None:
            assert not traffic.done() or traffic.exception() is None, traffic.exception()
            try:
                status, body = await stack.get_json(worker, "/readyz", timeout_s=5)
            except (TimeoutError, aiohttp.ClientError):
                return None
            return body["rebalances"] if status == 200 and body["rebalances"] > after else None
        return int(await stack.until(f"{worker.name} to take its new partitions", done, 120))

    _, first = await stack.get_json(one, "/readyz")
    two = await stack.start_worker("worker-2")  # joins while webhooks arrive
    seen = await rebalanced(one, first["rebalances"])
    await asyncio.to_thread(stack.stop, two)  # and leaves while they still arrive
    await rebalanced(one, seen)
    settled.set()
    await traffic
    assert len(stack.posted) == len(bodies)
    await stack.assert_outputs_match_engine()
