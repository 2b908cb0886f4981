"""The worker's stream flow control keeps records that arrive while a recovery ends.

faust 0.15.3 ends every recovery after a rebalance with `flow_control.resume()` while the
stream queues are already flowing; faust's own resume clears them, dropping records
already fetched (and counted as read). `processors/app.py: StreamFlow` keeps them. The
pipeline-level check is tests/pipeline/test_two_workers.py (webhooks during rebalances).
"""

from __future__ import annotations

from processors.app import StreamFlow, WorkerApp
from processors.windows import FETCH_MAX_WAIT_MS, FETCH_MIN_BYTES


async def test_a_resume_of_flowing_queues_keeps_what_they_hold() -> None:
    app = WorkerApp("flow-control-test", broker="kafka://127.0.0.1:1")
    assert isinstance(app.flow_control, StreamFlow)
    queue = app.FlowControlQueue(maxsize=10, clear_on_resume=True)  # a stream's queue
    app.flow_control.resume()  # recovery starts the flow
    queue.put_nowait("record fetched as the recovery ends")
    app.flow_control.resume()  # what faust calls at the very end of the recovery
    assert queue.qsize() == 1


async def test_a_resume_after_a_rebalance_suspended_the_flow_still_clears() -> None:
    app = WorkerApp("flow-control-test", broker="kafka://127.0.0.1:1")
    queue = app.FlowControlQueue(maxsize=10, clear_on_resume=True)
    app.flow_control.resume()
    app.flow_control.suspend()  # a rebalance starts
    queue.put_nowait("record of the previous assignment")
    app.flow_control.resume()
    assert queue.qsize() == 0


async def test_the_worker_consumer_long_polls_briefly() -> None:
    # a partition whose records the streams have just taken is fetched again only when the
    # fetch in flight returns: faust's 1,500 ms long-poll left webhooks waiting that long
    app = WorkerApp("flow-control-test", broker="kafka://127.0.0.1:1")
    kafka_consumer = app.consumer._thread._create_worker_consumer(app.transport)  # type: ignore[attr-defined]
    assert kafka_consumer._fetch_max_wait_ms == FETCH_MAX_WAIT_MS <= 100
    # and waits for more than one record, up to that bound
    assert kafka_consumer._fetch_min_bytes == FETCH_MIN_BYTES > 1
