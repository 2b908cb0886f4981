"""`refstream export`: the log to JSONL(.gz) with the stored bytes kept exactly."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import hmac
import json
from pathlib import Path

from click.testing import CliRunner

from projections.logsource import FileSource, LogRecord
from refstream.cli import main
from schemas.topics import CONTROL, STRIPE_EVENTS, Topics
from tests.conftest import FIXTURES, sign
from tests.replay.kafkalog import Stored, create_topics, stripe_record, write

SECRET = "whsec_replay_test_secret"
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z in ms


def export(bootstrap: str, topics: Topics, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        main, ["export", "--topic-prefix", topics.prefix, "--no-progress", *args],
        env={"REFSTREAM_KAFKA_BOOTSTRAP": bootstrap, "REFSTREAM_ENV": topics.env},
    )
    return result.exit_code, result.output


def read_back(path: Path) -> list[LogRecord]:
    return [rec for batch in FileSource(path) for rec in batch]


def customer_body(customer: str, name: str) -> bytes:
    """A customer.created event as Stripe sends it: odd spacing and \\u escapes included, since
    the raw text, not its parsed value, is what the signature covers."""
    obj = json.loads((FIXTURES / "current" / "customer.json").read_text())
    obj |= {"id": customer, "name": name, "metadata": {"cello_ucc": "ucc_é", "new_user_id": "u1"}}
    event = {"id": f"evt_{customer}", "object": "event", "type": "customer.created", "created": 1767225600,
             "livemode": False, "data": {"object": obj}}
    text = json.dumps(event, indent=3, ensure_ascii=False)
    return (text.replace('"u1"', '"\\u0075\\u0031"') + "\r\n").encode("utf-8")


def test_export_keeps_stored_bytes_so_a_stripe_signature_still_verifies(bootstrap, topics, tmp_path):
    bodies = {
        "cus_A": customer_body("cus_A", "Zoë Łukasiewicz 東京 🚀"),
        "cus_B": customer_body("cus_B", "Plain Name"),
    }
    signatures = {c: sign(b, SECRET, timestamp=1767225600 + i) for i, (c, b) in enumerate(bodies.items())}
    not_utf8 = b'{"id": "evt_bin", "note": "\xff\xfe\x00 not UTF-8"}'
    records = [
        stripe_record(b, customer=c, event_id=f"evt_{c}", event_type="customer.created",
                      timestamp_ms=T0 + i)
        for i, (c, b) in enumerate(bodies.items())
    ]
    records.append(Stored(not_utf8, T0 + 5, key=b"\xfe\xff", headers=[("refstream-odd", b"\x80\x81")]))
    records.append(Stored(b'{"kind": "payout_run", "run_id": "r1"}', T0 + 9, control=True))
    asyncio.run(create_topics(bootstrap, topics))
    asyncio.run(write(bootstrap, topics, records))

    out = tmp_path / "log.jsonl.gz"
    code, output = export(bootstrap, topics, "--out", str(out))
    assert code == 0, output
    assert "exported 3 stripe events and 1 control events" in output
    assert out.read_bytes()[:2] == b"\x1f\x8b"  # gzip, chosen by the .gz extension

    back = read_back(out)
    by_value = {r.value: r for r in back}
    for customer, body in bodies.items():
        rec = by_value[body]  # the exact bytes came back
        t, v1 = (kv.split("=", 1)[1] for kv in signatures[customer].split(","))
        again = hmac.new(SECRET.encode(), f"{t}.".encode() + rec.value, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(again, v1)
        assert rec.key == customer.encode()
        assert dict(rec.headers)["refstream-event-id"] == f"evt_{customer}".encode()
        assert rec.kind == STRIPE_EVENTS
    odd = by_value[not_utf8]
    assert odd.key == b"\xfe\xff" and odd.headers == (("refstream-odd", b"\x80\x81"),)
    control = [r for r in back if r.kind == CONTROL]
    assert [r.value for r in control] == [b'{"kind": "payout_run", "run_id": "r1"}']
    assert [r.timestamp for r in back] == [T0, T0 + 1, T0 + 5, T0 + 9]


def test_export_merges_partitions_and_control_by_time_and_honours_since_until(bootstrap, topics, tmp_path):
    # Twelve customers spread over three partitions, a payout run in the middle.
    records = [
        stripe_record(b'{"n": %d}' % i, customer=f"cus_{i}", event_id=f"evt_{i}", event_type="invoice.paid",
                      timestamp_ms=T0 + 1000 * i)
        for i in range(12)
    ]
    # The payout run is written first: each partition is read on its own, and only the
    # timestamps say that it belongs between the events of seconds 5 and 6.
    records.insert(0, Stored(b'{"run": 1}', T0 + 5500, control=True))
    asyncio.run(create_topics(bootstrap, topics))
    asyncio.run(write(bootstrap, topics, records))

    full = tmp_path / "all.jsonl"
    assert export(bootstrap, topics, "--out", str(full))[0] == 0
    back = read_back(full)
    assert len({r.partition for r in back if r.kind == STRIPE_EVENTS}) > 1
    assert [r.timestamp for r in back] == sorted(r.timestamp_ms for r in records)
    assert back[6].kind == CONTROL  # after the events of seconds 0..5, before second 6

    window = tmp_path / "window.jsonl"
    since, until = (T0 + 3000) // 1000, (T0 + 7000) // 1000
    code, _ = export(bootstrap, topics, "--out", str(window), "--since", str(since), "--until", str(until))
    assert code == 0
    assert [r.timestamp - T0 for r in read_back(window)] == [3000, 4000, 5000, 5500, 6000]
    # the same window in ISO 8601
    iso = tmp_path / "iso.jsonl"
    code, _ = export(bootstrap, topics, "--out", str(iso), "--since", "2026-01-01T00:00:03Z",
                     "--until", "2026-01-01T01:00:07+01:00")
    assert code == 0
    assert iso.read_bytes() == window.read_bytes()


def test_export_of_the_same_log_is_byte_identical(bootstrap, topics, tmp_path):
    records = [
        stripe_record(b'{"n": %d}' % i, customer=f"cus_{i}", event_id=f"evt_{i}", event_type="invoice.paid",
                      timestamp_ms=T0 + i)
        for i in range(20)
    ]
    asyncio.run(create_topics(bootstrap, topics))
    asyncio.run(write(bootstrap, topics, records))
    a, b = tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl.gz"
    assert export(bootstrap, topics, "--out", str(a))[0] == 0
    assert export(bootstrap, topics, "--out", str(b))[0] == 0
    assert a.read_bytes() == b.read_bytes()
    assert len(gzip.decompress(a.read_bytes()).splitlines()) == 21  # header + 20 records
