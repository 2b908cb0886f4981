"""Replay's reader decodes export lines with msgspec first (projections/logsource.py), and a
line it takes gives exactly what the general orjson reader gives; any other line goes to the
general reader. So for every line, well-formed or hostile, `decode_record` returns the same
record as `_decode_record`, or fails the same way."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from projections.logsource import (
    FileSource,
    LogRecord,
    SourceError,
    _decode_record,
    decode_record,
    encode_record,
    export_header,
)
from schemas.topics import CONTROL, STRIPE_EVENTS, Topics

PROPERTY = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])

texts = st.one_of(
    st.text(max_size=40), st.binary(max_size=40).map(lambda b: b.decode("latin-1"))
)
raw = st.one_of(st.binary(max_size=60), texts.map(lambda t: t.encode("utf-8", "surrogatepass")))
records = st.builds(
    LogRecord,
    st.sampled_from([STRIPE_EVENTS, CONTROL]),
    st.integers(-5, 2**64 - 1),  # what orjson writes; larger numbers are spliced in as text below
    st.integers(-5, 2**64 - 1),
    st.integers(-(2**63), 2**64 - 1),
    st.none() | raw,
    st.lists(st.tuples(st.text(max_size=12), raw), max_size=3).map(tuple),
    raw,
)
# JSON values a hostile line may put anywhere
values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
SPLICES = [
    b'18446744073709551616', b'-9223372036854775809', b'1.0', b'1e400', b'-1e999', b'1' * 400,
    b'NaN', b'"\\ud800"', b'"\xff\xfe"', b'"\xed\xa0\x80"',
    b'[' * 300 + b']' * 300, b'{"b64":"%%%"}', b'true',
]


def outcome(line: bytes, headers: bool) -> tuple[str, object]:
    try:
        return "record", _decode_record(line, headers)
    except Exception as exc:  # whatever it is, the fast path must fail alike
        return type(exc).__name__, str(exc)


def fast(line: bytes, headers: bool) -> tuple[str, object]:
    try:
        return "record", decode_record(line, headers)
    except READER_ERRORS as exc:
        return type(exc).__name__, str(exc)
    # any other exception fails the test: FileSource names the line only for these


# what FileSource turns into "line N is not an export record (…)"
READER_ERRORS = (ValueError, KeyError, TypeError)


@PROPERTY
@given(records, st.booleans())
@example(
    LogRecord(STRIPE_EVENTS, 0, 1, 2, b"cus_1", (("refstream-env", b"sandbox"),), b'{"id":"evt_1"}'),
    True,
)
def test_a_line_as_export_writes_it_reads_back_alike(rec: LogRecord, headers: bool) -> None:
    line = encode_record(rec)
    assert fast(line, headers) == outcome(line, headers)
    got = decode_record(line, True)
    assert got == rec._replace(partition=int(rec.partition), offset=int(rec.offset))


@PROPERTY
@given(records, st.booleans(), st.data())
def test_a_hostile_line_reads_alike_or_fails_alike(
    rec: LogRecord, headers: bool, data: st.DataObject
) -> None:
    doc = orjson.loads(encode_record(rec))
    for _ in range(data.draw(st.integers(1, 3))):
        what = data.draw(st.sampled_from(["set", "drop", "add", "b64", "header"]))
        key = data.draw(st.sampled_from([*sorted(doc), "kind", "key", "value", "headers"]))
        if what == "set":
            doc[key] = data.draw(values)
        elif what == "drop":
            doc.pop(key, None)
        elif what == "add":
            doc[data.draw(st.sampled_from(["extra", "key_b64", "value_b64", "v"]))] = data.draw(values)
        elif what == "b64":
            doc[data.draw(st.sampled_from(["key_b64", "value_b64"]))] = data.draw(st.sampled_from(
                ["aGVsbG8=", "%%", ""]))
        elif isinstance(doc.get("headers"), list):
            doc["headers"].append(data.draw(st.lists(values, max_size=3)))
    line = orjson.dumps(doc)
    if data.draw(st.booleans()):  # bytes orjson itself would not write: spliced in as text
        splice = data.draw(st.sampled_from(SPLICES))
        at = data.draw(st.sampled_from([b'"partition":', b'"headers":', b'"value":', b'"key":', b"{"]))
        if at == b"{":
            line = b'{"extra":' + splice + b"," + line[1:]
        elif at in line:
            head, _, tail = line.partition(at)
            rest = tail.split(b",", 1)
            line = head + at + splice + (b"," + rest[1] if len(rest) > 1 else b"}")
    if data.draw(st.booleans()):
        line = line[: data.draw(st.integers(0, len(line)))]
    assert fast(line, headers) == outcome(line, headers)


@pytest.mark.parametrize(("line", "problem"), [
    (b"[]", "it is an array, not an object"),
    (b"5", "it is a number, not an object"),
    (b'"text"', "it is a string, not an object"),
    (b'{"kind":"control","partition":0,"offset":0,"timestamp":0,"key":null,"headers":[],"value":5}',
     "value is a number, not a string"),
    (b'{"kind":"control","partition":0,"offset":0,"timestamp":0,"key":[1],"headers":[],"value":"{}"}',
     "key is an array, not a string"),
])
def test_a_line_that_is_json_but_not_a_record_is_refused_with_its_number(
    tmp_path: Path, line: bytes, problem: str
) -> None:
    path = tmp_path / "log.jsonl"
    good = encode_record(LogRecord(CONTROL, 0, 1, 2, None, (), b"{}"))
    path.write_bytes(export_header(Topics("sandbox")) + b"\n" + good + b"\n" + line + b"\n")
    with pytest.raises(SourceError, match=f"line 3 is not an export record \\({problem}\\)"):
        [r for batch in FileSource(path, in_child=False) for r in batch]
