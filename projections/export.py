"""`refstream export`: the stripe-events and control logs to JSONL(.gz), bytes kept exactly.

The file starts with a header line (format, version, env, topic names); every further
line is one Kafka record (`logsource.encode_record`) in replay order, so replaying the
file folds exactly the sequence a replay from Kafka folds. The stored value is the raw
body as text when it is UTF-8 (the JSON string round-trips to the same bytes) and base64
otherwise, so a Stripe signature re-verified from the file still matches.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from projections.logsource import LogRecord, encode_record, export_header
from schemas.topics import CONTROL, STRIPE_EVENTS, Topics, marker_offset, placed_offset


@dataclass(frozen=True, slots=True)
class ExportCounts:
    stripe_events: int
    control_events: int


class ExportError(Exception):
    """The export file cannot be written: the message names the problem and the fix."""


def in_window(timestamp_ms: int, since_ms: int | None, until_ms: int | None) -> bool:
    """`since` is inclusive and `until` exclusive, so adjacent windows never overlap."""
    return (since_ms is None or timestamp_ms >= since_ms) and (until_ms is None or timestamp_ms < until_ms)


def write_records(
    batches: Iterable[list[LogRecord]],
    out: IO[bytes],
    topics: Topics,
    *,
    first_revision: bytes | None = None,
    since_ms: int | None = None,
    until_ms: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> ExportCounts:
    counts = {STRIPE_EVENTS: 0, CONTROL: 0}
    out.write(export_header(topics, first_revision) + b"\n")
    for batch in batches:
        lines = []
        for rec in batch:
            if in_window(rec.timestamp, since_ms, until_ms):
                lines.append(encode_record(rec))
                if marker_offset(rec.key) is None and placed_offset(rec.key) is None:
                    counts[rec.kind] += 1  # markers and placement notes are kept, not counted
        if lines:
            out.write(b"\n".join(lines) + b"\n")
        if progress is not None:
            progress(len(batch))
    return ExportCounts(counts[STRIPE_EVENTS], counts[CONTROL])


def export_to(
    batches: Iterable[list[LogRecord]],
    path: Path | None,
    topics: Topics,
    *,
    first_revision: bytes | None = None,
    since_ms: int | None = None,
    until_ms: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> ExportCounts:
    """Writes the export to `path` (gzip when it ends in `.gz`), or to stdout when None.

    A file is written under a temporary name and renamed at the end, so a failed or
    interrupted export never leaves a truncated file that looks complete.
    """
    kw = {"first_revision": first_revision, "since_ms": since_ms, "until_ms": until_ms, "progress": progress}
    if path is None:
        return write_records(batches, sys.stdout.buffer, topics, **kw)  # type: ignore[arg-type]
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise ExportError(f"cannot write {path}: the folder {directory} does not exist. Create it first "
                          f"or choose another --out.")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=directory)
    except OSError as exc:
        raise ExportError(f"cannot write in {directory}: {exc.strerror}. Choose another --out.") from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as raw:
            if path.name.endswith(".gz"):
                # mtime=0 and no file name in the gzip header: the same log gives the same bytes
                with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) as gz:
                    counts = write_records(batches, gz, topics, **kw)  # type: ignore[arg-type]
            else:
                counts = write_records(batches, raw, topics, **kw)  # type: ignore[arg-type]
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return counts
