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

`install_rewind(consumer)` makes the consumer fetch again what faust fetched and then
dropped before the hand-off. faust's `Consumer.getmany` drops the rest of a fetch when
the flow stops or the generation changes, and drops the records of a partition that is
not active (paused) when its records come out, although the consumer thread has already
moved the partition's position past them. faust counts on a later seek to the committed
offsets to fetch them again, but aiokafka's `seek_to_committed` leaves a partition that
has no committed offset yet where it is: that partition's first records were never
fetched again, and the next commit went past them (faust's check for a hole at the head
of a partition only runs once an offset is committed). Right after a rebalance, the
consumer thread sees every newly assigned partition as active until faust pauses it for
the recovery, so a fetch that completes in that moment lost a new partition's first
webhooks (docs/pipeline.md, "Records missing in a handover"). Now, when a fetch is done
with, each partition whose records were not all handed over is put back to the first
one it dropped, before the next fetch, unless its position is already there or further
back (faust sought it to the committed offset, or a new assignment starts there). Table
changelog partitions are left alone: a recovery seeks them to where the table is.

`install_commit_guard(consumer)` makes a commit prove that the agents finished every
record below it. faust computes the offset to commit from the acks it kept since the
last commit plus "gaps" its drain loop records whenever a partition's offsets jump
(meant for offsets that hold no record, such as transaction markers). A record dropped
after it was read makes such a jump, and the gap interval also covers the record that
revealed it, so faust committed past records no agent ever saw; it also forgets a
partition's acks when a rebalance revokes it, and skips its check for a missing first
record while the partition has no committed offset. The worker's stream topics have a
record at every offset (no transactional writer, no compaction), so the guard commits a
partition only up to its first offset the agents did not acknowledge, counted from where
the partition was positioned at the end of the last recovery (its committed offset, or
the start of the log for a partition with nothing committed, which is then fetched again
from there). A record that never arrives holds its partition's commits back, with a
warning, until the next rebalance fetches it again; nothing is committed past it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Coroutine, Mapping
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import IllegalStateError

log = logging.getLogger("refstream.worker.consumer")

# How long a put-back waits for a partition's position (a new assignment looks it up).
POSITION_WAIT_S = 5.0


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


async def _put_back(kafka_consumer: Any, dropped: dict[Any, int]) -> None:
    """On the consumer thread: move each partition that is still assigned back to its first
    dropped offset, unless its position is already there or further back (a seek to the
    committed offset, or a new assignment that starts from it)."""
    for tp, offset in dropped.items():
        atp = TopicPartition(tp.topic, tp.partition)
        try:
            if atp not in kafka_consumer.assignment():
                continue  # revoked: its next owner starts from the committed offset
            position = await asyncio.wait_for(kafka_consumer.position(atp), POSITION_WAIT_S)
            if offset < position:
                kafka_consumer.seek(atp, offset)
                log.info("fetched records the streams did not take are fetched again",
                         extra={"topic": atp.topic, "partition": atp.partition, "offset": offset,
                                "position": position})
        except (IllegalStateError, TimeoutError):
            # revoked meanwhile, or a new assignment still looking up where to start: it
            # starts from the committed offset, at or before what was dropped
            continue


def install_rewind(consumer: Any) -> None:
    """Wrap `consumer.getmany` so that records it fetched but did not hand over are
    fetched again (see the module docstring)."""
    fetch = consumer._wait_next_records
    getmany = consumer.getmany
    fetched: dict[Any, list[Any]] = {}  # the records of the fetch being handed over

    async def wait_next_records(timeout: float) -> Any:
        records, active = await fetch(timeout)
        fetched.clear()
        if records:
            fetched.update(records)
        return records, active

    async def getmany_and_rewind(timeout: float) -> AsyncIterator[tuple[Any, Any]]:
        handed: dict[Any, int] = {}
        async for tp, message in getmany(timeout):
            handed[tp] = message.offset
            yield tp, message
        dropped: dict[Any, int] = {}
        for tp, records in fetched.items():
            if consumer._is_changelog_tp(tp):
                continue  # a table's recovery seeks its changelog partitions itself
            last = handed.get(tp)
            first = next((r.offset for r in records if last is None or r.offset > last), None)
            if first is not None:
                dropped[tp] = first
        fetched.clear()
        if dropped:
            # before the next fetch, so nothing after them is handed over first
            thread = consumer._thread
            await thread.call_thread(_put_back, thread._ensure_consumer(), dropped)

    consumer._wait_next_records = wait_next_records
    consumer.getmany = getmany_and_rewind


