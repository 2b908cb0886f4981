"""Correctly signed but strange webhooks reach the worker through real ingest: wrong types,
missing fields, huge numbers, unknown currencies, negative amounts, deep nesting.

The worker neither crashes nor stalls: good events after them are processed, every
malformed one is on `refstream.dead-letters.<env>` with a reason naming the field, and
/metrics counts them. Well-formed oddities (a negative invoice, a timestamp near 2^63, an
unknown ISO code, 1000-deep metadata) are folded like the pure Engine folds them."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from projections.demo import charge_refunded, customer, invoice_paid, ts, worked_example
from schemas.stripe import StripeParseError, parse_event
from tests.conftest import sign
from tests.faults.conftest import Reliability
from tests.pipeline.stack import SECRET, Stack, until

pytestmark = pytest.mark.kafka


JAN10 = ts("2026-01-10")


def _deep(n: int) -> str:
    return f"DEEP{n}"


def _mutated(body: bytes, path: list[str], value: Any = ..., *, drop: bool = False) -> bytes:
    doc = orjson.loads(body)
    node = doc
    for key in path[:-1]:
        node = node[key]
    if drop:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    raw = orjson.dumps(doc)
    # orjson stops at 254 levels: deeper nesting is spliced in as text
    return re.sub(rb'"DEEP(\d+)"', lambda m: b'{"nested":' * int(m[1]) + b'"x"' + b"}" * int(m[1]), raw)


def _invoice(n: int, cus: str = "cus_strange_nobody") -> bytes:
    return invoice_paid(f"evt_strange_{n:02d}", f"in_strange_{n:02d}", cus, JAN10 + 3600,
                        amount_paid=1900, total=1900, total_excluding_tax=1900, charge=f"ch_strange_{n:02d}")


AMOUNT = ["data", "object", "amount_paid"]
CURRENCY = ["data", "object", "currency"]

# name → (body, the field path the dead letter's reason must name)
MALFORMED: dict[str, tuple[bytes, str]] = {
    "wrong type: amount_paid a string": (_mutated(_invoice(1), AMOUNT, "1900"), "data.object.amount_paid"),
    "wrong type: metadata a list": (
        _mutated(customer("evt_strange_02", "cus_strange_02", JAN10, ucc="ucc_S", user="u_s2"),
                 ["data", "object", "metadata"], ["ucc_S"]),
        "data.object.metadata"),
    "missing field: invoice currency": (_mutated(_invoice(3), CURRENCY, drop=True), "data.object.currency"),
    # (an event without `created` is refused by ingest now: tests/ingest/test_hostile_input.py)
    "huge number: amount_paid 10^18": (_mutated(_invoice(5), AMOUNT, 10**18), "data.object.amount_paid"),
    "huge number: amount_paid 1e300": (_mutated(_invoice(6), AMOUNT, 1e300), "data.object.amount_paid"),
    "unknown currency: 'dollars'": (_mutated(_invoice(7), CURRENCY, "dollars"), "data.object.currency"),
    "unknown currency: 840": (_mutated(_invoice(8), CURRENCY, 840), "data.object.currency"),
    "negative amount: refund -500": (
        charge_refunded("evt_strange_09", "ch_strange_09", "cus_strange_nobody", JAN10, amount=1900,
                        amount_refunded=-500, invoice="in_strange_09", at=JAN10 + 60),
        "data.object.amount_refunded"),
    "deep nesting: lines 200 deep": (_mutated(_invoice(10), ["data", "object", "lines"], _deep(200)),
                                     "data.object.lines"),
}

# well-formed, only odd: folded (or set aside) like the pure Engine does, never a crash
ODD: dict[str, bytes] = {
    "referrer of the odd ones": customer("evt_strange_20", "cus_strange_20", JAN10, ucc="ucc_S",
                                         user="u_s20"),
    "negative amount: invoice -1900": _mutated(_invoice(21, "cus_strange_20"), AMOUNT, -1900),
    "unknown currency: 'xyz'": _mutated(_invoice(22, "cus_strange_20"), CURRENCY, "xyz"),
    "huge number: created 2^63-1": _mutated(_invoice(23), ["created"], 2**63 - 1),
    "deep nesting: metadata 1000 deep": _mutated(
        customer("evt_strange_24", "cus_strange_24", JAN10, ucc="ucc_S2", user="u_s24"),
        ["data", "object", "metadata", "cello_ucc"], _deep(1000)),
}


async def _post_signed(url: str, body: bytes) -> int:
    async with aiohttp.ClientSession() as http, http.post(
        url, data=body, headers={"Stripe-Signature": sign(body, SECRET), "Content-Type": "application/json"},
    ) as resp:
        return resp.status


async def _dead_letters(bootstrap: str, topic: str) -> list[tuple[bytes, dict[str, bytes]]]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[tuple[bytes, dict[str, bytes]]] = []
        pending = {tp for tp in tps if ends[tp] > 0}
        while pending:
            for tp, records in (await consumer.getmany(*pending, timeout_ms=500)).items():
                out += [(r.value or b"", dict(r.headers)) for r in records]
                if records[-1].offset + 1 >= ends[tp]:
                    pending.discard(tp)
        return out
    finally:
        await consumer.stop()


async def test_signed_but_strange_payloads_are_dead_lettered_with_the_reason_and_processing_goes_on(
    stack: Stack, reliability: Reliability
) -> None:
    stack = stack
    good = worked_example()
    for body, _ in MALFORMED.values():  # the premise: each is malformed for the worker
        with pytest.raises(StripeParseError):
            parse_event(body)
    await stack.start_ingest()
    worker = await stack.start_worker()
    url = f"{stack.ingest.url}/webhooks/stripe/sandbox"

    await stack.post(good[:3])
    answers = {name: await _post_signed(url, body) for name, (body, _) in MALFORMED.items()}
    await stack.post(ODD.values())  # in stack.posted: the Engine folds them too
    await stack.post(good[3:])
    assert set(answers.values()) == {200}, f"ingest refused some (they are correctly signed): {answers}"

    # good events after the bad ones are still processed, exactly as the Engine does
    await stack.payout_run("2026-03-01T00:00:00+00:00", "after-strange")
    await stack.assert_outputs_match_engine()
    stack.assert_alive()

    async def all_dead_letters() -> list[tuple[bytes, dict[str, bytes]]] | None:
        got = await _dead_letters(stack.bootstrap, stack.topics.dead_letters)
        return got if len(got) >= len(MALFORMED) else None

    letters = await until("the dead letters", all_dead_letters, 60)
    by_body = {value: headers for value, headers in letters}
    assert len(letters) == len(MALFORMED), f"{len(letters)} dead letters, {len(MALFORMED)} malformed"
    for name, (body, field) in MALFORMED.items():
        assert body in by_body, f"{name}: not on {stack.topics.dead_letters}"
        reason = by_body[body]["refstream-reason"].decode()
        assert field in reason, f"{name}: the reason {reason!r} does not name {field}"
        assert by_body[body]["refstream-source"].startswith(stack.topics.stripe_events.encode())

    status, _ = await stack.get_json(worker, "/readyz")
    assert status == 200
    async with aiohttp.ClientSession() as http, http.get(worker.url + "/metrics") as resp:
        metrics = await resp.text()
    assert f"refstream_worker_dead_letters_total {len(MALFORMED)}" in metrics, metrics

    reliability.record(
        "test_signed_but_strange_payloads_are_dead_lettered_with_the_reason_and_processing_goes_on",
        what="correctly signed webhooks with wrong types, missing fields, huge numbers, unknown "
             "currencies, negative amounts and deep nesting, through ingest to the worker",
        sent=len(good) + len(MALFORMED) + len(ODD), acknowledged=len(good) + len(MALFORMED) + len(ODD),
        lost=0, duplicated=0, kills=0,
        notes=f"{len(MALFORMED)} malformed: all on the dead-letter topic with the field named, "
              f"counted by refstream_worker_dead_letters_total; {len(ODD)} well-formed oddities "
              "folded as the Engine does; good events after them processed",
    )
