"""The webhook service: verify → write → answer (docs/ingest.md).

`create_app(settings, event_log)` builds the aiohttp application; the caller injects the
settings and the `EventLog`, so tests and the CLI run the same code against real Kafka.
Serve it with `ingest.server` (`IngestRunner`, `serve`), which answers aiohttp's own
refusals in the same JSON.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import orjson
from aiohttp import web
from aiohttp.http import HttpVersion10, HttpVersion11

from ingest.log_lines import info_line, lone_batched_handler
from ingest.metrics import CONTENT_TYPE, IngestMetrics
from ingest.producer import EventLog, LogUnavailable
from ingest.verify import (
    Envelope,
    Rejection,
    check_envelope,
    parse_signature_header,
    short,
    verify_signature,
)
from refstream.settings import ENVIRONMENTS, Settings
from schemas.topics import H_ENV, H_EVENT_ID, H_EVENT_TYPE, H_RECEIVED_AT, Topics

log = logging.getLogger("refstream.ingest")

WEBHOOK_PREFIX = "/webhooks/stripe/"
WEBHOOK_PATH = WEBHOOK_PREFIX + "{env}"


@dataclass
class Ingest:
    """What the handlers share; one per application."""

    settings: Settings
    event_log: EventLog
    topic_prefix: str = "refstream"
    clock: Callable[[], float] = time.time
    body_timeout_s: float = 10.0
    metrics: IngestMetrics = field(default_factory=IngestMetrics.create)

    _topics: dict[str, str] = field(default_factory=dict)

    def topic(self, env: str) -> str:
        topic = self._topics.get(env)
        if topic is None:
            topic = self._topics[env] = Topics(env=env, prefix=self.topic_prefix).stripe_events
        return topic


INGEST = web.AppKey("ingest", Ingest)


def _json(status: int, doc: object) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(doc), content_type="application/json")


# Passed to every connection's RequestHandler by the app itself (handler_args), so they
# hold however the app is served. Stripe never compresses a webhook: the body must stay
# the bytes received (they are what is signed and what is stored), and inflating before
# the signature check would let anyone make ingest inflate a bomb. LINGER_S bounds how long
# the rest of a refused body is read and dropped before the connection closes.
LINGER_S = 2.0
HANDLER_ARGS = {
    "auto_decompress": False,
    "lingering_time": LINGER_S,
    "max_line_size": 8190,
    "max_field_size": 8190,
    "max_headers": 128,
}


def _too_large(limit: int) -> Rejection:
    return Rejection(
        413,
        "body_too_large",
        f"The body is larger than the {limit} byte limit. Stripe events are far smaller; "
        "if a genuine event hits it, raise REFSTREAM_MAX_BODY_BYTES.",
    )


async def _read_body(request: web.Request, limit: int, timeout_s: float) -> bytes:
    # Refuse early on a declared size, and enforce again while reading: the header may lie
    # or be absent (chunked).
    content_length = request.content_length
    if content_length is not None and content_length > limit:
        raise _too_large(limit)
    content = request.content
    # The whole body usually arrives with the headers: take what is buffered without
    # arming a timer; only a body still on its way is awaited, within timeout_s.
    chunks: list[bytes] = []
    size = 0
    try:
        chunk = content.read_nowait()
        while chunk:
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunk = content.read_nowait()
        if not content.at_eof():
            try:
                async with asyncio.timeout(timeout_s):
                    while chunk := await content.readany():
                        chunks.append(chunk)
                        size += len(chunk)
                        if size > limit:
                            raise _too_large(limit)
            except TimeoutError:
                raise Rejection(
                    408,
                    "body_timeout",
                    f"The body did not arrive within {timeout_s:g} s. Send the whole body at once.",
                ) from None
    except ConnectionResetError:
        # the client went away mid-body: nobody reads the answer, but it is no server error
        raise _client_closed() from None
    except web.RequestPayloadError:
        # a chunk that breaks off or is malformed after the headers were parsed
        raise Rejection(
            400,
            "bad_body",
            "The body could not be read: its chunked encoding is broken or it ended early. "
            "Send the body with one Content-Length, as Stripe does.",
        ) from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _client_closed() -> Rejection:
    # 499: nginx's "client closed request"; counted, never seen by anyone
    return Rejection(499, "client_closed", "The connection closed before the whole body arrived. "
                     "Send the whole body.")


def _unknown_environment(env: str) -> Rejection:
    return Rejection(
        404,
        "unknown_environment",
        f"There is no environment {short(env)!r}. Use /webhooks/stripe/sandbox for "
        "test-mode events or /webhooks/stripe/production for live-mode events.",
    )


def _check_head(request: web.Request, ingest: Ingest, env: str) -> tuple[str, ...]:
    """The checks the request line and headers allow, before any of the body is read (or,
    with `Expect: 100-continue`, invited): environment, encoding, declared size. Returns
    the environment's secrets."""
    if env not in ENVIRONMENTS:
        raise _unknown_environment(env)
    if request.version not in _HTTP1:
        # aiohttp's parser takes "HTTP/0.9" and "HTTP/2.0" request lines
        raise Rejection(
            400,
            "unsupported_http_version",
            "Webhooks are accepted over HTTP/1.1 (or 1.0) only. Send the request as Stripe does.",
        )
    secrets = ingest.settings.stripe_secrets.get(env, ())
    if not secrets:
        raise Rejection(
            404,
            "environment_not_configured",
            f"The {env!r} endpoint has no signing secret configured, so it accepts "
            f"nothing. Set REFSTREAM_STRIPE_SECRETS_{env.upper()} to the endpoint's "
            "whsec_… secret and restart ingest.",
        )
    headers = request.headers
    if "Content-Encoding" in headers and any(
        value.strip().lower() != "identity" for value in headers.getall("Content-Encoding")
    ):
        raise Rejection(
            415,
            "unsupported_content_encoding",
            "The body has a Content-Encoding (e.g. gzip); Stripe never compresses webhook "
            "bodies, and refstream stores the signed bytes exactly as received. Send the body "
            "uncompressed, without a Content-Encoding header.",
        )
    if "Transfer-Encoding" in headers and headers.get("Transfer-Encoding", "").strip().lower() != "chunked":
        # aiohttp's parser has already refused one that does not end in chunked; "gzip, chunked"
        # would be stored de-chunked but still compressed
        raise Rejection(
            415,
            "unsupported_transfer_encoding",
            "The body has a Transfer-Encoding other than chunked (e.g. gzip, chunked); refstream "
            "stores the signed bytes exactly as received. Send one Content-Length, as Stripe does.",
        )
    limit = ingest.settings.max_body_bytes
    content_length = request.content_length
    if content_length is not None and content_length > limit:
        raise _too_large(limit)
    return secrets


