"""Fuzz the webhook endpoint: whatever is sent, never a 5xx, never an unverified byte in Kafka.

Hypothesis builds raw HTTP requests (methods, paths, headers, signatures, bodies in several
encodings and sizes, some validly signed) and sends them byte for byte to ingest on a real
port. Afterwards every record in the log must be a body this test signed with the right
secret and a fresh timestamp, and was answered 200.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from schemas.topics import Topics
from tests.conftest import FIXTURES, sign
from tests.faults.conftest import Reliability, ingest_server, raw_request
from tests.ingest.helpers import (
    PRODUCTION_SECRET,
    SANDBOX_SECRET,
    body_of,
    envelope,
    make_topics,
    read_topic,
    settings,
)

LIMIT = 16 * 1024
EXAMPLES = 300
CUSTOMER = json.loads((FIXTURES / "current" / "customer.json").read_text())

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(
        ["event", "mutated_event", "json", "text", "binary", "huge", "deep", "empty"]))
    if kind == "event":
        obj = draw(st.sampled_from([CUSTOMER, {"id": "ch_1", "object": "charge", "customer": None}, {}]))
        doc = envelope(obj, draw(st.sampled_from(["customer.created", "invoice.paid", "plan.created", ""])),
                       livemode=draw(st.booleans()), event_id=draw(st.sampled_from(["evt_fz", "evt_", "x"])))
        return body_of(doc)
    if kind == "mutated_event":
        doc = envelope(CUSTOMER, "customer.updated", livemode=False, event_id="evt_mutated")
        key = draw(st.sampled_from(["id", "object", "type", "data", "livemode"]))
        doc[key] = draw(json_values)
        return json.dumps(doc).encode(draw(st.sampled_from(["utf-8", "utf-16", "utf-32"])))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "text":
        return draw(st.text(max_size=300)).encode(draw(st.sampled_from(["utf-8", "utf-16-le", "latin-1"])),
                                                  errors="replace")
    if kind == "binary":
        return draw(st.binary(max_size=2000))
    if kind == "huge":
        return b"{" + b" " * draw(st.integers(LIMIT - 10, LIMIT + 2000)) + b"}"
    if kind == "deep":
        depth = draw(st.integers(100, 5000))
        return b"[" * depth + b"]" * depth
    return b""


header_names = st.sampled_from(["X-Junk", "Stripe-Signature", "Content-Type", "Transfer-Encoding",
                                "Expect", "User-Agent"])
header_values = st.text(st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\x7f"),
                        max_size=200)


@st.composite
def valid_requests(draw: st.DrawFn) -> dict[str, Any]:
    """Genuine deliveries with fuzzed contents and headers: the write path gets fuzzed too."""
    env = draw(st.sampled_from(["sandbox", "production"]))
    customer = {**CUSTOMER, "id": "cus_" + draw(st.text(min_size=1, max_size=30)),
                "metadata": draw(st.dictionaries(st.text(max_size=10), st.text(max_size=30), max_size=3))}
    event_type = draw(st.sampled_from(["customer.created", "customer.updated", "customer.deleted"]))
    n = draw(st.integers(0, 10**9))
    body = body_of(envelope(customer, event_type, livemode=env == "production", event_id=f"evt_fuzz{n}"))
    secret = PRODUCTION_SECRET if env == "production" else SANDBOX_SECRET
    # one of each (aiohttp rightly refuses a repeated User-Agent or Content-Type with 400)
    extra = list(draw(st.dictionaries(st.sampled_from(["X-Junk", "User-Agent", "Content-Type"]),
                                      header_values, max_size=3)).items())
    return {"method": "POST", "path": f"/webhooks/stripe/{env}", "body": body,
            "signature": sign(body, secret), "extra": extra, "signing": "right", "genuine": True}


@st.composite
def hostile_requests(draw: st.DrawFn) -> dict[str, Any]:
    body = draw(bodies())
    env = draw(st.sampled_from(["sandbox", "production", "staging", "", "sandbox/../production", "%00"]))
    method = draw(st.sampled_from(["POST", "POST", "POST", "GET", "PUT", "DELETE", "OPTIONS"]))
    now = int(time.time())
    signing = draw(st.sampled_from(["right", "right", "stale", "wrong", "other_env", "random", "none",
                                    "v0", "garbage", "several"]))
    signature: str | None
    if signing == "right":
        signature = sign(body, SANDBOX_SECRET if env != "production" else PRODUCTION_SECRET)
    elif signing == "stale":
        signature = sign(body, SANDBOX_SECRET, timestamp=now - draw(st.integers(301, 10**9)))
    elif signing == "wrong":
        signature = sign(body, "whsec_" + draw(st.text(min_size=1, max_size=30)))
    elif signing == "other_env":
        signature = sign(body, PRODUCTION_SECRET if env != "production" else SANDBOX_SECRET)
    elif signing == "random":
        mac = draw(st.binary(min_size=32, max_size=32)).hex()
        signature = f"t={draw(st.integers(-(10**12), 10**12))},v1={mac}"
    elif signing == "v0":
        signature = sign(body, SANDBOX_SECRET, scheme="v0")
    elif signing == "garbage":
        signature = draw(header_values)
    elif signing == "several":
        good = sign(body, SANDBOX_SECRET)
        signature = good + ",v1=" + "0" * 64 + ",t=" + draw(st.sampled_from(["", "1", "x"]))
    else:
        signature = None
    extra = draw(st.lists(st.tuples(header_names, header_values), max_size=3))
    return {"method": method, "path": f"/webhooks/stripe/{env}", "body": body, "signature": signature,
            "extra": extra, "signing": signing}


def _encode(case: dict[str, Any]) -> bytes:
    lines = [f"{case['method']} {case['path']} HTTP/1.1", "Host: 127.0.0.1", "Connection: close",
             f"Content-Length: {len(case['body'])}"]
    if case["signature"] is not None:
        lines.append(f"Stripe-Signature: {case['signature']}")
    lines += [f"{name}: {value}" for name, value in case["extra"]]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + case["body"]


def test_fuzzed_requests_never_get_5xx_and_never_write_unverified_bytes(
    bootstrap: str, topic_prefix: str, reliability: Reliability
) -> None:
    asyncio.run(make_topics(bootstrap, topic_prefix))
    answers: list[int] = []
    verified: dict[bytes, str] = {}  # bodies signed right and fresh -> environment
    acknowledged: set[bytes] = set()
    cfg = settings(bootstrap, max_body_bytes=LIMIT)
    with ingest_server(cfg, topic_prefix) as server:

        @hsettings(max_examples=EXAMPLES, deadline=None, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(case=st.one_of(hostile_requests(), hostile_requests(), hostile_requests(), valid_requests()))
        def send(case: dict[str, Any]) -> None:
            if case["signing"] in ("right", "several"):
                verified[case["body"]] = case["path"]
            status, body = raw_request(server.port, _encode(case))
            answers.append(status)
            assert status != 0, "no answer"
            assert not 500 <= status < 600, (status, body[:300])
            if status == 200 and case["method"] == "POST":
                acknowledged.add(case["body"])
            if case.get("genuine"):
                assert status == 200, (status, body[:300])
            if status >= 400 and body.startswith(b"{"):
                assert "error" in json.loads(body)

        send()

    records = []
    for env in ("sandbox", "production"):
        records += asyncio.run(read_topic(bootstrap, Topics(env, topic_prefix).stripe_events))
    unverified = [r.value[:80] for r in records if r.value not in verified]
    unacknowledged = [r.value[:80] for r in records if r.value not in acknowledged]
    server_errors = sum(1 for s in answers if s >= 500)
    reliability.record(
        "test_fuzz_webhook_endpoint",
        what="hypothesis: random methods, paths, headers, signatures, bodies (encodings, sizes, nesting)",
        sent=len(answers), acknowledged=sum(1 for s in answers if s == 200),
        refused=sum(1 for s in answers if s >= 400), lost=0, duplicated=0,
        fuzz_cases=len(answers), server_errors=server_errors,
        notes=f"{len(records)} records written, all from correctly signed bodies; "
              f"unverified bytes written: {len(unverified)}",
    )
    assert not unverified, unverified[:3]
    assert not unacknowledged, unacknowledged[:3]
    assert server_errors == 0
    assert len(answers) >= EXAMPLES
