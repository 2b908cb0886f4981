"""Cheap request log lines: the same JSON lines on stderr, written in batches.

At thousands of webhooks a second, one log line per request written and flushed on its
own is a `write` syscall each (and a wake-up of whatever reads the pipe). Inside the event
loop, lines are gathered and written together at most `delay_s` later; outside a running
loop (start-up, shutdown, other threads) every line is written at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, TextIO

import orjson

from refstream.jsonlog import JsonFormatter

# At most this many lines wait for one write; a burst flushes early.
MAX_PENDING_LINES = 512
# Writes of at most PIPE_BUF bytes to a pipe are atomic: with `--workers N` several
# processes share stderr, and a line must never be cut by another process's write.
PIPE_BUF = 4096


class BatchedStreamHandler(logging.StreamHandler[TextIO]):
    def __init__(self, stream: TextIO, *, delay_s: float = 0.05) -> None:
        super().__init__(stream)
        self.delay_s = delay_s
        self._pending: list[str] = []
        self._scheduled: asyncio.TimerHandle | None = None
        self._scheduled_in: asyncio.AbstractEventLoop | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.add_line(line)

    def add_line(self, line: str) -> None:
        """Queue one formatted line (no newline) for the next batch."""
        self._pending.append(line)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not in this thread's event loop: no timer to wait for
            self.flush()
            return
        if len(self._pending) >= MAX_PENDING_LINES:
            self.flush()
        elif self._scheduled is None or self._scheduled_in is not loop:
            self._scheduled = loop.call_later(self.delay_s, self._flush_from_timer)
            self._scheduled_in = loop

    def _flush_from_timer(self) -> None:
        self._scheduled = None
        self.flush()

    def flush(self) -> None:
        self.acquire()
        try:
            if self._scheduled is not None:
                self._scheduled.cancel()
                self._scheduled = None
            lines, self._pending = self._pending, []
            chunk: list[str] = []
            size = 0
            for line in lines:
                n = (len(line) if line.isascii() else len(line.encode())) + 1
                if chunk and size + n > PIPE_BUF:
                    self.stream.write("\n".join(chunk) + "\n")
                    super().flush()
                    chunk, size = [], 0
                chunk.append(line)
                size += n
            if chunk:
                self.stream.write("\n".join(chunk) + "\n")
            super().flush()
        except Exception:  # a closed or broken stderr must not fail a request
            pass
        finally:
            self.release()


def use_batched_stderr(delay_s: float = 0.05) -> None:
    """Swap the root logger's stream handlers for batched ones (same stream, same format)."""
    root = logging.getLogger()
    for i, handler in enumerate(root.handlers):
        if type(handler) is logging.StreamHandler:
            batched = BatchedStreamHandler(handler.stream, delay_s=delay_s)
            batched.setFormatter(handler.formatter)
            batched.setLevel(handler.level)
            root.handlers[i] = batched
    # Log records need neither the caller's file and line (a stack walk per record) nor
    # thread and process names: the JSON lines do not include them.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def lone_batched_handler(logger: logging.Logger) -> BatchedStreamHandler | None:
    """The handler an INFO line of `logger` reaches, if that is a single batched JSON handler.

    Then `info_line` can write the line without a LogRecord, a handler lock and the
    formatter's generic attribute walk (~14 -> ~3 µs per webhook). Anything else attached
    (pytest's caplog, a filter, another handler) makes this None: log the usual way.
    """
    if not logger.isEnabledFor(logging.INFO):
        return None
    found: BatchedStreamHandler | None = None
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return None
        for handler in current.handlers:
            if (found is not None or type(handler) is not BatchedStreamHandler or handler.filters
                    or handler.level > logging.INFO or type(handler.formatter) is not JsonFormatter):
                return None
            found = handler
        if not current.propagate:
            break
        current = current.parent
    return found


_second = -1
_second_text = ""


def info_line(logger: logging.Logger, msg: str, fields: dict[str, Any]) -> str:
    """The text JsonFormatter gives `logger.info(msg, extra=fields)`, made directly."""
    global _second, _second_text
    now = time.time()
    second = int(now)
    if second != _second:
        _second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second = second
    doc = {"ts": f"{_second_text}.{int((now - second) * 1000):03d}Z", "level": "info",
           "logger": logger.name, "msg": msg, **fields}
    return orjson.dumps(doc, default=str).decode()