def _signature_header(request: web.Request) -> str | None:
    values = request.headers.getall("Stripe-Signature", ())
    if len(values) > 1:
        # which one would be checked? A proxy may also join them with ",": refused alike
        raise Rejection(
            400,
            "malformed_signature",
            "The request has more than one Stripe-Signature header. Stripe sends exactly "
            "one; send the header exactly as Stripe computed it.",
        )
    return values[0] if values else None


_STORED = orjson.dumps({"received": True, "stored": True})
_HTTP1 = frozenset({HttpVersion10, HttpVersion11})
# refusals whose body was not (all) read: a 400 for a broken body, 408, 413, 415
_CLOSE_AFTER = frozenset({408, 413, 415})


def _env(request: web.Request) -> str:
    # the known environments have plain routes (no pattern to match), the rest the pattern
    return request.match_info.get("env") or request.path[len(WEBHOOK_PREFIX):]


def _record(ingest: Ingest, env_label: str, status: int, outcome: str, started: float,
            envelope: Envelope | None) -> None:
    """Count and log one webhook request (one line, no header or body)."""
    elapsed = time.perf_counter() - started
    ingest.metrics.request_done(env_label, status, outcome, elapsed)
    fields = {
        "env": env_label,
        "event_id": short(envelope.event_id) if envelope else None,
        "event_type": short(envelope.event_type) if envelope else None,
        "status": status,
        "outcome": outcome,
        "latency_ms": round(elapsed * 1000, 2),
    }
    handler = lone_batched_handler(log)
    if handler is not None:
        handler.add_line(info_line(log, "webhook", fields))
    else:
        log.info("webhook", extra=fields)


