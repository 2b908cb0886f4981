"""`refstream deliver` (the outbound webhook service) and `refstream deliver status`
(docs/cli.md#deliver). The delivery itself is projections/deliver.py."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
import signal
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import click
import orjson

from refstream.commands import kafka_access, refstream_command
from refstream.commands.kafka_access import failure, quiet_clients
from refstream.commands.payouts import settings_or_fail
from schemas.topics import Topics

URL_VAR = "REFSTREAM_DELIVERY_URL"
SECRET_VAR = "REFSTREAM_DELIVERY_SECRET"
MIN_SECRET_CHARS = 16
DEFAULT_PORT = 6070
GENERATE = 'python3 -c "import secrets; print(secrets.token_hex(32))"'

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


class Duration(click.ParamType):
    """Seconds, or a number with a unit: 250ms, 30s, 15m, 12h, 3d."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, int | float):
            return float(value)
        m = _DURATION.match(str(value))
        if not m or float(m.group(1)) <= 0:
            self.fail(f"{value!r} is not a duration. Use seconds (e.g. 30) or a number with a unit: "
                      "250ms, 30s, 15m, 12h, 3d.", param, ctx)
        return float(m.group(1)) * _UNITS[m.group(2)]


def delivery_settings() -> tuple[str, tuple[str, ...]]:
    """The endpoint and the signing secrets (newest first) from the environment; a
    ClickException naming the variable and the fix when one is missing or unusable."""
    url = os.environ.get(URL_VAR, "").strip()
    if not url:
        raise click.ClickException(
            f"{URL_VAR} is not set: `refstream deliver` needs the endpoint to POST the records to. "
            f"Set it to your receiver's URL, e.g. {URL_VAR}=https://partners.example.com/refstream "
            "(one per environment: each `refstream deliver` serves REFSTREAM_ENV's).")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise click.ClickException(
            f"{URL_VAR}={_shown(url)!r} is not an http(s) URL with a host. Set it to e.g. "
            "https://partners.example.com/refstream.")
    raw = os.environ.get(SECRET_VAR, "")
    secrets = tuple(s.strip() for s in raw.split(",") if s.strip())
    if not secrets:
        raise click.ClickException(
            f"{SECRET_VAR} is not set: every delivery is signed with it, and the receiver checks the "
            f"signature with the same secret. Generate one (`{GENERATE}`), set it here and give it to "
            "the receiver. During a rotation list both, newest first, separated by a comma.")
    for i, s in enumerate(secrets, start=1):
        if len(s) < MIN_SECRET_CHARS or any(c.isspace() for c in s):
            raise click.ClickException(
                f"secret {i} of {SECRET_VAR} is too weak to sign with: use at least {MIN_SECRET_CHARS} "
                f"characters without spaces, e.g. what `{GENERATE}` prints.")
    return url, secrets


def _shown(url: str) -> str:
    from projections.deliver import redacted

    return redacted(url)


async def _missing_topics(bootstrap: str, names: list[str]) -> list[str]:
    from aiokafka import AIOKafkaConsumer

    timeout_s = kafka_access.TIMEOUT_S
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    try:
        await asyncio.wait_for(consumer.start(), timeout_s)
        await consumer._client.force_metadata_update()
        return [n for n in names if not consumer.partitions_for_topic(n)]
    finally:
        await consumer.stop()


def _web_token() -> str | None:
    return os.environ.get("REFSTREAM_WEB_TOKEN", "").strip() or None


@click.group(name="deliver", invoke_without_command=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address of /metrics and /status.")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(1, 65535),
              help="Port of /metrics and /status.")
@click.option("--max-age", default="3d", show_default=True, type=Duration(),
              help="Retry a record until it is this old (from when it was written), then dead-letter it.")
@click.option("--timeout", "timeout_s", default="10s", show_default=True, type=Duration(),
              help="How long to wait for the endpoint's answer.")
