"""How long the worker gathers records before it processes them: an agent's batch, or a
publisher round.

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
