"""Issue #19, "Ingest under attack": each finding of the hostile-input probe, against ingest on a
real socket and a real broker. Every answer is JSON, none is a 5xx, and nothing unverified,
refused or altered reaches the log.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from ingest.app import LINGER_S
from schemas.topics import Topics
from tests.conftest import FIXTURES, sign
from tests.ingest.helpers import (
    SANDBOX_SECRET,
    body_of,
    envelope,
    make_topics,
    read_topic,
    running_ingest,
    settings,
    wait_for,
)

CUSTOMER = json.loads((FIXTURES / "current" / "customer.json").read_text())
MARKER = "sigMARKERdo_not_echo"  # put into inputs; must never come back


def _event(event_id: str = "evt_hostile", event_type: str = "customer.created", **changes: Any) -> bytes:
    doc = envelope(CUSTOMER, event_type, livemode=False, event_id=event_id)
    for key, value in changes.items():
        if value is None:
            del doc[key]
        else:
            doc[key] = value
    return body_of(doc)


@dataclass
class Answer:
    raw: bytes

    @property
    def status_line(self) -> bytes:
        return self.raw.split(b"\r\n", 1)[0]

    @property
    def status(self) -> int:
        return int(self.status_line.split(b" ")[1])

    @property
    def head(self) -> bytes:
        return self.raw.partition(b"\r\n\r\n")[0]

    @property
    def body(self) -> bytes:
        return self.raw.partition(b"\r\n\r\n")[2]

    def error(self) -> dict[str, str]:
        assert b"content-type: application/json" in self.head.lower(), self.raw[:300]
        error: dict[str, str] = json.loads(self.body)["error"]
        assert len(error["message"]) > 40  # a sentence naming the problem and the fix
        return error


async def _exchange(port: int, data: bytes, *, timeout_s: float = 15.0) -> Answer:
    """Send bytes as they are, read until the server closes (within timeout_s)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return Answer(await asyncio.wait_for(reader.read(), timeout_s))
    finally:
        writer.close()


