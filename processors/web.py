"""The worker's web API (docs/cli.md#worker): referrers, their summaries and histories, and
readiness and metrics.

- `GET /referrers/{ucc}` and `GET /referrers/{ucc}/history` come from the partition that
  owns the referrer: Faust's `table_route` forwards a request for a key that another worker
  owns to that worker (by its canonical URL), so any worker answers for any referrer.
- `GET /referrers` pages through every referrer in ucc order: each worker lists the
  partitions it owns, and the one asked merges what every worker (from Faust's assignment)
  lists for the same page.

Every amount is `{"amount": <minor units>, "currency": …}` (processors/answers.py). An
optional bearer token (REFSTREAM_WEB_TOKEN) guards everything; the server binds 127.0.0.1
by default.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from typing import TYPE_CHECKING, Any

import aiohttp
import faust
from faust.web import Request, Response, View

from processors.answers import history_json, summary_json
from processors.delivery import loads_envelope
from processors.rules import referrer
from processors.stages import is_reserved

if TYPE_CHECKING:
    from processors.agents import Pipeline

PAGE_DEFAULT, PAGE_MAX = 100, 1000


def _authorized(pipeline: Pipeline, request: Request) -> bool:
    token = pipeline.cfg.web_token
    if token is None:
        return True
    given = request.headers.get("Authorization", "")
    return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


def _unauthorized(view: View) -> Response:
    return view.json(
        {"error": "missing or wrong bearer token",
         "fix": "send `Authorization: Bearer <REFSTREAM_WEB_TOKEN>` as configured on the worker"},
        status=401,
    )


def _as_of(view: View, request: Request) -> int | Response:
    raw = request.query.get("as_of")
    try:
        return int(raw) if raw else int(time.time())
    except ValueError:
        return view.json({"error": f"as_of={raw!r} is not Unix seconds",
                          "fix": "pass ?as_of=<Unix seconds>, or leave it out for now"}, status=400)


def _state(pipeline: Pipeline, ucc: str) -> referrer.ReferrerState | None:
    env = loads_envelope(pipeline.referrers.get(ucc))
    return referrer.loads(env.state) if env.state is not None else None


def _no_referrer(view: View, ucc: str) -> Response:
    return view.json({"error": f"no referrer {ucc!r} (yet)",
                      "fix": "check the ucc; a referrer appears with its first signup or adjustment"},
                     status=404)


def install(app: faust.App, pipeline: Pipeline) -> None:
    @app.page("/referrers")
    class Referrers(View):
        """?limit=N (1…1000, default 100) &after=<the last ucc of the previous page> &as_of=."""

        async def get(self, request: Request) -> Response:
            if not _authorized(pipeline, request):
                return _unauthorized(self)
            as_of = _as_of(self, request)
            if isinstance(as_of, Response):
                return as_of
            raw = request.query.get("limit", str(PAGE_DEFAULT))
            if not raw.isdigit() or not 1 <= int(raw) <= PAGE_MAX:
                return self.json({"error": f"limit={raw!r} is not a page size",
                                  "fix": f"pass ?limit=1 to {PAGE_MAX} (default {PAGE_DEFAULT})"}, status=400)
            limit, after = int(raw), request.query.get("after", "")
            local = request.query.get("local") == "1"
            page = _local_page(pipeline, after, limit, as_of)
            if not local:
                others = await _other_pages(app, pipeline, request, after, limit, as_of)
                if others is None:
                    return self.json({"error": "a worker that owns some referrers did not answer",
                                      "fix": "retry; check that every worker runs (GET /readyz)"}, status=503)
                page = sorted(page + others, key=lambda s: str(s["ucc"]))
            more = len(page) > limit
            page = page[:limit]
            return self.json({"referrers": page, "as_of": as_of,
                              "next_after": page[-1]["ucc"] if more and page else None})

    @app.page("/referrers/{ucc}")
    class ReferrerView(View):
        @app.table_route(table=pipeline.referrers, match_info="ucc")
        async def get(self, request: Request, ucc: str) -> Response:
            if not _authorized(pipeline, request):
                return _unauthorized(self)
            as_of = _as_of(self, request)
            if isinstance(as_of, Response):
                return as_of
            state = _state(pipeline, ucc)
            if state is None:
                return _no_referrer(self, ucc)
            return self.json(summary_json(referrer.summary(state, as_of), as_of))

    @app.page("/referrers/{ucc}/history")
    class HistoryView(View):
        @app.table_route(table=pipeline.referrers, match_info="ucc")
        async def get(self, request: Request, ucc: str) -> Response:
            if not _authorized(pipeline, request):
                return _unauthorized(self)
            as_of = _as_of(self, request)
            if isinstance(as_of, Response):
                return as_of
            state = _state(pipeline, ucc)
            if state is None:
                return _no_referrer(self, ucc)
            return self.json(history_json(state, as_of))

    @app.page("/metrics")
    class Metrics(View):
        """Prometheus text: the counters operators alert on (dead letters above all)."""

        async def get(self, request: Request) -> Response:
            if not _authorized(pipeline, request):
                return _unauthorized(self)
            c = pipeline.counters
            lines = [
                "# HELP refstream_worker_dead_letters_total Records set aside to the dead-letter topic.",
                "# TYPE refstream_worker_dead_letters_total counter",
                f"refstream_worker_dead_letters_total {c.dead_letters}",
                "# HELP refstream_worker_processed_total Records stepped through the reward core.",
                "# TYPE refstream_worker_processed_total counter",
                f"refstream_worker_processed_total {c.processed}",
                "# HELP refstream_worker_skipped_total Replayed records already applied (dropped).",
                "# TYPE refstream_worker_skipped_total counter",
                f"refstream_worker_skipped_total {c.skipped}",
            ]
            return self.text("\n".join(lines) + "\n", content_type="text/plain")

    @app.page("/readyz")
    class Ready(View):
        async def get(self, request: Request) -> Response:
            if not _authorized(pipeline, request):
                return _unauthorized(self)
            recovered = app.tables.recovery.completed.is_set()
            # rebalances: how often this worker's partitions were handed out since it started
            body: dict[str, Any] = {"ready": recovered and not app.rebalancing,
                                    "rebalances": app.rebalancing_count, **pipeline.stats()}
            return self.json(body, status=200 if body["ready"] else 503)


def _local_page(pipeline: Pipeline, after: str, limit: int, as_of: int) -> list[dict[str, Any]]:
    """Up to limit + 1 summaries of the referrers this worker's partitions own, after `after`
    (one more than asked: it tells whether another page follows)."""
    uccs = []
    for key in pipeline.referrers:
        ucc = key.decode() if isinstance(key, bytes) else str(key)
        if ucc > after and not is_reserved(ucc):
            uccs.append(ucc)
    out = []
    for ucc in sorted(uccs)[:limit + 1]:
        state = _state(pipeline, ucc)
        if state is not None:
            out.append(summary_json(referrer.summary(state, as_of), as_of))
    return out


async def _other_pages(app: faust.App, pipeline: Pipeline, request: Request, after: str, limit: int,
                       as_of: int) -> list[dict[str, Any]] | None:
    """The same page from every other worker that owns referrer partitions; None if one does
    not answer (a page missing some referrers would look complete)."""
    me = str(app.conf.canonical_url).rstrip("/")
    hosts = {str(h).rstrip("/") for h, topics in app.router.table_metadata("referrers").items() if topics}
    hosts.discard(me)
    if not hosts:
        return []
    auth = request.headers.get("Authorization")
    headers = {"Authorization": auth} if auth else {}
    params = {"local": "1", "after": after, "limit": str(limit), "as_of": str(as_of)}
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        async def one(host: str) -> list[dict[str, Any]] | None:
            try:
                async with http.get(f"{host}/referrers", params=params, headers=headers) as resp:
                    if resp.status != 200:
                        return None
                    body: dict[str, Any] = await resp.json()
                    page: list[dict[str, Any]] = body["referrers"]
                    return page
            except (aiohttp.ClientError, TimeoutError, ValueError, KeyError):
                return None

        pages = await asyncio.gather(*(one(h) for h in sorted(hosts)))
    if any(p is None for p in pages):
        return None
    return [s for p in pages if p is not None for s in p]