# A partition whose commits are held back at one offset this long is logged (once per offset).
HELD_BACK_WARN_S = 30.0


async def _start_uncommitted(kafka_consumer: Any, committed: Mapping[Any, Any], is_changelog: Any,
                             ) -> dict[Any, int]:
    """On the consumer thread, after a seek to the committed offsets: put each stream
    partition that has no committed offset at the start of its log (aiokafka's
    `seek_to_committed` leaves it where it is), and return where every stream partition
    now starts."""
    bases: dict[Any, int] = {}
    fresh = []
    for tp, offset in committed.items():
        if is_changelog(tp):
            continue
        if offset:
            bases[tp] = int(offset)
        else:
            fresh.append(TopicPartition(tp.topic, tp.partition))
    if fresh:
        await kafka_consumer.seek_to_beginning(*fresh)
        for atp in fresh:
            bases[atp] = await asyncio.wait_for(kafka_consumer.position(atp), POSITION_WAIT_S)
    return bases


def install_commit_guard(consumer: Any) -> None:
    """Replace faust's choice of the offset to commit (see the module docstring)."""
    thread = consumer._thread
    is_changelog = consumer._is_changelog_tp
    seek_to_committed = consumer.seek_to_committed
    ack = consumer.ack
    base: dict[Any, int] = {}  # per stream partition: the next offset that must be acknowledged
    done: defaultdict[Any, set[int]] = defaultdict(set)  # acknowledged offsets at or above it
    held: dict[Any, tuple[int, float, bool]] = {}  # (offset, since, warned) of a held-back partition

    async def seek_to_committed_and_start() -> Mapping[Any, Any]:
        committed = await seek_to_committed()
        bases = await thread.call_thread(_start_uncommitted, thread._ensure_consumer(), committed,
                                         is_changelog)
        for tp, offset in bases.items():
            base[tp] = offset
            done[tp] = {o for o in done[tp] if o >= offset}
        return committed

    def ack_and_note(message: Any) -> bool:
        tp = message.tp
        if not is_changelog(tp):
            start = base.get(tp)
            if start is None or message.offset >= start:
                done[tp].add(message.offset)
            consumer._acked[tp]  # faust asks for a commit only for partitions listed here
        return bool(ack(message))

    def new_offset(tp: Any) -> int | None:
        start = base.get(tp)
        if start is None:
            return None  # not positioned by a recovery yet: nothing is known to be complete
        acked = done[tp]
        offset = start
        while offset in acked:
            acked.discard(offset)
            offset += 1
        # faust's own bookkeeping below that point is settled
        consumer._acked[tp][:] = [o for o in consumer._acked[tp] if o >= offset]
        consumer._acked_index[tp].difference_update(range(start, offset))
        consumer._gap[tp].chop(0, offset)
        if acked and min(acked) > offset:
            _note_held_back(tp, offset)
        else:
            held.pop(tp, None)
        if offset == start:
            return None
        base[tp] = offset
        return offset

    def _note_held_back(tp: Any, offset: int) -> None:
        now = time.monotonic()
        at, since, warned = held.get(tp, (offset, now, False))
        if at != offset:
            at, since, warned = offset, now, False
        if not warned and now - since >= HELD_BACK_WARN_S:
            warned = True
            log.warning("a partition's commits are held back at a record no stream finished; "
                        "the next rebalance fetches it again",
                        extra={"topic": tp.topic, "partition": tp.partition, "offset": offset})
        held[tp] = (at, since, warned)

    consumer.seek_to_committed = seek_to_committed_and_start
    consumer.ack = ack_and_note
    consumer._new_offset = new_offset
