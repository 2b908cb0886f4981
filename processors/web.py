"""The worker's web API: `GET /referrers/{ucc}` from the owning partition, and readiness.

Faust's `table_route` forwards a request for a key that another worker owns to that
worker (by its canonical URL), so any worker answers for any referrer. An optional bearer
token (REFSTREAM_WEB_TOKEN) guards both; the server binds 127.0.0.1 by default.
"""

from __future__ import annotations

import hmac
import time
from typing import TYPE_CHECKING, Any

import faust
from faust.web import Request, Response, View

if TYPE_CHECKING:
    from processors.agents import Pipeline


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


def install(app: faust.App, pipeline: Pipeline) -> None:
    @app.page("/referrers/{ucc}")
    class ReferrerView(View):
        @app.table_route(table=pipeline.referrers, match_info="ucc")
        async def get(self, request: Request, ucc: str) -> Response:
            if not _authorized(pipeline, request):
                return _unauthorized(self)
            as_of_raw = request.query.get("as_of")
            try:
                as_of = int(as_of_raw) if as_of_raw else int(time.time())
            except ValueError:
                return self.json({"error": f"as_of={as_of_raw!r} is not Unix seconds",
                                  "fix": "pass ?as_of=<Unix seconds>, or leave it out for now"}, status=400)
            summary = pipeline.summary(ucc, as_of)
            if summary is None:
                return self.json({"error": f"no referrer {ucc!r} (yet)",
                                  "fix": "check the ucc; a referrer appears with its first signup"},
                                 status=404)
            return self.json({**summary, "as_of": as_of})

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