@click.option("--retry-first", default="1s", show_default=True, type=Duration(),
              help="Pause before the first retry; it doubles with each failure.")
@click.option("--retry-max", default="1h", show_default=True, type=Duration(),
              help="Longest pause between two tries.")
@click.option("--concurrency", default=16, show_default=True, type=click.IntRange(1, 256),
              help="Requests in flight at most (one per referrer at a time).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--topic-prefix", default="refstream", hidden=True)
@click.option("--session-timeout", default="10s", type=Duration(), hidden=True,
              help="How soon the group hands a dead deliverer's partitions to another (tests).")
@click.pass_context
def deliver(ctx: click.Context, host: str, port: int, max_age: float, timeout_s: float, retry_first: float,
            retry_max: float, concurrency: int, log_level: str, topic_prefix: str,
            session_timeout: float) -> None:
    """POST the environment's notifications, payouts and review cases to REFSTREAM_DELIVERY_URL,
    signed, at least once, in order per referrer (docs/cli.md#deliver)."""
    if ctx.invoked_subcommand is not None:
        return
    from projections.deliver import DeliveryConfig

    settings = settings_or_fail()
    url, secrets = delivery_settings()
    topics = Topics(settings.env, topic_prefix)
    cfg = DeliveryConfig(url, secrets, topics, max_age_s=max_age, timeout_s=timeout_s,
                         retry_first_s=retry_first, retry_max_s=retry_max, concurrency=concurrency,
                         session_timeout_s=session_timeout)
    quiet_clients()
    needed = [*cfg.kinds, topics.delivery_dead_letters]
    try:
        missing = asyncio.run(_missing_topics(settings.kafka_bootstrap, needed))
    except Exception as exc:
        raise failure(settings.kafka_bootstrap, "The deliver service cannot start", exc) from None
    if missing:
        raise click.ClickException(
            f"Kafka at {settings.kafka_bootstrap} has no topic {', '.join(missing)}. Create it with "
            f"`{refstream_command()} topics create` (it adds the missing topics and leaves the others as "
            f"they are), or check REFSTREAM_ENV (now {settings.env!r}) and REFSTREAM_KAFKA_BOOTSTRAP.")
    kafka_access.loud_clients()
    from refstream import jsonlog

    jsonlog.configure(getattr(logging, log_level.upper()))
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    try:
        asyncio.run(_serve(cfg, settings.kafka_bootstrap, host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise click.ClickException(
                f"Port {port} on {host} is in use, so /metrics and /status cannot be served. Stop what "
                f"listens there or pick another with --port.") from None
        raise


async def _serve(cfg: Any, bootstrap: str, host: str, port: int) -> None:
    from aiohttp import web

    from projections.deliver import Deliverer, redacted

    d = Deliverer(cfg, bootstrap)
    token = _web_token()

    def authorized(request: web.Request) -> bool:
        import hmac

        if token is None:
            return True
        given = request.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())

    def refuse() -> web.Response:
        return web.json_response({"error": "missing or wrong bearer token",
                                  "fix": "send `Authorization: Bearer <REFSTREAM_WEB_TOKEN>`"}, status=401)

    async def metrics(request: web.Request) -> web.Response:
        if not authorized(request):
            return refuse()
        return web.Response(text=metrics_text(d), content_type="text/plain")

    async def status(request: web.Request) -> web.Response:
        if not authorized(request):
            return refuse()
        return web.Response(body=orjson.dumps(d.status()), content_type="application/json")

    async def ready(request: web.Request) -> web.Response:
        if not authorized(request):
            return refuse()
        ok = d.ready.is_set()
        return web.json_response({"ready": ok}, status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/status", status)
    app.router.add_get("/readyz", ready)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, d.stopping.set)
    logging.getLogger("refstream.deliver").info("starting", extra={
        "env": cfg.topics.env, "url": redacted(cfg.url), "group": cfg.group_id, "port": port,
        "max_age_s": cfg.max_age_s, "secrets": len(cfg.secrets)})
    try:
        await d.run()
    finally:
        await runner.cleanup()
        logging.getLogger("refstream.deliver").info("stopped", extra=d.status() | {"retrying": None,
                                                                                   "recent_errors": None})


def metrics_text(d: Any) -> str:
    """Prometheus text: delivered, retried and dead-lettered records by kind, and the lag."""
    s = d.stats
    lines: list[str] = []

    def counter(name: str, help_: str, values: dict[str, int]) -> None:
        lines.extend([f"# HELP {name} {help_}", f"# TYPE {name} counter"])
        for kind in ("notification", "payout", "review_case"):
            lines.append(f'{name}{{kind="{kind}"}} {values.get(kind, 0)}')

    counter("refstream_deliver_delivered_total", "Records the endpoint accepted (2xx).", s.delivered)
    counter("refstream_deliver_retries_total", "Failed tries that were retried.", s.retried)
    counter("refstream_deliver_dead_letters_total",
            "Records given up on at their maximum age, set aside on the delivery dead-letter topic.",
            s.dead_lettered)
    lines.extend(["# HELP refstream_deliver_lag_records Records read or waiting in Kafka that are not "
                  "delivered or dead-lettered yet.", "# TYPE refstream_deliver_lag_records gauge"])
    lag = d.lag()
    for topic in d.cfg.kinds:
        lines.append(f'refstream_deliver_lag_records{{topic="{topic}"}} {lag.get(topic, 0)}')
    lines.extend(["# HELP refstream_deliver_retrying_records Referrers whose next record is being retried.",
                  "# TYPE refstream_deliver_retrying_records gauge",
                  f"refstream_deliver_retrying_records {len(d.retrying())}"])
    return "\n".join(lines) + "\n"


# --- status --------------------------------------------------------------------------------


async def kafka_status(bootstrap: str, topics: Topics, group: str, last: int) -> dict[str, Any]:
    """What Kafka says, whether or not the service runs: per output topic the records after the
    group's committed offsets, and the last dead letters."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    timeout_s = kafka_access.TIMEOUT_S
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed",
                                enable_auto_commit=False, request_timeout_ms=int(timeout_s * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        await asyncio.wait_for(consumer.start(), timeout_s)
        await consumer._client.force_metadata_update()
        committed = await admin.list_consumer_group_offsets(group)
        outputs = [topics.notifications, topics.payouts, topics.reviews]
        tps = [TopicPartition(t, p) for t in outputs for p in sorted(consumer.partitions_for_topic(t) or ())]
        ends = await consumer.end_offsets(tps) if tps else {}
        lag: dict[str, int] = {t: 0 for t in outputs}
        for tp, end in ends.items():
            meta = committed.get(tp)
            lag[tp.topic] += end - (meta.offset if meta is not None and meta.offset >= 0 else 0)
        dead: list[dict[str, Any]] = []
        dl = [TopicPartition(topics.delivery_dead_letters, p)
              for p in sorted(consumer.partitions_for_topic(topics.delivery_dead_letters) or ())]
        total = 0
        if dl:
            dl_ends = await consumer.end_offsets(dl)
            total = sum(dl_ends.values())
            consumer.assign(dl)
            for tp in dl:
                consumer.seek(tp, max(0, dl_ends[tp] - last))
            pending = {tp for tp in dl if dl_ends[tp] > 0}
            deadline = time.monotonic() + 30
            while pending and time.monotonic() < deadline:
                batch = await consumer.getmany(*pending, timeout_ms=200)
                for msgs in batch.values():
                    for m in msgs:
                        headers = {k: v.decode(errors="replace") for k, v in (m.headers or ())}
                        try:
                            rid = str(orjson.loads(m.value).get("id", ""))
                        except (orjson.JSONDecodeError, AttributeError, TypeError):
                            rid = ""
                        dead.append({"at": m.timestamp // 1000, "id": rid,
                                     "ucc": (m.key or b"").decode(errors="replace"),
                                     "source": headers.get("refstream-source", ""),
                                     "attempts": int(headers.get("refstream-attempts", "0") or 0),
                                     "error": headers.get("refstream-error", "")})
                for tp in list(pending):
                    if await consumer.position(tp) >= dl_ends[tp]:
                        pending.discard(tp)
        dead.sort(key=lambda r: r["at"])
        return {"lag": lag, "group_started": bool(committed), "dead_letters": total,
                "last_dead_letters": dead[-last:]}
    finally:
        await consumer.stop()
        await admin.close()


async def service_status(url: str) -> dict[str, Any]:
    import aiohttp

    token = _web_token()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http, \
            http.get(url.rstrip("/") + "/status", headers=headers) as resp:
        if resp.status != 200:
            raise RuntimeError(f"answered {resp.status}")
        doc: dict[str, Any] = await resp.json(content_type=None)
        return doc


def _when(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


@deliver.command(name="status")
@click.option("--url", default=f"http://127.0.0.1:{DEFAULT_PORT}", show_default=True,
              help="Where the deliver service answers /status.")
@click.option("--last", default=10, show_default=True, type=click.IntRange(1, 1000),
              help="How many of the latest dead letters to show.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.option("--topic-prefix", default="refstream", hidden=True)
def status(url: str, last: int, as_json: bool, topic_prefix: str) -> None:
    """The lag, the records being retried with their last errors, and the latest dead letters."""
    from projections.deliver import DeliveryConfig

    settings = settings_or_fail()
    topics = Topics(settings.env, topic_prefix)
    group = DeliveryConfig("", (), topics).group_id
    quiet_clients()
    try:
        from_kafka = asyncio.run(kafka_status(settings.kafka_bootstrap, topics, group, last))
    except Exception as exc:
        raise failure(settings.kafka_bootstrap, "Cannot read the delivery status", exc) from None
    service: dict[str, Any] | None
    problem = ""
    try:
        service = asyncio.run(service_status(url))
    except Exception as exc:  # not running, or elsewhere: Kafka's view still stands
        service, problem = None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if as_json:
        click.echo(orjson.dumps({"env": settings.env, "group": group, **from_kafka,
                                 "service": service, "service_error": problem or None},
                                option=orjson.OPT_SORT_KEYS).decode())
        return
    if service is not None:
        click.echo(f"deliver ({settings.env}) → {service['url']}: running, "
                   f"{service['delivered']} delivered, {service['retried']} retried, "
                   f"{service['dead_lettered']} dead-lettered since it started")
    else:
        click.echo(f"deliver ({settings.env}): no answer from {url} ({problem}); lag and dead letters "
                   "below are from Kafka. Start it with `refstream deliver` (or pass its --url).")
    if not from_kafka["group_started"]:
        click.echo(f"consumer group {group} has committed nothing yet: every record is still to deliver")
    click.echo("lag (records not yet delivered or dead-lettered):")
    for topic, n in from_kafka["lag"].items():
        click.echo(f"  {topic:50} {n:>8}")
    if service is not None:
        retrying = service["retrying"]
        click.echo(f"retrying now: {len(retrying)}")
        for r in retrying:
            click.echo(f"  {r['id']}  {r['ucc']}  attempt {r['attempts']}, "
                       f"next {_when(r['next_attempt_at'])} UTC, gives up {_when(r['gives_up_at'])} UTC: "
                       f"{r['last_error']}")
        if service["recent_errors"]:
            click.echo("last errors:")
            for e in service["recent_errors"][-last:]:
                click.echo(f"  {_when(e['at'])}  {e['id']}  {e['ucc']}  attempt {e['attempt']}: {e['error']}")
    n = from_kafka["dead_letters"]
    click.echo(f"dead letters on {topics.delivery_dead_letters}: {n}")
    for r in from_kafka["last_dead_letters"]:
        click.echo(f"  {_when(r['at'])}  {r['id']}  {r['ucc']}  after {r['attempts']} tries: {r['error']}")
