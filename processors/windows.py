"""How long the worker waits for records: the batch an agent gathers, a publisher round, a
fetch at the broker.

Every batch and every round costs the same fixed work however few records it holds
(produce requests and an ack wait, faust's acks and commits; for the publisher one
transaction per outbox partition: five requests, markers and a transaction-log write),
so at 500 webhooks/s fixed 100 ms windows of ~50 records spent most of the worker's CPU
on it. A quiet stream (under BUSY_RECORDS records per window) keeps QUIET_S, for latency;
a busier one waits longer, growing with the last window's size up to BUSY_S.
"""

from __future__ import annotations

QUIET_S = 0.1
BUSY_S = 0.3
BUSY_RECORDS = 25


def next_window(last_count: int) -> float:
    """Seconds the next batch or round gathers, from how many records the last one held."""
    return min(BUSY_S, max(QUIET_S, QUIET_S * last_count / BUSY_RECORDS))


# How long a fetch may wait at the broker for records (the consumer's long-poll): faust's
# worker consumer hard-codes 1,500 ms, aiokafka's default is 500 ms. aiokafka keeps one
# fetch in flight per broker, and leaves out of it the partitions whose last fetched
# records have not been taken yet. Once taken, those partitions wait for the fetch in
# flight to return: if it covers only quiet partitions (the control topic, a stage
# without traffic, the changelogs), that is the whole long-poll. At 500 webhooks/s
# stripe-events records waited ~1.7 s that way (docs/pipeline.md). A short long-poll
# bounds the wait; an idle consumer sends ~10 empty fetch requests a second.
FETCH_MAX_WAIT_MS = 100
# ... and how much it waits for: a response as soon as one record is there (aiokafka's
# default) made ~40 fetches a second at 500 webhooks/s, each paying its fixed cost in the
# consumer for a few records. Waiting for 64 KiB (or FETCH_MAX_WAIT_MS, whichever comes
# first) keeps it near 10 a second.
FETCH_MIN_BYTES = 64 * 1024
