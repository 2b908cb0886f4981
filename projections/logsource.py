"""Where replay and export read the log from: Kafka (read-only) or an export file.

Both sources yield batches of `LogRecord`s in *replay order*: the stripe-events partitions
and the control topic merged by record timestamp, each partition kept in offset order.
The Kafka source never joins a consumer group and never commits: it `assign()`s every
partition, starts at the earliest offset and stops at the end offsets it saw at start,
so a replay neither disturbs the live workers nor chases records appended meanwhile.
An export file is written in replay order already, so reading it back gives the same
sequence without buffering.

By default each source reads in a child process (`in_child=True`): decompressing,
decoding the export's JSON lines or aiokafka's record parsing then run on another core
while the caller folds, and only the finished records cross a pipe (pickled tuples, ~2 µs
a record; a replay asks `prepared` for just the values, ~0.2 µs a record). The child runs
this very class with `in_child=False`, so both ways yield the same records in the same
order and fail with the same messages.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import gzip
import io
import os
import pickle
import queue
import re
import subprocess
import sys
import threading
import traceback
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Annotated, Any, NamedTuple, cast

import msgspec
import orjson
from isal import igzip, isal_zlib

from schemas.topics import CONTROL, STRIPE_EVENTS, Topics, marker_offset, placed_offset

KINDS = (STRIPE_EVENTS, CONTROL)
# At equal timestamps a stripe event goes before a control event: a payout run requested
# in the same millisecond as a payment sees that payment, as the live worker would.
_KIND_RANK = {STRIPE_EVENTS: 0, CONTROL: 1}

EXPORT_FORMAT = "refstream-export"
EXPORT_VERSION = 1
BATCH = 10_000


class SourceError(Exception):
    """The log cannot be read: the message names the problem and the fix."""


class LogRecord(NamedTuple):
    """One Kafka record as replay sees it. A NamedTuple rather than a dataclass: a replay
    makes millions of them and a tuple is several times cheaper to build."""

    kind: str  # STRIPE_EVENTS or CONTROL
    partition: int
    offset: int
    timestamp: int  # the Kafka record timestamp, milliseconds since the epoch
    key: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    value: bytes  # exactly the bytes stored in Kafka

    def order(self) -> tuple[int, int, int, int]:
        return (self.timestamp, _KIND_RANK[self.kind], self.partition, self.offset)


# --- merging ------------------------------------------------------------------------------


class LogMerger:
    """Merges the stripe-events partitions and the control topic into replay order.

    Stripe records of different partitions go by (timestamp, partition, offset), each
    partition kept in offset order even if its timestamps go backwards (producer clocks
    differ). A control record takes effect where the worker placed it
    (docs/design.md#one-order): after every Stripe record before its markers and before
    every record after them, in all partitions. A control record not placed yet (no worker
    has seen it, or a log written by hand) goes by its timestamp, after Stripe records of the
    same millisecond: the place a worker would most likely give it.

    The control topic is small and read whole first (`control`), so the merger knows which
    control records have markers before it meets them. A record can only be released once
    every unfinished partition has a head to compare it with.
    """

    def __init__(self, stripe_partitions: list[tuple[str, int]], control: list[LogRecord]) -> None:
        self._buffers: dict[tuple[str, int], deque[LogRecord]] = {p: deque() for p in stripe_partitions}
        self._open: set[tuple[str, int]] = set(stripe_partitions)
        self._control: deque[LogRecord] = deque(sorted(control, key=lambda r: r.offset))
        self._placed = {k for r in control if (k := placed_offset(r.key)) is not None}

    def add(self, part: tuple[str, int], records: list[LogRecord]) -> None:
        self._buffers[part].extend(records)

    def finish(self, part: tuple[str, int]) -> None:
        self._open.discard(part)

    def waiting_for(self) -> list[tuple[str, int]]:
        """Unfinished partitions with nothing buffered: the merge cannot go on without them."""
        return [p for p in self._open if not self._buffers[p]]

    def drain(self) -> list[LogRecord]:
        out: list[LogRecord] = []
        buffers, control, placed = self._buffers, self._control, self._placed
        while True:
            if self.waiting_for():
                return out
            while control and placed_offset(control[0].key) is not None:
                out.append(control.popleft())  # a placement note: kept in the log, folds nothing
            c = control[0] if control else None
            best: LogRecord | None = None
            best_buf: deque[LogRecord] | None = None
            blocked = False
            stale = False
            for buf in buffers.values():
                if not buf:
                    continue  # finished
                head = buf[0]
                k = marker_offset(head.key)
                if k is not None:
                    if c is None or k < c.offset:
                        out.append(buf.popleft())  # a duplicate, or for a record already released
                        stale = True
                        break
                    blocked = True  # at the marker of `c` or of a later control record
                    continue
                if best is None or head.order() < best.order():
                    best, best_buf = head, buf
            if stale:
                continue
            if c is not None and (
                (c.offset in placed and best is None)
                or (c.offset not in placed and (best is None or c.order() < best.order()))
            ):
                # every partition is at its marker (or finished), or c goes by its timestamp
                for buf in buffers.values():
                    while buf and marker_offset(buf[0].key) == c.offset:
                        out.append(buf.popleft())
                out.append(control.popleft())
                continue
            if best is None or best_buf is None:
                if not blocked and c is None:
                    return out  # everything released
                return out  # blocked at markers of control records not in this read
            out.append(best_buf.popleft())

    @property
    def done(self) -> bool:
        """Every partition finished and every buffered record released."""
        return not self._open and not self._control and not any(self._buffers.values())


# --- Kafka --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KafkaPlan:
    """What a Kafka read covers, fixed when it starts."""

    topics: dict[str, str]  # kind -> topic name
    start: dict[tuple[str, int], int]
    end: dict[tuple[str, int], int]

    @property
    def total(self) -> int:
        return sum(self.end[p] - self.start[p] for p in self.end)


class KafkaSource:
    """Reads the stripe-events and control topics of one environment, read-only.

    Iterating yields merged batches. The Kafka client runs on its own thread with its own
    event loop, so fetching overlaps with the (CPU-bound) fold on the caller's thread.
    """

    def __init__(
        self,
        bootstrap: str,
        topics: Topics,
        *,
        connect_timeout_s: float = 10.0,
        stall_timeout_s: float = 60.0,
        headers: bool = True,
        in_child: bool = True,
    ) -> None:
        self.bootstrap = bootstrap
        self.headers = headers
        self.in_child = in_child
        self.topics = topics
        self.connect_timeout_s = connect_timeout_s
        self.stall_timeout_s = stall_timeout_s
        self.plan: KafkaPlan | None = None

    @property
    def total(self) -> int | None:
        return self.plan.total if self.plan else None

    def __iter__(self) -> Iterator[list[LogRecord]]:
        return read_in_child(self) if self.in_child else self._read_here()

    def prepared(self, prepare: Callable[[list[LogRecord]], Any]) -> Iterator[Any]:
        """`prepare(batch)` of every batch, computed by the reader process (see `read_in_child`)."""
        return read_in_child(self, prepare) if self.in_child else map(prepare, self._read_here())

    def _state(self) -> dict[str, Any]:
        return {"plan": self.plan}

    def _read_here(self) -> Iterator[list[LogRecord]]:
        q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=16)
        stop = threading.Event()

        def put(item: tuple[str, Any]) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.2)
                    return True
                except queue.Full:
                    continue
            return False

        def run() -> None:
            try:
                asyncio.run(self._fetch(put, stop))
                put(("end", None))
            except BaseException as exc:  # handed to the caller's thread, raised there
                put(("error", exc))

        thread = threading.Thread(target=run, name="refstream-replay-kafka", daemon=True)
        thread.start()
        try:
            while True:
                what, item = q.get()
                if what == "batch":
                    yield item
                elif what == "plan":
                    self.plan = item
                elif what == "error":
                    raise item
                else:
                    return
        finally:
            stop.set()
            thread.join(timeout=30)

    async def _fetch(self, put: Any, stop: threading.Event) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped]
        from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]
        from aiokafka.errors import KafkaError, OffsetOutOfRangeError  # type: ignore[import-untyped]

        names = {STRIPE_EVENTS: self.topics.stripe_events, CONTROL: self.topics.control}
        unreachable = (
            f"cannot reach Kafka at {self.bootstrap} within {self.connect_timeout_s:g} s"
        )
        fix = (
            "Check that the broker runs (`refstream kafka up`) and that REFSTREAM_KAFKA_BOOTSTRAP "
            "names it, or replay an export with --source FILE.jsonl.gz."
        )
        # Metadata through the admin client: it only describes topics (never auto-creates
        # them), which the consumer's metadata cache would not do for unassigned topics.
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap, client_id="refstream-replay",
            request_timeout_ms=int(self.connect_timeout_s * 1000),
        )
        partitions: dict[str, list[int]] = {}
        try:
            await asyncio.wait_for(admin.start(), self.connect_timeout_s)
            existing = set(await asyncio.wait_for(admin.list_topics(), self.connect_timeout_s))
            wanted = [n for n in names.values() if n in existing]
            if wanted:
                described = await asyncio.wait_for(admin.describe_topics(wanted), self.connect_timeout_s)
                for topic in described:
                    partitions[topic["topic"]] = sorted(p["partition"] for p in topic["partitions"])
        except (TimeoutError, KafkaError, OSError) as exc:
            raise SourceError(f"{unreachable} ({type(exc).__name__}). {fix}") from None
        finally:
            await admin.close()
        if names[STRIPE_EVENTS] not in partitions:
            raise SourceError(
                f"topic {names[STRIPE_EVENTS]} does not exist on {self.bootstrap}. Check "
                f"REFSTREAM_ENV (now {self.topics.env!r}) and REFSTREAM_KAFKA_BOOTSTRAP, or "
                f"create the topics with `refstream topics create`."
            )
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            client_id="refstream-replay",
            group_id=None,  # no group: nothing joined, nothing committed, nobody rebalanced
            enable_auto_commit=False,
            # never jump silently: a position that is gone means records were deleted
            auto_offset_reset="none",
            isolation_level="read_committed",
            request_timeout_ms=int(self.connect_timeout_s * 1000) + 1000,
            max_partition_fetch_bytes=8 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
            max_poll_records=BATCH,
        )
        try:
            try:
                await asyncio.wait_for(consumer.start(), self.connect_timeout_s)
            except (TimeoutError, KafkaError, OSError) as exc:
                raise SourceError(f"{unreachable} ({type(exc).__name__}). {fix}") from None
            tps: dict[TopicPartition, tuple[str, int]] = {}
            for kind, name in names.items():
                # no control topic yet: no payout runs or decisions to merge
                for p in partitions.get(name, ()):
                    tps[TopicPartition(name, p)] = (kind, p)
            consumer.assign(list(tps))
            begin = await consumer.beginning_offsets(list(tps))
            end = await consumer.end_offsets(list(tps))
            plan = KafkaPlan(
                topics={k: v for k, v in names.items() if v in partitions},
                start={tps[tp]: begin[tp] for tp in tps},
                end={tps[tp]: end[tp] for tp in tps},
            )
            if not put(("plan", plan)):
                return
            # the control topic first, whole: it is small, and the merge must know which
            # control records the worker placed before it meets their markers
            for tp in tps:
                consumer.seek(tp, begin[tp])
            control_records: list[LogRecord] = []
            for tp, (kind, partition) in tps.items():
                if kind != CONTROL or end[tp] <= begin[tp]:
                    continue
                while await consumer.position(tp) < end[tp] and not stop.is_set():
                    fetched = await consumer.getmany(tp, timeout_ms=500, max_records=BATCH)
                    control_records += [
                        LogRecord(CONTROL, partition, m.offset, m.timestamp, m.key,
                                  tuple(m.headers or ()) if self.headers else (),
                                  m.value if m.value is not None else b"")
                        for m in fetched.get(tp, []) if m.offset < end[tp]
                    ]
            stripe_tps = {tp: part for tp, part in tps.items() if part[0] == STRIPE_EVENTS}
            merger = LogMerger(list(stripe_tps.values()), control_records)
            by_part = {part: tp for tp, part in stripe_tps.items()}
            for tp, part in stripe_tps.items():
                if end[tp] <= begin[tp]:
                    merger.finish(part)
            loop = asyncio.get_running_loop()
            last_progress = loop.time()
            while not stop.is_set() and not merger.done:
                waiting = merger.waiting_for()
                if not waiting:
                    out = merger.drain()
                    if out:
                        for i in range(0, len(out), BATCH):
                            if not put(("batch", out[i : i + BATCH])):
                                return
                    continue
                try:
                    fetched = await consumer.getmany(
                        *[by_part[p] for p in waiting], timeout_ms=500, max_records=BATCH
                    )
                except OffsetOutOfRangeError:
                    raise SourceError(
                        f"records of {', '.join(sorted({tp.topic for tp in tps}))} were deleted while "
                        f"replay was reading them (retention). The event log must be kept forever: set "
                        f"retention.ms=-1 on these topics (`refstream topics create` does), then replay "
                        f"again; an export of what is left would be incomplete too."
                    ) from None
                got_any = False
                for tp, msgs in fetched.items():
                    part = stripe_tps[tp]
                    limit = end[tp]
                    kind, partition = part
                    keep = self.headers
                    records = [
                        LogRecord(
                            kind, partition, m.offset, m.timestamp, m.key,
                            tuple(m.headers or ()) if keep else (), m.value if m.value is not None else b"",
                        )
                        for m in msgs
                        if m.offset < limit
                    ]
                    if records:
                        got_any = True
                        merger.add(part, records)
                for part in waiting:
                    tp = by_part[part]
                    if await consumer.position(tp) >= end[tp]:
                        merger.finish(part)
                        got_any = True
                if got_any:
                    last_progress = loop.time()
                elif loop.time() - last_progress > self.stall_timeout_s:
                    raise SourceError(
                        f"Kafka at {self.bootstrap} delivered nothing for "
                        f"{self.stall_timeout_s:g} s while records were still due. Check the "
                        f"broker's health and try again."
                    )
        finally:
            await consumer.stop()


# --- export files -------------------------------------------------------------------------


def _text_or_b64(raw: bytes) -> tuple[str, bool]:
    """The bytes as text when they are valid UTF-8 (which round-trips exactly), else base64."""
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii"), True


def export_header(topics: Topics, first_revision: bytes | None = None) -> bytes:
    """`first_revision`: the log's first rules revision (its control record), which prices
    everything before the later ones, so a replay of the file knows it from the start."""
    doc: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "env": topics.env,
        "topics": {STRIPE_EVENTS: topics.stripe_events, CONTROL: topics.control},
    }
    if first_revision is not None:
        doc["first_rules_revision"] = first_revision.decode("utf-8")
    return orjson.dumps(doc)


def read_export_header(path: Path) -> dict[str, Any] | None:
    """The header of an export file, or None when it has none (the reader explains why)."""
    try:
        with open_export(path) as fh:
            first = fh.readline()
        doc = orjson.loads(first)
    except (OSError, EOFError, zlib.error, _ISAL_ERROR, orjson.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) and doc.get("format") == EXPORT_FORMAT else None


def encode_record(rec: LogRecord) -> bytes:
    """One export line (without the newline). `value` is the stored body as text; records
    whose bytes are not UTF-8 carry `value_b64` instead (likewise `key`), so the exact bytes
    always come back."""
    obj: dict[str, Any] = {
        "kind": rec.kind,
        "partition": rec.partition,
        "offset": rec.offset,
        "timestamp": rec.timestamp,
    }
    if rec.key is None:
        obj["key"] = None
    else:
        text, b64 = _text_or_b64(rec.key)
        obj["key_b64" if b64 else "key"] = text
    headers: list[list[Any]] = []
    for name, hv in rec.headers:
        text, b64 = _text_or_b64(hv)
        headers.append([name, {"b64": text} if b64 else text])
    obj["headers"] = headers
    text, b64 = _text_or_b64(rec.value)
    obj["value_b64" if b64 else "value"] = text
    return orjson.dumps(obj)


class _Header64(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    b64: str


class _Line(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """An export line as `encode_record` writes it for a record whose key and value are
    UTF-8 text (nearly all): every field typed, none skipped, none unknown."""

    kind: str
    partition: Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
    offset: Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
    timestamp: Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
    key: str | None
    headers: list[tuple[str, str | _Header64]]
    value: str


_LINE = msgspec.json.Decoder(_Line)


def decode_record(line: bytes, headers: bool = True) -> LogRecord:
    """One export line back to the record; `headers=False` leaves them out (the fold never
    reads them).

    msgspec decodes the usual line straight into a typed struct. It reads every byte of
    the line as orjson would (nothing is skipped: every field is typed and an unknown one
    is refused), so a line it takes gives exactly what the general reader below gives;
    anything else (base64 keys or values, other types, unknown fields, bad JSON) is read
    by the general reader, which also words the errors."""
    try:
        rec = _LINE.decode(line)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError):
        return _decode_record(line, headers)
    if rec.kind not in _KIND_RANK:
        return _decode_record(line, headers)  # refused there, with its message
    return LogRecord(
        rec.kind, rec.partition, rec.offset, rec.timestamp,
        None if rec.key is None else rec.key.encode("utf-8"),
        tuple((name, hv.encode("utf-8") if type(hv) is str else base64.b64decode(hv.b64))  # type: ignore[union-attr]
              for name, hv in rec.headers) if headers else (),
        rec.value.encode("utf-8"),
    )


_JSON_KIND = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "true or false",
              type(None): "null"}


def _text_or_none(obj: dict[str, Any], field: str) -> str | None:
    v = obj.get(field)
    if v is not None and not isinstance(v, str):
        raise ValueError(f"{field} is {_JSON_KIND.get(type(v), 'an object')}, not a string")
    return v


def _decode_record(line: bytes, headers: bool) -> LogRecord:
    """The general reader. Every way a line can be wrong ends in a ValueError, KeyError or
    TypeError, which FileSource reports with the line's number."""
    obj = orjson.loads(line)
    if not isinstance(obj, dict):  # e.g. `[]`
        raise ValueError(f"it is {_JSON_KIND.get(type(obj), 'a JSON value')}, not an object")
    value = _text_or_none(obj, "value")
    raw = value.encode("utf-8") if value is not None else base64.b64decode(obj["value_b64"])
    key = _text_or_none(obj, "key")
    if key is not None:
        key_b = key.encode("utf-8")
    elif "key_b64" in obj:
        key_b = base64.b64decode(obj["key_b64"])
    else:
        key_b = None
    kind = obj["kind"]
    if kind not in _KIND_RANK:
        raise ValueError(f"unknown kind {kind!r}")
    return LogRecord(
        kind, int(obj["partition"]), int(obj["offset"]), int(obj["timestamp"]), key_b,
        tuple(
            (name, hv.encode("utf-8") if isinstance(hv, str) else base64.b64decode(hv["b64"]))
            for name, hv in obj["headers"]
        ) if headers else (),
        raw,
    )


def _lines(fh: IO[bytes], chunk: int = 4 << 20) -> Iterator[bytes]:
    """Lines without their newline, read in large chunks (far cheaper than readline)."""
    rest = b""
    while True:
        data = fh.read(chunk)
        if not data:
            break
        lines = (rest + data).split(b"\n")
        rest = lines.pop()
        yield from lines
    if rest:
        yield rest


def open_export(path: Path) -> IO[bytes]:
    """Opens an export for reading; gzip is recognised by its magic bytes, not the name.

    Inflated with ISA-L (`isal.igzip`, the same gzip format and checks as the stdlib's):
    ~3x less CPU than zlib, ~1 s less per million records. Its errors differ in wording
    only; `_gzip_problem` words them as zlib does where it can."""
    raw = open(path, "rb")  # noqa: SIM115 - handed to the caller, who closes it
    magic = raw.peek(2)[:2] if isinstance(raw, io.BufferedReader) else b""
    if magic == b"\x1f\x8b":
        return igzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[no-untyped-call,return-value]
    return raw


# isal's stub declares its error class as an instance of Exception
_ISAL_ERROR = cast("type[Exception]", isal_zlib.error)
_CRC = re.compile(r"CRC check failed (\d+) != (\d+)")


def _gzip_problem(exc: Exception) -> str:
    """What was wrong with the gzip data, in the stdlib's words for the same fault (ISA-L
    writes the CRCs in decimal; its deflate errors keep their own words)."""
    text = str(exc)
    crc = _CRC.fullmatch(text)
    if crc:
        return f"CRC check failed {int(crc[1]):#x} != {int(crc[2]):#x}"
    return text


class FileSource:
    """Reads a file written by `refstream export` (JSONL, or JSONL.gz)."""

    def __init__(self, path: Path, *, headers: bool = True, in_child: bool = True) -> None:
        self.path = path
        self.headers = headers
        self.in_child = in_child
        self.header: dict[str, Any] | None = None
        self.total: int | None = None  # unknown without reading the whole file

    def _fail(self, problem: str) -> SourceError:
        return SourceError(
            f"cannot read {self.path}: {problem}. Pass a file written by `refstream export "
            f"--out FILE.jsonl.gz`, or replay straight from Kafka with --source kafka."
        )

    def __iter__(self) -> Iterator[list[LogRecord]]:
        return read_in_child(self) if self.in_child else self._read_here()

    def prepared(self, prepare: Callable[[list[LogRecord]], Any]) -> Iterator[Any]:
        """`prepare(batch)` of every batch, computed by the reader process (see `read_in_child`)."""
        return read_in_child(self, prepare) if self.in_child else map(prepare, self._read_here())

    def _state(self) -> dict[str, Any]:
        return {"header": self.header}

    def _read_here(self) -> Iterator[list[LogRecord]]:
        try:
            fh = open_export(self.path)
        except FileNotFoundError:
            raise self._fail("there is no such file") from None
        except IsADirectoryError:
            raise self._fail("it is a directory") from None
        except PermissionError:
            raise self._fail("permission denied") from None
        except OSError as exc:
            raise self._fail(exc.strerror or str(exc)) from None
        number = 1
        try:
            with fh:
                lines = _lines(fh)
                first = next(lines, b"")
                try:
                    header = orjson.loads(first) if first.strip() else None
                except orjson.JSONDecodeError:
                    header = None
                if not isinstance(header, dict) or header.get("format") != EXPORT_FORMAT:
                    raise self._fail("its first line is not a refstream export header")
                if header.get("version") != EXPORT_VERSION:
                    raise self._fail(
                        f"it is export format version {header.get('version')!r}, this refstream "
                        f"reads version {EXPORT_VERSION}"
                    )
                self.header = header
                keep_headers = self.headers
                batch: list[LogRecord] = []
                append = batch.append
                for number, line in enumerate(lines, start=2):
                    if not line:
                        continue
                    try:
                        append(decode_record(line, keep_headers))
                    except (ValueError, KeyError, TypeError) as exc:
                        raise self._fail(f"line {number} is not an export record ({exc})") from None
                    if len(batch) >= BATCH:
                        yield batch
                        batch = []
                        append = batch.append
                if batch:
                    yield batch
        except (gzip.BadGzipFile, EOFError, zlib.error, _ISAL_ERROR) as exc:
            raise self._fail(
                f"the gzip data is damaged or cut short near line {number} ({_gzip_problem(exc)})"
            ) from None
        except OSError as exc:
            raise self._fail(exc.strerror or str(exc)) from None



# --- reading in a child process -----------------------------------------------------------

# The child gets the parent's sys.path first (so it imports this same code), then the source.
_CHILD = (
    "import pickle, sys; sys.path[:] = pickle.load(sys.stdin.buffer); "
    "from projections.logsource import serve_child; serve_child()"
)


def read_in_child(
    source: FileSource | KafkaSource, prepare: Callable[[list[LogRecord]], Any] | None = None,
) -> Iterator[Any]:
    """`source`'s batches, read by a child process running a copy of it with
    `in_child=False`. What the copy learns (the export header, the Kafka plan) is set on
    `source` before the batch it came with; a `SourceError` there is raised here with the
    same message. Leaving early stops the child.

    With `prepare` (a module-level function, pickled by name), the child yields
    `prepare(batch)` instead of the batch: work on the records (replay parses them there)
    then runs on the reader's core, and what crosses the pipe is what `prepare` returns."""
    here = copy.copy(source)
    here.in_child = False
    proc = subprocess.Popen([sys.executable, "-c", _CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    finished = False
    try:
        with proc.stdin:
            pickle.dump(sys.path, proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            pickle.dump((here, prepare), proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        out, make = proc.stdout, LogRecord._make
        while True:
            try:
                what, item = pickle.load(out)
            except EOFError:
                raise SourceError(
                    f"the reader process stopped before the end of the log (exit code "
                    f"{proc.wait()}). Try again; if it happens again, its message is above."
                ) from None
            if what == "batch":
                yield list(map(make, item)) if prepare is None else item
            elif what == "state":
                for name, value in item.items():
                    setattr(source, name, value)
            elif what == "error":
                raise SourceError(item)
            elif what == "crash":
                raise RuntimeError(f"the reader process failed:\n{item}")
            else:
                finished = True
                return
    finally:
        proc.stdout.close()
        if not finished:
            proc.terminate()  # it only reads (no consumer group, no commits): nothing to undo
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


Send = Callable[[str, Any], None]


class ParentGone(Exception):
    """The parent closed the child's stdin before sending what the child waits for."""


def from_parent() -> Any:
    """The next pickled object the parent sends on stdin."""
    try:
        return pickle.load(sys.stdin.buffer)
    except EOFError as exc:  # only here: a truncated gzip also raises EOFError, and that is an error
        raise ParentGone from exc


def answer_parent(work: Callable[[Send], None]) -> None:
    """The child's side of a pickled pipe (the reader here, replay's compare fold):
    `work(send)` sends ("what", item) pairs on the real stdout. A SourceError becomes
    ("error", message), anything else ("crash", traceback); a parent that stopped
    listening (broken pipe, closed stdin) ends the child quietly."""
    # the pickled answers own the real stdout; a stray print goes to stderr instead
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)

    def send(what: str, item: Any) -> None:
        pickle.dump((what, item), out, protocol=pickle.HIGHEST_PROTOCOL)
        out.flush()

    try:
        work(send)
    except (BrokenPipeError, ParentGone):
        pass  # the parent stopped
    except SourceError as exc:
        with contextlib.suppress(BrokenPipeError):
            send("error", str(exc))
    except BaseException:
        with contextlib.suppress(BrokenPipeError):
            send("crash", traceback.format_exc())
    with contextlib.suppress(BrokenPipeError):
        out.close()


def serve_child() -> None:
    """The child's side of `read_in_child`: reads the source and `prepare` from stdin,
    sends ("state", attrs), ("batch", [tuples] or prepare(batch)), then ("end", None) or
    ("error", message)."""

    def read(send: Send) -> None:
        source, prepare = from_parent()
        state: dict[str, Any] | None = None
        for batch in source:
            now = source._state()
            if now != state:
                send("state", now)
                state = now
            send("batch", [tuple(rec) for rec in batch] if prepare is None else prepare(batch))
        send("state", source._state())
        send("end", None)

    answer_parent(read)
