"""`refstream replay --jobs N`: the referrer stage of the fold in N − 1 more processes.

The fold is a pipeline: this process parses the log and folds the customer and invoice
stages exactly as `Engine` does, in log order; every record the referrer stage would fold
goes, in the very order `Engine` would fold it, to the process that owns its referrer
(referrers partitioned by ucc, as the workers partition them). Control records go to the
owner of their ucc, or to every shard when they name none (payout runs, rules revisions).
The referrer stage never sends anything back, so each referrer sees exactly the sequence it
sees in one process: the figures, and so every report, are byte-identical to `--jobs 1`
(tests/replay/test_parallel_replay.py).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import pickle
import queue
import resource
import sys
import threading
from collections.abc import Callable, Iterable
from operator import attrgetter
from typing import Any, get_args

from processors.delivery import murmur2_partition
from processors.rules.engine import Engine
from projections.logsource import LogRecord
from projections.report import Figures
from schemas import control, events
from schemas.stripe import parse_event

FLUSH = 2000  # records per message to a shard
OUTBOX = 64  # messages a shard may fall behind before the fold waits for it (~13 MB)

# What the referrer stage is sent crosses to a shard as (its type's number, its fields):
# pickled tuples of scalars cost a fifth of encoding each record to JSON and decoding it again.
_KINDS: tuple[type[Any], ...] = get_args(events.ReferrerEvent)
_NUMBER = {cls: i for i, cls in enumerate(_KINDS)}
_FIELDS = {cls: attrgetter(*cls.__struct_fields__) for cls in _KINDS}


def _flat(record: Any) -> tuple[int, tuple[Any, ...]]:
    cls = type(record)
    return _NUMBER[cls], _FIELDS[cls](record)


def _unflat(flat: tuple[int, tuple[Any, ...]]) -> Any:
    return _KINDS[flat[0]](*flat[1])


def peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _serve_shard(conn: multiprocessing.connection.Connection, book: Any, follow_log: bool) -> None:
    """A referrer shard: folds what it is sent until told the "as of", then answers figures."""
    import gc

    from projections.replay import figures_of

    gc.disable()  # as in `fold`: the states have no reference cycles
    engine = Engine(book, follow_log=follow_log)
    feed_referrer, feed_control = engine.feed_referrer, engine.feed_control_record
    while True:
        message = pickle.loads(conn.recv_bytes())
        if message[0] == "stop":  # the fold ended early (a damaged export): nothing to answer
            return
        if message[0] == "as_of":
            conn.send_bytes(pickle.dumps((figures_of(engine, message[1]), peak_rss_mib()),
                                         protocol=pickle.HIGHEST_PROTOCOL))
            # Ends at once: freeing the shard's state object by object (~340 MB on the
            # bench log) took ~0.35 s, and the fold waits for the shard to end.
            conn.close()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        for ucc, raw, is_control in message[1]:
            if is_control:
                feed_control(control.decode(raw))
            else:
                feed_referrer(ucc, _unflat(raw))


class Shards:
    """N referrer shards in child processes; `send` batches per shard.

    A thread per shard writes the messages to its pipe, so the fold never waits for a
    shard that falls behind (writing to a full pipe releases the GIL): on the full bench
    log the fold waited ~2.4 s in all, while the reader, waiting for it in turn, left a
    core idle."""

    def __init__(self, n: int, book: Any, follow_log: bool) -> None:
        ctx = multiprocessing.get_context("fork")
        self.n = n
        self.pipes: list[multiprocessing.connection.Connection] = []
        self.procs = []
        for _ in range(n):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_serve_shard, args=(child, book, follow_log), daemon=True)
            proc.start()
            child.close()
            self.pipes.append(parent)
            self.procs.append(proc)
        self.pending: list[list[tuple[str, Any, bool]]] = [[] for _ in range(n)]
        # started after every fork: a child forked while a thread runs could inherit its locks
        self.outboxes: list[queue.Queue[bytes | None]] = [queue.Queue(OUTBOX) for _ in range(n)]
        self.failed: list[BaseException] = []
        self.senders = [threading.Thread(target=self._send, args=(pipe, box), daemon=True)
                        for pipe, box in zip(self.pipes, self.outboxes, strict=True)]
        for sender in self.senders:
            sender.start()

    def _send(self, pipe: multiprocessing.connection.Connection,
              box: queue.Queue[bytes | None]) -> None:
        try:
            while (message := box.get()) is not None:
                pipe.send_bytes(message)
        except BaseException as exc:  # raised again in the fold's thread
            self.failed.append(exc)

    def _post(self, i: int, message: bytes) -> None:
        if self.failed:
            raise self.failed[0]
        self.outboxes[i].put(message)

    def shard_of(self, ucc: str) -> int:
        return murmur2_partition(ucc.encode(), self.n) if self.n > 1 else 0

    def referrer(self, ucc: str, record: Any) -> None:
        i = self.shard_of(ucc)
        self.pending[i].append((ucc, _flat(record), False))
        if len(self.pending[i]) >= FLUSH:
            self._flush(i)

    def control(self, record: control.ControlRecord) -> None:
        raw = control.encode(record)
        ucc = getattr(record, "ucc", None)
        for i in ([self.shard_of(ucc)] if isinstance(ucc, str) else range(self.n)):
            self.pending[i].append(("", raw, True))
            if len(self.pending[i]) >= FLUSH:
                self._flush(i)

    def _flush(self, i: int) -> None:
        if self.pending[i]:
            self._post(i, pickle.dumps(("records", self.pending[i]), protocol=pickle.HIGHEST_PROTOCOL))
            self.pending[i] = []

    def ask(self, as_of: int) -> None:
        """Sends what is left and asks every shard for its figures at `as_of`; `answers`
        collects them (in between the fold may free its own state)."""
        for i in range(self.n):
            self._flush(i)
            self._post(i, pickle.dumps(("as_of", as_of)))
            self.outboxes[i].put(None)
        for sender in self.senders:
            sender.join()
        if self.failed:
            raise self.failed[0]

    def answers(self) -> tuple[dict[tuple[str, str], Figures], list[float]]:
        merged: dict[tuple[str, str], Figures] = {}
        rss: list[float] = []
        for pipe in self.pipes:
            figures, peak = pickle.loads(pipe.recv_bytes())
            merged.update(figures)
            rss.append(peak)
        return merged, rss

    def close(self) -> None:
        # a shard waiting for records never sees its pipe close (every shard forked after it
        # holds a copy of this end): without "stop" each one took the 5 s join below to end.
        # What is still in an outbox is dropped: a shard stops as soon as it reads "stop".
        for box in self.outboxes:
            with contextlib.suppress(queue.Empty):
                while True:
                    box.get_nowait()
            box.put(pickle.dumps(("stop",)))
            box.put(None)
        for sender in self.senders:
            sender.join(timeout=5)
        for pipe in self.pipes:
            pipe.close()
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()


def feed_parallel(
    batches: Iterable[list[LogRecord]], engine: Engine, shards: Shards,
    progress: Callable[[int], None] | None,
) -> tuple[int, int, int]:
    """`replay._feed` with the referrer stage in `shards`; returns (stripe, control, skipped)."""
    from projections.replay import UNREADABLE, ControlValue, prepared

    engine.referrer_sink = shards.referrer
    stripe = control_count = skipped = 0
    feed_event, feed_control = engine.feed_event, engine.feed_control_record
    for count, values in prepared(batches):
        for value in values:
            try:
                if type(value) is ControlValue:
                    control_count += 1
                    record = control.decode(value.value)
                    feed_control(record)  # this process's rule book and latest time
                    shards.control(record)
                else:
                    stripe += 1
                    feed_event(parse_event(value))  # type: ignore[arg-type]
            except UNREADABLE:
                skipped += 1
        if progress is not None:
            progress(count)
    return stripe, control_count, skipped