def _post(body: bytes, *headers: tuple[str, str], path: str = "/webhooks/stripe/sandbox",
          length: int | None = None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close",
             *(f"{name}: {value}" for name, value in headers)]
    if length is not None or not any(n.lower() == "transfer-encoding" for n, _ in headers):
        lines.append(f"Content-Length: {len(body) if length is None else length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body


@asynccontextmanager
async def _ingest(bootstrap: str, prefix: str, **overrides: Any) -> AsyncIterator[TestClient[Any, Any]]:
    await make_topics(bootstrap, prefix, envs=["sandbox"])
    async with running_ingest(settings(bootstrap, **overrides), prefix) as client:
        yield client


async def _stored(bootstrap: str, prefix: str) -> list[bytes]:
    return [r.value for r in await read_topic(bootstrap, Topics("sandbox", prefix).stripe_events)]


def _port(client: TestClient[Any, Any]) -> int:
    assert client.server.port is not None
    return client.server.port


# 1. the replay window ----------------------------------------------------------------------

@pytest.mark.parametrize("age_s", [1_000, 30 * 86_400, 5 * 365 * 86_400], ids=["1000s", "30d", "5y"])
async def test_a_captured_delivery_with_a_fresh_t_appended_is_refused(
    bootstrap: str, topic_prefix: str, age_s: int
) -> None:
    body = _event(f"evt_replay_{age_s}")
    now = int(time.time())
    captured = sign(body, SANDBOX_SECRET, timestamp=now - age_s)
    async with _ingest(bootstrap, topic_prefix) as client:
        port = _port(client)
        for forged in (f"{captured},t={now}", f"{captured}, t={now}"):
            answer = await _exchange(port, _post(body, ("Stripe-Signature", forged)))
            assert answer.status == 400, answer.raw[:300]
            assert answer.error()["code"] == "malformed_signature"
        # the reverse: a genuine fresh header with a stale `t` added is malformed, not "stale"
        fresh = sign(body, SANDBOX_SECRET, timestamp=now)
        answer = await _exchange(port, _post(body, ("Stripe-Signature", f"{fresh},t={now - age_s}")))
        assert answer.error()["code"] == "malformed_signature"
        # and the genuine header alone is stored
        answer = await _exchange(port, _post(body, ("Stripe-Signature", fresh)))
        assert answer.status == 200, answer.raw[:300]
    assert await _stored(bootstrap, topic_prefix) == [body]


async def test_timestamps_int_would_accept_and_timestamps_from_the_future_are_refused(
    bootstrap: str, topic_prefix: str
) -> None:
    body = _event("evt_odd_t")
    now = int(time.time())
    mac = sign(body, SANDBOX_SECRET, timestamp=now).split("v1=")[1]
    odd_forms = ["0" * (4000 - len(str(now))) + str(now),
                 str(now).translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")),
                 f"+{str(now)[:1]}_{str(now)[1:]}"]
    async with _ingest(bootstrap, topic_prefix) as client:
        port = _port(client)
        for t_text in odd_forms:  # each verifies in the library as `now`: accepted before
            answer = await _exchange(port, _post(body, ("Stripe-Signature", f"t={t_text},v1={mac}")))
            assert answer.status == 400 and answer.error()["code"] == "malformed_signature", answer.raw[:300]
        for ahead_s in (3_600, 10 * 365 * 86_400):
            future = sign(body, SANDBOX_SECRET, timestamp=now + ahead_s)
            answer = await _exchange(port, _post(body, ("Stripe-Signature", future)))
            assert answer.status == 400 and answer.error()["code"] == "future_timestamp", answer.raw[:300]
    assert await _stored(bootstrap, topic_prefix) == []


# 2. a non-ASCII v1 ---------------------------------------------------------------------------

async def test_a_non_ascii_v1_is_a_json_400_not_a_500(bootstrap: str, topic_prefix: str) -> None:
    async with _ingest(bootstrap, topic_prefix) as client:
        for v1 in ("é", "é" * 64):
            answer = await _exchange(_port(client), _post(_event(), ("Stripe-Signature",
                                                                     f"t={int(time.time())},v1={v1}")))
            assert answer.status == 400, answer.raw[:300]
            assert answer.error()["code"] == "malformed_signature"
    assert await _stored(bootstrap, topic_prefix) == []


# 3. and 4. content encodings -----------------------------------------------------------------

async def test_a_body_with_a_content_encoding_is_refused_with_415_and_never_inflated(
    bootstrap: str, topic_prefix: str
) -> None:
    body = _event("evt_gzip")
    signed_inflated = sign(body, SANDBOX_SECRET)  # what aiohttp used to verify and store
    cases = {
        "gzip, not gzip at all": (b"this is not gzip", "gzip"),
        "gzip, signed over the inflated bytes": (gzip.compress(body), "gzip"),
        "deflate": (zlib.compress(body), "deflate"),
        "br": (body, "br"),
        "x-gzip": (gzip.compress(body), "x-gzip"),
        "identity, gzip": (gzip.compress(body), "identity, gzip"),
    }
    async with _ingest(bootstrap, topic_prefix) as client:
        for name, (payload, encoding) in cases.items():
            answer = await _exchange(_port(client), _post(payload, ("Stripe-Signature", signed_inflated),
                                                          ("Content-Encoding", encoding)))
            assert answer.status == 415, (name, answer.raw[:300])
            assert answer.error()["code"] == "unsupported_content_encoding", name
        # `identity` is no encoding: accepted, and the bytes are the bytes received
        answer = await _exchange(_port(client), _post(body, ("Stripe-Signature", signed_inflated),
                                                      ("Content-Encoding", "identity")))
        assert answer.status == 200, answer.raw[:300]
    assert await _stored(bootstrap, topic_prefix) == [body]


async def test_a_decompression_bomb_is_refused_before_its_body_is_read(bootstrap: str, topic_prefix: str
                                                                       ) -> None:
    bomb = gzip.compress(b"\0" * 100_000_000)  # ~100 KB on the wire, 100 MB inflated
    head = _post(b"", ("Stripe-Signature", sign(b"{}", SANDBOX_SECRET)), ("Content-Encoding", "gzip"),
                 length=len(bomb))
    async with _ingest(bootstrap, topic_prefix) as client:
        port = _port(client)
        # only the first KB is sent: the answer must come without the rest
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head + bomb[:1024])
        await writer.drain()
        first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        writer.close()
        assert first.startswith(b"HTTP/1.1 415 "), first
        # four whole bombs at once: all refused, and the probes keep answering
        answers = await asyncio.gather(*(_exchange(port, head + bomb) for _ in range(4)),
                                       client.get("/healthz"))
        assert [a.status for a in answers[:4]] == [415] * 4
        assert answers[4].status == 200
    assert await _stored(bootstrap, topic_prefix) == []


