"""Ingest's per-webhook log line: the direct path (`info_line`) writes exactly what
`logging` with the JsonFormatter writes, and is taken only when nothing else would see it."""

from __future__ import annotations

import io
import logging
import re

import orjson
import pytest

from ingest.log_lines import BatchedStreamHandler, info_line, lone_batched_handler
from refstream.jsonlog import JsonFormatter

FIELDS = {"env": "sandbox", "event_id": "evt_1", "event_type": "invoice.paid", "status": 200,
          "outcome": "stored", "latency_ms": 3.25}


@pytest.fixture
def logger() -> logging.Logger:
    """A logger tree of its own (outside logging's registry, so pytest's capture handlers
    stay out of it): one batched JSON handler, as `refstream ingest` sets up."""
    parent = logging.Logger("test-log-lines", logging.INFO)
    handler = BatchedStreamHandler(io.StringIO())
    handler.setFormatter(JsonFormatter())
    parent.addHandler(handler)
    parent.propagate = False
    child = logging.Logger("test-log-lines.ingest")
    child.parent = parent
    return child


def test_the_direct_line_is_the_line_logging_writes(logger: logging.Logger) -> None:
    record = logger.makeRecord(logger.name, logging.INFO, __file__, 0, "webhook", (), None,
                               extra=FIELDS)
    via_logging = JsonFormatter().format(record)
    direct = info_line(logger, "webhook", FIELDS)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", orjson.loads(direct)["ts"])
    # the same keys in the same order with the same values; only the time may differ
    def without_ts(line: str) -> list[tuple[str, object]]:
        return [(k, v) for k, v in orjson.loads(line).items() if k != "ts"]
    assert without_ts(direct) == without_ts(via_logging)
    assert next(iter(orjson.loads(direct))) == next(iter(orjson.loads(via_logging))) == "ts"


def test_the_direct_path_is_taken_only_for_a_lone_batched_json_handler(logger: logging.Logger) -> None:
    parent = logger.parent
    assert parent is not None
    assert lone_batched_handler(logger) is parent.handlers[0]

    # another handler (pytest's caplog, an operator's) must see the line: go through logging
    other = logging.StreamHandler(io.StringIO())
    parent.addHandler(other)
    assert lone_batched_handler(logger) is None
    parent.removeHandler(other)

    # a filter may drop or change the line: go through logging
    logger.addFilter(lambda record: True)
    assert lone_batched_handler(logger) is None
    logger.filters.clear()

    # INFO switched off: no line at all
    quiet = logging.Logger("test-log-lines.quiet", logging.WARNING)
    quiet.parent = parent
    assert lone_batched_handler(quiet) is None
