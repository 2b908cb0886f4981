"""A small scenario whose results are computed by hand in test_changed_rules.py.

Three referrers, usd only, built with the core's Stripe body builders (tests/unit):
- ucc_X: cus_A signs up 2026-01-10; invoices of 119.00 (base 100.00 after 19.00 tax) paid
  2026-01-10 12:00, 2026-03-10 12:00 and 2026-08-10 12:00; the first one's charge is half
  refunded (59.50 of 119.00) on 2026-04-01.
- ucc_Y: cus_B signs up 2026-02-01; one invoice of 500.00, no tax, paid that day at 12:00.
- ucc_Z: cus_C signs up 2026-03-01 and never pays.
- A payout run as of 2026-02-15, requested that day (control topic).

Each record's Kafka timestamp is its event's `created` (ingest receives it at once).
"""

from __future__ import annotations

from pathlib import Path

import orjson

from projections.logsource import LogRecord, encode_record, export_header
from schemas import control
from schemas.topics import Topics
from tests.replay.kafkalog import Stored, stripe_record
from tests.unit.builders import customer, invoice_paid, refund, ts

CURRENT_RULES = """
[campaign]
revision = 3
currency = "usd"
reward_percent = 25
reward_months = 12
hold_days = 30
late_attribution_days = 30

[currency.usd]
max_reward_per_referral = 10000
signup_bonus = 500
purchase_bonus = 1000
min_payout = 2000
"""

# 30 % for 6 months instead of 25 % for 12, and no purchase bonus
PROPOSED_RULES = """
[campaign]
revision = 4
currency = "usd"
reward_percent = 30
reward_months = 6
hold_days = 30
late_attribution_days = 30

[currency.usd]
max_reward_per_referral = 10000
signup_bonus = 500
min_payout = 2000
"""


def _stripe(body: bytes) -> Stored:
    doc = orjson.loads(body)
    obj = doc["data"]["object"]
    cus = obj["id"] if obj["object"] == "customer" else obj["customer"]
    return stripe_record(body, customer=cus, event_id=doc["id"], event_type=doc["type"],
                         timestamp_ms=doc["created"] * 1000)


def records() -> list[Stored]:
    """The scenario as stored records, in the order ingest and the CLI would write them."""
    noon = 12 * 3600
    a_signup, b_signup, c_signup = ts("2026-01-10"), ts("2026-02-01"), ts("2026-03-01")
    out = [
        _stripe(customer("cus_A", a_signup, ucc="ucc_X", user="u1")),
        _stripe(invoice_paid("in_A1", "cus_A", a_signup + noon, amount_paid=11900, total=11900,
                             total_excluding_tax=10000, charge="ch_A1")),
        _stripe(customer("cus_B", b_signup, ucc="ucc_Y", user="u2")),
        _stripe(invoice_paid("in_B1", "cus_B", b_signup + noon, amount_paid=50000, charge="ch_B1")),
    ]
    run = control.PayoutRun("run-2026-02-15", ts("2026-02-15"), ts("2026-02-15"))
    out.append(Stored(control.encode(run), run.requested_at * 1000, run.run_id.encode(), control=True))
    out += [
        _stripe(customer("cus_C", c_signup, ucc="ucc_Z", user="u3")),
        _stripe(invoice_paid("in_A2", "cus_A", ts("2026-03-10") + noon, amount_paid=11900, total=11900,
                             total_excluding_tax=10000, charge="ch_A2")),
        _stripe(refund("ch_A1", "cus_A", a_signup + noon, amount=11900, amount_refunded=5950,
                       at=ts("2026-04-01"), invoice="in_A1")),
        _stripe(invoice_paid("in_A3", "cus_A", ts("2026-08-10") + noon, amount_paid=11900, total=11900,
                             total_excluding_tax=10000, charge="ch_A3")),
    ]
    return out


def write_export(path: Path, stored: list[Stored], topics: Topics | None = None,
                 first_revision: bytes | None = None) -> None:
    """An export file of these records (one stripe partition), as `refstream export` lays it
    out; `first_revision`: the log's first rules revision, as a worker would have published it."""
    lines = [export_header(topics or Topics("sandbox"), first_revision)]
    offsets = {True: 0, False: 0}
    for s in sorted(stored, key=lambda s: (s.timestamp_ms, s.control)):
        kind = "control" if s.control else "stripe-events"
        lines.append(encode_record(LogRecord(kind, 0, offsets[s.control], s.timestamp_ms, s.key,
                                             tuple(s.headers), s.value)))
        offsets[s.control] += 1
    path.write_bytes(b"\n".join(lines) + b"\n")