async def test_a_transfer_encoding_other_than_chunked_is_refused(bootstrap: str, topic_prefix: str) -> None:
    body = _event("evt_te")
    chunked = b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
    async with _ingest(bootstrap, topic_prefix) as client:
        signature = ("Stripe-Signature", sign(body, SANDBOX_SECRET))
        te = ("Transfer-Encoding", "gzip, chunked")
        answer = await _exchange(_port(client), _post(chunked, signature, te))
        assert answer.status == 415 and answer.error()["code"] == "unsupported_transfer_encoding"
        # plain chunked is fine
        answer = await _exchange(_port(client), _post(chunked, signature, ("Transfer-Encoding", "chunked")))
        assert answer.status == 200, answer.raw[:300]
    assert await _stored(bootstrap, topic_prefix) == [body]


# 5. refusals of aiohttp's HTTP parser ----------------------------------------------------------

SIG = f"t=1,v1={MARKER}"
PARSER_CASES: dict[str, tuple[bytes, int, str]] = {
    "malformed request line": (b"GET /\x00" + MARKER.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                               400, "bad_request_line"),
    "not HTTP at all": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + MARKER.encode() + b"\r\n\r\n",
                        400, "bad_request_line"),
    "unknown version": (b"POST /webhooks/stripe/sandbox HTTP/7.3\r\nHost: x\r\n\r\n",
                        400, "bad_request_line"),
    "Content-Length and Transfer-Encoding": (
        _post(b"0\r\n\r\n", ("Stripe-Signature", SIG), ("Transfer-Encoding", "chunked"), length=5),
        400, "bad_framing"),
    "two Content-Lengths": (_post(b"{}", ("Stripe-Signature", SIG), ("Content-Length", "3")),
                            400, "bad_framing"),
    "Content-Length not a number": (
        b"POST /webhooks/stripe/sandbox HTTP/1.1\r\nHost: x\r\nStripe-Signature: " + SIG.encode()
        + b"\r\nContent-Length: +2\r\n\r\n{}", 400, "bad_framing"),
    "a malformed chunk": (_post(b"zz\r\n" + MARKER.encode() + b"\r\n0\r\n\r\n", ("Stripe-Signature", SIG),
                                ("Transfer-Encoding", "chunked")), 400, "bad_framing"),
    "a header line over 8190 bytes": (_post(b"{}", ("Stripe-Signature", SIG + "a" * 9000)),
                                      431, "header_too_large"),
    "more than 128 headers": (_post(b"{}", ("Stripe-Signature", SIG),
                                    *((f"X-H{i}", MARKER) for i in range(200))), 431, "too_many_headers"),
    "a control character in a header value": (_post(b"{}", ("Stripe-Signature", SIG + "\x01")),
                                              400, "bad_header"),
    "a space before the colon": (b"POST /webhooks/stripe/sandbox HTTP/1.1\r\nHost: x\r\nStripe-Signature : "
                                 + SIG.encode() + b"\r\nContent-Length: 2\r\n\r\n{}", 400, "bad_header"),
    "no Host": (b"POST /webhooks/stripe/sandbox HTTP/1.1\r\nStripe-Signature: " + SIG.encode()
                + b"\r\nContent-Length: 2\r\n\r\n{}", 400, "missing_host"),
}


