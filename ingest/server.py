"""How ingest is served: aiohttp's server, with its own refusals answered in ingest's JSON.

aiohttp's HTTP parser refuses some requests before any application code runs: a malformed
request line, a Content-Length beside a Transfer-Encoding, a header line over the size
limit, too many headers, a broken chunk. Its answer to those is a text/plain 400 that
quotes ~100 bytes of the input (which can be a `Stripe-Signature` value) and, as it never
learnt the request's version, an `HTTP/1.0` status line. Here they get ingest's JSON error
instead (docs/ingest.md#answers), naming the problem without echoing any input, with an
`HTTP/1.1` status line and the connection closed; an error inside a handler becomes a JSON
500 the same way.

aiohttp offers no setting for that answer, so `IngestRunner` (an `AppRunner`) builds its
connections from a `RequestHandler` whose `handle_error` is ingest's. `serve()` runs it the
way `web.run_app` runs an app: the CLI, the tests and the benchmarks all serve ingest
through this module. The parser limits and `auto_decompress=False` are set on the app
itself (`create_app`'s handler_args), so they hold however the app is run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http import HttpVersion11
from aiohttp.http_exceptions import (
    BadStatusLine,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
)
from aiohttp.web_protocol import ERROR, RequestHandler

from ingest.app import INGEST
from ingest.metrics import IngestMetrics

log = logging.getLogger("refstream.ingest")

# Stated here (and in docs/ingest.md) rather than left to aiohttp's defaults.
MAX_LINE_BYTES = 8190  # the request line, and each header line
MAX_HEADERS = 128

_LIMITS = (
    f"the request line and each header line may be at most {MAX_LINE_BYTES} bytes, and a "
    f"request may have at most {MAX_HEADERS} headers"
)
_HINT = "Stripe sends well-formed HTTP/1.1; check what sits between Stripe and refstream."


def _parser_refusal(exc: BaseException | None) -> tuple[int, str, str]:
    """(status, code, message) for a request aiohttp's parser refused; never quotes input."""
    if isinstance(exc, LineTooLong):
        return 431, "header_too_large", f"A request line or header is too long: {_LIMITS}."
    # the parsers' own words before the quoted input (llhttp: "<reason>:\n\n  b'…'"): fixed
    # texts, used only to pick the code below, never sent back
    reason = (str(getattr(exc, "message", "")).split(":", 1)[0] if exc else "").lower()
    if "too many headers" in reason:
        return 431, "too_many_headers", f"The request has too many headers: {_LIMITS}."
    if "content-length" in reason or "transfer-encoding" in reason or "chunk" in reason:
        return 400, "bad_framing", (
            "The body's framing is invalid: a Content-Length that is not a number, two of "
            "them, Content-Length together with Transfer-Encoding, a Transfer-Encoding other "
            f"than chunked, or a malformed chunk. Send one Content-Length. {_HINT}")
    if isinstance(exc, BadStatusLine | InvalidURLError) or "method" in reason or "url" in reason \
            or "version" in reason:
        return 400, "bad_request_line", (
            f"The request line is not valid HTTP/1.1 (`METHOD /path HTTP/1.1`). {_HINT}")
    if "host" in reason:
        return 400, "missing_host", f"An HTTP/1.1 request must have one Host header. {_HINT}"
    if isinstance(exc, InvalidHeader) or "header" in reason:
        return 400, "bad_header", f"A header is malformed (name or value characters). {_HINT}"
    return 400, "bad_request", f"The request is not valid HTTP/1.1. {_HINT}"


class JsonErrorRequestHandler(RequestHandler):
    """aiohttp's connection protocol, answering its own refusals as ingest's JSON errors."""

    __slots__ = ("_metrics",)

    def __init__(self, *args: Any, metrics: IngestMetrics | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._metrics = metrics

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # as aiohttp: an answer is already on its way
            raise ConnectionError("Response is sent already, cannot send another response")
        if status == 400:
            status, code, text = _parser_refusal(exc)
        elif status == 504:
            code, text = "timeout", "ingest did not answer in time; nothing was acknowledged. Retry."
        else:
            status, code = 500, "internal_error"
            text = ("ingest failed while handling this request; it was not acknowledged, so "
                    "Stripe retries it. The operator finds the error in ingest's log.")
            log.error("internal error", exc_info=exc)  # the type and place, not the message
        log.info("refused", extra={"status": status, "outcome": code})
        if self._metrics is not None:
            self._metrics.request_done("unknown", status, code, 0.0)
        # a refusal from the parser has no request line to take the version from: aiohttp
        # then answers HTTP/1.0; ingest speaks HTTP/1.1
        if request._message is ERROR:
            request._version = HttpVersion11
            request._cache.pop("version", None)
        response = web.Response(
            status=status,
            body=orjson.dumps({"error": {"code": code, "message": text}}),
            content_type="application/json",
        )
        response.force_close()
        return response


class _Server(web.Server):
    def __init__(self, made: web.Server, metrics: IngestMetrics | None) -> None:
        super().__init__(made.request_handler, request_factory=made.request_factory,
                         handler_cancellation=made.handler_cancellation, loop=made._loop,
                         **made._kwargs)
        self._metrics = metrics

    def __call__(self) -> RequestHandler:
        return JsonErrorRequestHandler(self, loop=self._loop, metrics=self._metrics, **self._kwargs)


class IngestRunner(web.AppRunner):
    """`web.AppRunner` whose connections answer aiohttp's own refusals in JSON."""

    async def _make_server(self) -> web.Server:
        # the app's startup and its handler_args, exactly as AppRunner does them
        made = await super()._make_server()
        return _Server(made, self.app[INGEST].metrics if INGEST in self.app else None)


def serve(
    app: web.Application,
    *,
    host: str,
    port: int,
    reuse_port: bool,
    shutdown_timeout: float,
    keepalive_timeout: float,
    loop: asyncio.AbstractEventLoop,
) -> None:
    """Serve `app` until SIGINT/SIGTERM, as `web.run_app` does, through `IngestRunner`."""
    runner = IngestRunner(app, handle_signals=True, access_log=None,
                          keepalive_timeout=keepalive_timeout, shutdown_timeout=shutdown_timeout)

    async def run() -> None:
        try:
            await runner.setup()
            site = web.TCPSite(runner, host, port, reuse_port=reuse_port)
            await site.start()
            await asyncio.Event().wait()  # until a signal raises GracefulExit
        finally:
            await runner.cleanup()

    asyncio.set_event_loop(loop)
    main = loop.create_task(run())
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        if not main.done():
            main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(main)
        rest = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in rest:
            task.cancel()
        if rest:
            loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        asyncio.set_event_loop(None)
        loop.close()
