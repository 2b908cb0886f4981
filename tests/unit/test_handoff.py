"""The consumer's record hand-off (processors/handoff.py): a record that can go straight
into its stream is handed over at once, one that has to wait still waits, and a
suspension of the flow (a rebalance) still abandons a waiting hand-off."""

from __future__ import annotations

import asyncio
import warnings

from mode import Service
from mode.utils.locks import Event

from processors import handoff


class Consumer(Service):
    """The two things `handoff.install` uses of faust's consumer: a mode Service's
    `wait_first`, and the `suspend_flow` event."""

    def __post_init__(self) -> None:
        self.suspend_flow = Event()


async def test_a_record_that_need_not_wait_is_handed_over_at_once() -> None:
    consumer = Consumer()
    handoff.install(consumer)
    delivered: list[str] = []

    async def deliver(record: str) -> None:
        delivered.append(record)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "coroutine ... was never awaited" would fail it
        for record in ("a", "b", "c"):
            await consumer.wait_first(deliver(record), consumer.suspend_flow.wait())
    assert delivered == ["a", "b", "c"]


async def test_a_record_whose_stream_is_full_waits_until_there_is_room() -> None:
    consumer = Consumer()
    handoff.install(consumer)
    room = asyncio.Event()
    delivered: list[str] = []

    async def deliver(record: str) -> None:
        await room.wait()
        delivered.append(record)

    waiting = asyncio.ensure_future(consumer.wait_first(deliver("a"), consumer.suspend_flow.wait()))
    await asyncio.sleep(0.05)
    assert delivered == [] and not waiting.done()
    room.set()
    await asyncio.wait_for(waiting, 5)
    assert delivered == ["a"]


async def test_a_suspended_flow_abandons_a_waiting_hand_off() -> None:
    consumer = Consumer()
    handoff.install(consumer)
    outcome: list[str] = []

    async def deliver(record: str) -> None:
        try:
            await asyncio.Event().wait()  # never room: stuck behind flow control
            outcome.append("delivered")
        except asyncio.CancelledError:
            outcome.append("abandoned")
            raise

    waiting = asyncio.ensure_future(consumer.wait_first(deliver("a"), consumer.suspend_flow.wait()))
    await asyncio.sleep(0.05)
    consumer.suspend_flow.set()  # a rebalance begins
    await asyncio.wait_for(waiting, 5)
    await asyncio.sleep(0)  # let the abandoned hand-off run its clean-up
    assert outcome == ["abandoned"]


async def test_a_hand_off_while_the_flow_is_suspended_does_not_block() -> None:
    consumer = Consumer()
    handoff.install(consumer)
    consumer.suspend_flow.set()  # a rebalance is under way
    delivered: list[str] = []

    async def deliver(record: str) -> None:
        await asyncio.Event().wait()  # flow control holds it
        delivered.append(record)

    # faust's own wait_first, as before: the suspension wins and the consumer moves on
    await asyncio.wait_for(consumer.wait_first(deliver("a"), consumer.suspend_flow.wait()), 5)
    assert delivered == []


async def test_other_waits_are_faust_s_own() -> None:
    consumer = Consumer()
    handoff.install(consumer)
    other = asyncio.Event()
    asyncio.get_running_loop().call_later(0.02, other.set)
    result = await consumer.wait_first(other.wait(), timeout=5)
    assert result.results == [True] and not result.stopped