@pytest.mark.parametrize("name", list(PARSER_CASES))
async def test_the_http_parsers_refusals_are_json_and_echo_nothing(
    bootstrap: str, topic_prefix: str, name: str
) -> None:
    request, status, code = PARSER_CASES[name]
    async with _ingest(bootstrap, topic_prefix) as client:
        answer = await _exchange(_port(client), request)
        assert answer.status_line.startswith(f"HTTP/1.1 {status} ".encode()), answer.raw[:300]
        assert answer.error()["code"] == code
        assert MARKER.encode() not in answer.raw and b"t=1,v1" not in answer.raw
        assert b"connection: close" in answer.head.lower()
        metrics = await (await client.get("/metrics")).text()
    counted = f'refstream_ingest_requests_total{{env="unknown",outcome="{code}",status="{status}"}} 1.0'
    assert counted in metrics


# 6. Expect: 100-continue ---------------------------------------------------------------------

@pytest.mark.parametrize(
    ("name", "path", "headers", "status", "code"),
    [
        ("oversized Content-Length", "/webhooks/stripe/sandbox", [("Content-Length", "600000")], 413,
         "body_too_large"),
        ("unknown environment", "/webhooks/stripe/staging", [("Content-Length", "60")], 404,
         "unknown_environment"),
        ("environment without a secret", "/webhooks/stripe/production", [("Content-Length", "60")], 404,
         "environment_not_configured"),
        ("gzip", "/webhooks/stripe/sandbox", [("Content-Length", "60"), ("Content-Encoding", "gzip")], 415,
         "unsupported_content_encoding"),
        ("no signature", "/webhooks/stripe/sandbox", [("Content-Length", "60")], 400, "missing_signature"),
        ("a malformed signature", "/webhooks/stripe/sandbox",
         [("Content-Length", "60"), ("Stripe-Signature", "t=1,t=2,v1=" + "0" * 64)], 400,
         "malformed_signature"),
        ("a path that serves nothing", "/upload", [("Content-Length", "60")], 404, "not_found"),
    ],
)
async def test_expect_100_continue_is_refused_before_the_body_is_invited_and_closed_at_once(
    bootstrap: str, topic_prefix: str, name: str, path: str, headers: list[tuple[str, str]], status: int,
    code: str
) -> None:
    sig = [] if any(n == "Stripe-Signature" for n, _ in headers) or code == "missing_signature" else [
        ("Stripe-Signature", sign(b"x" * 60, SANDBOX_SECRET))]
    head = "".join(f"{n}: {v}\r\n" for n, v in [*headers, *sig])
    request = f"POST {path} HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n{head}\r\n".encode()
    cfg = {"stripe_secrets": {"sandbox": (SANDBOX_SECRET,)}}
    async with _ingest(bootstrap, topic_prefix, **cfg) as client:
        # the client never sends the body: the server answers and closes by itself, without
        # the lingering wait for a body that is not coming (it took 5-11 s before)
        answer = await _exchange(_port(client), request, timeout_s=LINGER_S * 0.75)
    assert b"100 Continue" not in answer.raw, answer.raw[:300]
    assert answer.status == status, answer.raw[:300]
    assert answer.error()["code"] == code


async def test_expect_100_continue_is_invited_when_the_head_is_right(bootstrap: str, topic_prefix: str
                                                                       ) -> None:
    body = _event("evt_expect")
    async with _ingest(bootstrap, topic_prefix) as client:
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(client))
        writer.write(_post(b"", ("Stripe-Signature", sign(body, SANDBOX_SECRET)), ("Expect", "100-continue"),
                           length=len(body)))
        await writer.drain()
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10) == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(body)
        answer = Answer(await asyncio.wait_for(reader.read(), 10))
        writer.close()
    assert answer.status == 200, answer.raw[:300]
    assert await _stored(bootstrap, topic_prefix) == [body]