async def webhook(request: web.Request) -> web.Response:
    ingest = request.app[INGEST]
    started = time.perf_counter()
    received_at = ingest.clock()
    env = _env(request)
    env_label = env if env in ENVIRONMENTS else "unknown"
    envelope: Envelope | None = None
    status, outcome = 500, "internal_error"
    try:
        secrets = _check_head(request, ingest, env)
        body = await _read_body(request, ingest.settings.max_body_bytes, ingest.body_timeout_s)
        verify_signature(
            body,
            _signature_header(request),
            secrets,
            env=env,
            now=received_at,
            tolerance_s=ingest.settings.signature_tolerance_s,
        )
        envelope = check_envelope(body, env=env)
        if not envelope.handled:
            status, outcome = 200, "ignored"
            return _json(200, {"received": True, "stored": False,
                               "reason": f"refstream does not use {short(envelope.event_type)!r} events"})
        headers = [
            (H_EVENT_ID, envelope.event_id.encode()),
            (H_EVENT_TYPE, envelope.event_type.encode()),
            (H_ENV, env.encode()),
            (H_RECEIVED_AT, str(int(received_at * 1000)).encode()),
        ]
        await ingest.event_log.append(ingest.topic(env), envelope.key.encode(), body, headers)
        status, outcome = 200, "written"
        return web.Response(body=_STORED, content_type="application/json")
    except Rejection as rejection:
        status, outcome = rejection.status, rejection.code
        response = _json(rejection.status, rejection.body())
        if rejection.status in _CLOSE_AFTER or rejection.code in ("bad_body", "client_closed"):
            # the rest of this body is not worth reading: close (after at most LINGER_S)
            response.force_close()
        return response
    except asyncio.CancelledError:
        # the client went away and the server cancels handlers on disconnect
        # (handler_cancellation): counted as such, not as a server error
        status, outcome = 499, "client_closed"
        raise
    except LogUnavailable as exc:
        status, outcome = 503, exc.code
        ingest.metrics.produce_errors.labels(env_label, exc.code).inc()
        return _json(503, {"error": {"code": exc.code, "message": exc.message}})
    finally:
        _record(ingest, env_label, status, outcome, started, envelope)


