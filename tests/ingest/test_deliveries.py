"""A correctly signed event is stored once, byte for byte, keyed by its customer, with headers."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from schemas.topics import H_ENV, H_EVENT_ID, H_EVENT_TYPE, H_RECEIVED_AT, Topics
from tests.conftest import FIXTURES, sign
from tests.ingest.helpers import (
    PRODUCTION_SECRET,
    SANDBOX_SECRET,
    body_of,
    envelope,
    make_topics,
    read_topic,
    running_ingest,
    settings,
)

# Which fixture objects each handled event type carries (the types docs/ingest.md lists as written).
EVENT_TYPES_BY_OBJECT = {
    "charge.json": ["charge.succeeded", "charge.refunded", "charge.updated"],
    "customer.json": ["customer.created", "customer.updated"],
    "deleted_customer.json": ["customer.deleted"],
    "subscription.json": [
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
    ],
    "invoice.json": ["invoice.paid"],
    "invoice_payment.json": ["invoice_payment.paid"],
}
SHAPES = ["current", "pre-basil-2025-02-14"]


def _cases() -> list[tuple[str, str, str]]:
    cases = []
    for shape in SHAPES:
        for name, types in EVENT_TYPES_BY_OBJECT.items():
            if (FIXTURES / shape / name).exists():
                cases.extend((shape, name, t) for t in types)
    return cases


def _expected_key(obj: dict[str, Any]) -> str:
    customer = obj.get("customer")
    if isinstance(customer, dict):
        customer = customer["id"]
    return customer or obj["id"]


def test_every_relevant_fixture_object_is_covered() -> None:
    cases = _cases()
    # both payload shapes are present, and the current one has the invoice_payment object
    assert {shape for shape, _, _ in cases} == set(SHAPES)
    assert ("current", "invoice_payment.json", "invoice_payment.paid") in cases
    assert len(cases) >= 20


async def test_signed_events_of_both_shapes_are_stored_once_byte_identical(
    bootstrap: str, topic_prefix: str
) -> None:
    await make_topics(bootstrap, topic_prefix)
    sent: dict[str, tuple[bytes, str, str, str]] = {}  # event id -> (body, key, type, env)
    async with running_ingest(settings(bootstrap), topic_prefix) as client:
        for i, (shape, name, event_type) in enumerate(_cases()):
            obj = json.loads(Path(FIXTURES / shape / name).read_text())
            # the fixtures' livemode:true objects are live-mode data: they go to production
            live = obj.get("livemode") is True
            env = "production" if live else "sandbox"
            event_id = f"evt_{shape[:3]}{i:03d}{name.split('.')[0]}"
            body = body_of(envelope(obj, event_type, livemode=live, event_id=event_id))
            secret = PRODUCTION_SECRET if live else SANDBOX_SECRET
            before = time.time()
            resp = await client.post(f"/webhooks/stripe/{env}", data=body,
                                     headers={"Stripe-Signature": sign(body, secret),
                                              "Content-Type": "application/json"})
            assert resp.status == 200, (shape, name, event_type, await resp.text())
            assert await resp.json() == {"received": True, "stored": True}
            sent[event_id] = (body, _expected_key(obj), event_type, env)
    assert {env for *_, env in sent.values()} == {"sandbox", "production"}

    stored = {}
    for env in ("sandbox", "production"):
        for record in await read_topic(bootstrap, Topics(env, topic_prefix).stripe_events):
            headers = dict(record.headers)
            event_id = headers[H_EVENT_ID].decode()
            assert event_id not in stored, f"{event_id} stored twice"
            stored[event_id] = (record, headers, env)
    assert set(stored) == set(sent)
    for event_id, (body, key, event_type, env) in sent.items():
        record, headers, topic_env = stored[event_id]
        assert record.value == body  # the raw bytes exactly as received
        assert record.key == key.encode()
        assert topic_env == env
        assert headers[H_EVENT_TYPE] == event_type.encode()
        assert headers[H_ENV] == env.encode()
        received_ms = int(headers[H_RECEIVED_AT])
        assert abs(received_ms / 1000 - before) < 120


async def test_customer_key_is_taken_from_an_expanded_customer_object(
    bootstrap: str, topic_prefix: str
) -> None:
    await make_topics(bootstrap, topic_prefix, envs=["sandbox"])
    invoice = json.loads((FIXTURES / "current" / "invoice.json").read_text())
    invoice["customer"] = {"id": "cus_expanded123", "object": "customer"}
    body = body_of(envelope(invoice, "invoice.paid", livemode=False, event_id="evt_expanded"))
    async with running_ingest(settings(bootstrap), topic_prefix) as client:
        resp = await client.post("/webhooks/stripe/sandbox", data=body,
                                 headers={"Stripe-Signature": sign(body, SANDBOX_SECRET)})
        assert resp.status == 200
    [record] = await read_topic(bootstrap, Topics("sandbox", topic_prefix).stripe_events)
    assert record.key == b"cus_expanded123"
    assert record.value == body


async def test_a_duplicated_delivery_is_acknowledged_again(bootstrap: str, topic_prefix: str) -> None:
    # Stripe may deliver an event twice; both get 200 (the worker drops the duplicate by id)
    await make_topics(bootstrap, topic_prefix, envs=["sandbox"])
    customer = json.loads((FIXTURES / "current" / "customer.json").read_text())
    body = body_of(envelope(customer, "customer.created", livemode=False, event_id="evt_twice"))
    async with running_ingest(settings(bootstrap), topic_prefix) as client:
        for _ in range(2):
            resp = await client.post("/webhooks/stripe/sandbox", data=body,
                                     headers={"Stripe-Signature": sign(body, SANDBOX_SECRET)})
            assert resp.status == 200
    records = await read_topic(bootstrap, Topics("sandbox", topic_prefix).stripe_events)
    assert [r.value for r in records] == [body, body]


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
async def test_probes_answer_ok_with_the_broker_up(bootstrap: str, topic_prefix: str, path: str) -> None:
    async with running_ingest(settings(bootstrap), topic_prefix) as client:
        resp = await client.get(path)
        assert resp.status == 200
