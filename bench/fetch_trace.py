"""Where fetched records wait: a trace of a worker's Kafka fetches (a bench tool).

    .venv/bin/python -m bench.pipeline --events 2000 --rate 500 --trace-fetches DIR
    .venv/bin/python -m bench.fetch_trace DIR/fetch-<pid>.tsv     # the summary

`bench/pipeline.py --trace-fetches DIR` starts its latency-run worker through `run()`
below, which wraps three methods of aiokafka's `Fetcher` before the worker starts. Every
consumer of the worker (faust's, the publisher's) then logs, one tab-separated line each:

- `A`: a round of the fetcher's loop: the partitions, by topic, of the fetch request it
  sends (or `-`), those it leaves out because their last fetched records have not been
  taken yet, and whether a fetch is still in flight;
- `R`: a fetch response: how long it took and the topics it brought records for;
- `G`: records handed to the consumer's caller (faust's `getmany`), per partition: how
  many, the age of the oldest and newest when their fetch arrived, and how long they
  waited after it.

The summary prints, per consumer and topic, the records' age when their fetch arrived
and their wait before being taken (docs/pipeline.md, "Where the last second per stage
went"). This patches aiokafka internals (0.14) for measurement only; nothing in the
product imports it.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import defaultdict
from typing import Any, TextIO

STAGES = ("stripe-events", "customer", "invoice", "referrer", "outbox", "control", "changelog")


def _short(topic: str) -> str:
    return next((s for s in STAGES if s in topic), topic)


def install(out: TextIO) -> None:
    import aiokafka.consumer.fetcher as fetcher_module

    fetcher = fetcher_module.Fetcher
    lock = threading.Lock()  # faust's consumer runs in its own thread

    def line(*parts: object) -> None:
        with lock:
            out.write("\t".join(map(str, parts)) + "\n")

    actions = fetcher._get_actions_per_node
    proc = fetcher._proc_fetch_request
    fetched = fetcher.fetched_records

    def traced_actions(self: Any, assignment: Any) -> Any:
        result = actions(self, assignment)
        requests = result[0]
        sent = sorted({f"{_short(t)}:{len(p)}" for _, rq in requests for t, p in rq.topics})
        left_out = sorted({_short(tp.topic) for tp in assignment.tps if tp in self._records})
        line("A", time.time(), id(self) % 1000, ",".join(sent) or "-", ",".join(left_out) or "-",
             int(bool(self._in_flight)))
        return result

    async def traced_proc(self: Any, assignment: Any, node_id: Any, request: Any) -> Any:
        start = time.time()
        before = set(self._records)
        result = await proc(self, assignment, node_id, request)
        new: dict[str, int] = defaultdict(int)
        for tp in set(self._records) - before:
            new[_short(tp.topic)] += 1
        line("R", time.time(), id(self) % 1000, round(time.time() - start, 4),
             ",".join(f"{k}:{v}" for k, v in sorted(new.items())) or "-")
        return result

    async def traced_fetched(self: Any, partitions: Any, timeout: float = 0, max_records: Any = None) -> Any:
        arrived = {tp: getattr(r, "_created", None) for tp, r in self._records.items()}
        mono, wall = time.monotonic(), time.time()
        result = await fetched(self, partitions, timeout, max_records)
        now = time.time()
        for tp, records in result.items():
            created = arrived.get(tp)
            at = wall + (created - mono) if created is not None else now  # the fetch's arrival
            stamps = [r.timestamp / 1000 for r in records]
            line("G", now, id(self) % 1000, _short(tp.topic), tp.partition, len(records),
                 round(at - min(stamps), 4), round(at - max(stamps), 4), round(now - at, 4))
        return result

    fetcher._get_actions_per_node = traced_actions  # type: ignore[method-assign]
    fetcher._proc_fetch_request = traced_proc  # type: ignore[method-assign]
    fetcher.fetched_records = traced_fetched  # type: ignore[method-assign]


def run() -> None:
    """`refstream` with the trace installed; the trace goes to $REFSTREAM_BENCH_FETCH_TRACE_DIR."""
    directory = os.environ["REFSTREAM_BENCH_FETCH_TRACE_DIR"]
    out = open(os.path.join(directory, f"fetch-{os.getpid()}.tsv"), "w", buffering=1)  # noqa: SIM115
    install(out)
    from refstream.cli import main

    sys.argv[0] = "refstream"
    main()


def _quantile(values: list[float], q: float) -> float:
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 3)


def summary(path: str, skip: float = 0.0) -> str:
    """Per consumer and topic: records, their age when fetched and their wait after it
    (the first `skip` share of the trace left out, e.g. a warm-up)."""
    with open(path) as f:
        rows = [ln.rstrip("\n").split("\t") for ln in f]
    if not rows:
        return "empty trace"
    first, last = float(rows[0][1]), float(rows[-1][1])
    since = first + (last - first) * skip
    taken: dict[tuple[str, str], list[tuple[int, float, float, float]]] = defaultdict(list)
    responses: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        if float(r[1]) < since:
            continue
        if r[0] == "G":
            taken[(r[2], r[3])].append((int(r[5]), float(r[6]), float(r[7]), float(r[8])))
        elif r[0] == "R":
            responses[r[2]].append(float(r[3]))
    seconds = max(last - since, 1e-9)
    out = []
    for (consumer, topic), batches in sorted(taken.items()):
        # one value per record: a batch's figures stand for each of its records
        oldest, newest, waited = ([b[i] for b in batches for _ in range(b[0])] for i in (1, 2, 3))
        out.append(f"consumer {consumer} {topic:14s} {len(oldest):7,d} records; age when fetched: "
                   f"oldest of its fetch p50 {_quantile(oldest, .5)} s p99 {_quantile(oldest, .99)} s, "
                   f"newest p50 {_quantile(newest, .5)} s; then waited p50 {_quantile(waited, .5)} s "
                   f"p99 {_quantile(waited, .99)} s")
    for consumer, took in sorted(responses.items()):
        slow = sum(t > 1 for t in took)
        out.append(f"consumer {consumer} {len(took) / seconds:.1f} fetch responses/s, each p50 "
                   f"{_quantile(took, .5)} s p90 {_quantile(took, .9)} s, {slow} over 1 s")
    return "\n".join(out)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit("usage: python -m bench.fetch_trace TRACE.tsv [SKIP_SHARE]  "
                         "(a trace written by bench.pipeline --trace-fetches DIR)")
    print(summary(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 0.0))