async def healthz(request: web.Request) -> web.Response:
    return _json(200, {"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    ingest = request.app[INGEST]
    if await ingest.event_log.reachable():
        return _json(200, {"status": "ready"})
    return _json(
        503,
        {
            "error": {
                "code": "kafka_unreachable",
                "message": f"Kafka at {ingest.event_log.bootstrap} does not answer. Start it "
                "(`refstream kafka up`) or fix REFSTREAM_KAFKA_BOOTSTRAP.",
            }
        },
    )


async def metrics(request: web.Request) -> web.Response:
    body = request.app[INGEST].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


@web.middleware
async def json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """aiohttp's own refusals (unknown path, wrong method) answered as JSON like ours."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "bad_request")
        hint = (
            "Stripe webhooks go to POST /webhooks/stripe/sandbox or /webhooks/stripe/production; "
            "probes to GET /healthz, /readyz and /metrics."
        )
        return web.Response(
            status=exc.status,
            body=orjson.dumps({"error": {"code": code, "message": f"{exc.reason}. {hint}"}}),
            content_type="application/json",
            headers={k: v for k, v in exc.headers.items() if k.lower() == "allow"},
        )


_NOT_CONTINUE = orjson.dumps({"error": {"code": "expectation_failed", "message":
                                        "Only `Expect: 100-continue` is supported; send the request "
                                        "without any other Expect header."}})


async def _refuse_now(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """Answer an `Expect` request without inviting its body, and close the connection at once.

    The client holds the body back until `100 Continue`, which never comes: waiting for
    that body to drain (aiohttp's lingering close) would keep the connection open for
    nothing, so the answer is written here and the connection closed behind it.
    """
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()  # the transport closes once the answer is flushed
    return response


async def _continue(request: web.Request) -> None:
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # the interim answer is not part of the response


async def expect_continue(request: web.Request) -> web.StreamResponse | None:
    """`Expect: 100-continue` is answered; any other expectation gets a JSON 417.

    aiohttp's default handler answers 500 when the unknown value is not ASCII (found by
    the fuzz suite), so ingest handles the header itself.
    """
    if request.version < (1, 1):
        return None
    if request.headers.get("Expect", "").lower() == "100-continue":
        await _continue(request)
        return None
    return await _refuse_now(request, web.Response(status=417, body=_NOT_CONTINUE,
                                                   content_type="application/json"))


async def webhook_expect(request: web.Request) -> web.StreamResponse | None:
    """A webhook's body is invited only once its request line and headers pass.

    Environment, encoding, declared size and the signature header's grammar are checked
    first; a refusal is answered at once, without `100 Continue`, and the connection closed.
    """
    if request.version < (1, 1):
        return None
    if request.headers.get("Expect", "").lower() != "100-continue":
        return await expect_continue(request)
    ingest = request.app[INGEST]
    env = _env(request)
    try:
        _check_head(request, ingest, env)
        parse_signature_header(_signature_header(request))
    except Rejection as rejection:
        _record(ingest, env if env in ENVIRONMENTS else "unknown", rejection.status, rejection.code,
                time.perf_counter(), None)
        return await _refuse_now(request, _json(rejection.status, rejection.body()))
    await _continue(request)
    return None


async def not_found_expect(request: web.Request) -> web.StreamResponse | None:
    """Nothing is served here: refuse before the body is invited."""
    if request.version < (1, 1) or request.headers.get("Expect", "").lower() != "100-continue":
        return await expect_continue(request)
    return await _refuse_now(request, await not_found(request))


_ALLOWED = {"/healthz": "GET, HEAD", "/readyz": "GET, HEAD", "/metrics": "GET, HEAD"}


async def not_found(request: web.Request) -> web.Response:
    path = request.path
    allow = _ALLOWED.get(path) or ("POST" if path.startswith("/webhooks/stripe/") and path.count("/") == 3
                                   else None)
    hint = (
        "Stripe webhooks go to POST /webhooks/stripe/sandbox or /webhooks/stripe/production; "
        "probes to GET /healthz, /readyz and /metrics."
    )
    if allow:
        response = _json(405, {"error": {"code": "method_not_allowed",
                                         "message": f"{request.method[:20]} is not allowed here. {hint}"}})
        response.headers["Allow"] = allow
        return response
    return _json(404, {"error": {"code": "not_found", "message": f"There is nothing at this path. {hint}"}})


def create_app(
    settings: Settings,
    event_log: EventLog,
    *,
    topic_prefix: str = "refstream",
    clock: Callable[[], float] = time.time,
    body_timeout_s: float = 10.0,
) -> web.Application:
    app = web.Application(middlewares=[json_errors], handler_args=HANDLER_ARGS)
    app[INGEST] = Ingest(settings, event_log, topic_prefix, clock, body_timeout_s)
    # A plain path is found by one dict lookup; the pattern costs a regex match and a
    # match dict per request (12.7 -> 5.6 µs per resolve).
    for env in ENVIRONMENTS:
        app.router.add_post(WEBHOOK_PREFIX + env, webhook, expect_handler=webhook_expect)
    app.router.add_post(WEBHOOK_PATH, webhook, expect_handler=webhook_expect)
    for path, probe in (("/healthz", healthz), ("/readyz", readyz), ("/metrics", metrics)):
        app.router.add_get(path, probe, expect_handler=expect_continue)
    # Every other request lands here rather than on aiohttp's built-in 404/405, whose
    # Expect handling cannot be replaced (see expect_continue).
    app.router.add_route("*", "/{tail:.*}", not_found, expect_handler=not_found_expect)

    async def connect_log(app: web.Application) -> None:
        # connect now, so the first delivery does not pay for it; Kafka being down here
        # is fine (webhooks get 503 and /readyz says so until it is back)
        await app[INGEST].event_log.reachable(timeout_s=2.0, cache_s=0.0)

    async def close_log(app: web.Application) -> None:
        await app[INGEST].event_log.stop()

    app.on_startup.append(connect_log)
    app.on_cleanup.append(close_log)
    return app
