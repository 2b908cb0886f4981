"""A cheaper hand-off of fetched records from faust's consumer to the streams.

faust 0.15.3's consumer passes every fetched record to the conductor through
`Service.wait_first(callback(message), suspend_flow.wait())`: four tasks and an
`asyncio.wait` per record, so that a hand-off stuck behind flow control (a rebalance) is
abandoned when the flow is suspended. Almost every hand-off completes without waiting
(the record goes straight into a stream queue), and then that machinery cost more than
the hand-off itself; worse, each record needed several turns of the event loop, so the
hand-off ran at the pace of the loop's turns (150-1,300 records/s at 300 webhooks/s
while fetched records waited for seconds: docs/pipeline.md, "Steady state").

`install(consumer)` runs the first step of each hand-off directly. If it completes,
nothing else happens. If it has to wait, the rest of it runs under faust's own
`wait_first`, so a suspension of the flow abandons it exactly as before; a hand-off
attempted while the flow is suspended goes to `wait_first` as before, untouched.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


async def _finish(handoff: Coroutine[Any, Any, Any], waiting_on: Any) -> Any:
    """Run the rest of a coroutine whose first step yielded `waiting_on`, the way an
    asyncio task would: resume it when what it waits for is done, pass a cancellation
    of this task on to it (so its own clean-up runs)."""
    while True:
        cancelled = False
        try:
            if waiting_on is None:  # a bare yield (`sleep(0)`): give the loop a turn
                await asyncio.sleep(0)
            else:
                # the coroutine's yield marked the future as awaited; an asyncio task
                # clears that mark before it waits on the future, and so must we
                waiting_on._asyncio_future_blocking = False
                await waiting_on
        except asyncio.CancelledError:
            cancelled = True
        except Exception:  # the coroutine reads the future's error itself when resumed
            pass
        try:
            waiting_on = handoff.throw(asyncio.CancelledError()) if cancelled else handoff.send(None)
        except StopIteration as done:
            return done.value


def install(consumer: Any) -> None:
    """Replace `consumer.wait_first` with one that takes the direct path for the record
    hand-off of `Consumer._drain_messages`, and leaves every other call as it was."""
    service_wait_first = consumer.wait_first
    suspend_flow = consumer.suspend_flow

    def is_suspend_wait(coro: object) -> bool:
        frame = getattr(coro, "cr_frame", None)
        return frame is not None and frame.f_locals.get("self") is suspend_flow

    async def wait_first(*coros: Any, timeout: Any = None) -> Any:
        if (len(coros) != 2 or timeout is not None or not isinstance(coros[0], Coroutine)
                or not is_suspend_wait(coros[1]) or suspend_flow.is_set()):
            return await service_wait_first(*coros, timeout=timeout)
        handoff, suspended = coros
        try:
            waiting_on = handoff.send(None)
        except StopIteration:
            suspended.close()
            return None  # handed over; the caller does not look at the result
        except BaseException:
            suspended.close()
            raise
        return await service_wait_first(_finish(handoff, waiting_on), suspended)

    consumer.wait_first = wait_first