# 7. echoes -------------------------------------------------------------------------------------

async def test_a_huge_type_or_id_is_echoed_and_logged_only_in_part(
    bootstrap: str, topic_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="refstream.ingest")
    huge_type = _event("evt_huge_type", event_type="plan." + "x" * 100_000)
    huge_id = _event("evt_" + "y" * 100_000)
    async with _ingest(bootstrap, topic_prefix) as client:
        for body in (huge_type, huge_id):
            resp = await client.post("/webhooks/stripe/sandbox", data=body,
                                     headers={"Stripe-Signature": sign(body, SANDBOX_SECRET)})
            assert resp.status == 200
            assert len(await resp.read()) < 300
    lines = [r for r in caplog.records if r.getMessage() == "webhook"]
    assert len(lines) == 2
    for record in lines:
        assert len(str(record.event_id)) <= 64 and len(str(record.event_type)) <= 64  # type: ignore[attr-defined]
    assert await _stored(bootstrap, topic_prefix) == [huge_id]  # the body itself is whole


# 8. the envelope ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("field", "value"),
                         [("created", None), ("created", "yesterday"), ("livemode", None)])
async def test_a_signed_event_without_the_envelope_the_worker_needs_is_refused(
    bootstrap: str, topic_prefix: str, field: str, value: str | None
) -> None:
    body = _event("evt_no_" + field, **{field: value})
    async with _ingest(bootstrap, topic_prefix) as client:
        resp = await client.post("/webhooks/stripe/sandbox", data=body,
                                 headers={"Stripe-Signature": sign(body, SANDBOX_SECRET)})
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error["code"] == "not_an_event"
    assert f'"{field}"' in error["message"]
    assert await _stored(bootstrap, topic_prefix) == []


# and the rest of the probe's list ----------------------------------------------------------------

async def test_two_signature_headers_and_a_body_cut_short_are_refused(bootstrap: str, topic_prefix: str
                                                                      ) -> None:
    body = _event("evt_two_headers")
    stale = sign(body, SANDBOX_SECRET, timestamp=int(time.time()) - 10**6)
    async with _ingest(bootstrap, topic_prefix) as client:
        port = _port(client)
        answer = await _exchange(port, _post(body, ("Stripe-Signature", stale),
                                             ("Stripe-Signature", sign(body, SANDBOX_SECRET))))
        assert answer.status == 400 and answer.error()["code"] == "malformed_signature"
        # a chunked body whose connection closes half-way: refused, no server error
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_post(b"", ("Stripe-Signature", sign(body, SANDBOX_SECRET)),
                           ("Transfer-Encoding", "chunked")) + b"%x\r\n" % len(body) + body[:10])
        await writer.drain()
        writer.close()

        async def counted() -> str | None:
            metrics = await (await client.get("/metrics")).text()
            return metrics if 'outcome="client_closed"' in metrics else None

        metrics = await wait_for(counted, timeout_s=10)
    assert 'outcome="client_closed",status="499"' in metrics
    assert 'status="500"' not in metrics
    assert await _stored(bootstrap, topic_prefix) == []


async def test_a_request_line_of_http_0_9_or_2_0_is_refused(bootstrap: str, topic_prefix: str) -> None:
    # aiohttp's parser takes these; a signed body must not be stored through them
    body = _event("evt_version")
    async with _ingest(bootstrap, topic_prefix) as client:
        for version in (b"HTTP/0.9", b"HTTP/2.0"):
            request = _post(body, ("Stripe-Signature", sign(body, SANDBOX_SECRET)))
            request = request.replace(b"HTTP/1.1", version, 1)
            answer = await _exchange(_port(client), request)
            assert answer.status == 400 and answer.error()["code"] == "unsupported_http_version"
    assert await _stored(bootstrap, topic_prefix) == []
