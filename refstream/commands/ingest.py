"""`refstream ingest [--host 127.0.0.1] [--port 8080]`: the webhook service (docs/ingest.md)."""

from __future__ import annotations

import asyncio
import gc
import logging
import socket

import click

from refstream.settings import ENVIRONMENTS, Settings, SettingsError

# Stripe waits at most a few seconds for an answer; a slow client gets no longer.
IDLE_TIMEOUT_S = 15.0


@click.command(name="ingest")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
@click.option("--reuse-port", is_flag=True,
              help="Set SO_REUSEPORT, so several ingest processes can share the port.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Ingest processes sharing the port (one core each); each has its own producer.")
@click.option("--topic-prefix", default="refstream", show_default=True, hidden=True,
              help="Topic name prefix (tests and benchmarks use a private one).")
@click.option("--linger-ms", default=5, show_default=True, type=click.IntRange(0, 100),
              help="How long the producer gathers records into one batch; larger batches cost "
                   "the broker less per webhook, at that much added latency.")
def ingest(host: str, port: int, reuse_port: bool, workers: int, topic_prefix: str, linger_ms: int) -> None:
    """Receive Stripe webhooks, verify them and write them to Kafka."""
    from ingest.app import create_app
    from ingest.log_lines import use_batched_stderr
    from ingest.producer import EventLog
    from ingest.server import serve
    from refstream import jsonlog

    jsonlog.configure()
    use_batched_stderr()
    # aiokafka logs every failed reconnect while a broker is down; our 503s say it once per request
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc
    enabled = [env for env in ENVIRONMENTS if settings.stripe_secrets.get(env)]
    if not enabled:
        demo_env = settings.data_dir / "demo.env"
        raise click.ClickException(
            "No Stripe signing secret is configured, so ingest would refuse every webhook. "
            "Set REFSTREAM_STRIPE_SECRETS_SANDBOX (and/or _PRODUCTION) to the endpoint's "
            "whsec_… secret, e.g. the one `stripe listen` prints."
            + (f" For the demo's secret, load {demo_env} first: set -a; . {demo_env}; set +a"
               if demo_env.exists() else "")
        )
    if workers > 1:
        from ingest.workers import run_workers

        _check_port_free(host, port)  # else the workers would quietly join whoever holds it
        worker_args = ["ingest", "--host", host, "--port", str(port), "--reuse-port", "--workers", "1",
                       "--topic-prefix", topic_prefix, "--linger-ms", str(linger_ms)]
        raise SystemExit(run_workers(workers, worker_args, stop_timeout_s=settings.produce_timeout_s + 5))
    event_log = EventLog(settings.kafka_bootstrap, timeout_s=settings.produce_timeout_s, linger_ms=linger_ms)
    app = create_app(settings, event_log, topic_prefix=topic_prefix)
    app.on_startup.append(_freeze_startup_objects)
    log = logging.getLogger("refstream.ingest")
    log.info(
        "listening",
        extra={"host": host, "port": port, "environments": enabled,
               "kafka": settings.kafka_bootstrap, "produce_timeout_s": settings.produce_timeout_s},
    )
    try:
        # as web.run_app, but aiohttp's own refusals are answered in ingest's JSON too
        serve(app, host=host, port=port, reuse_port=reuse_port,
              shutdown_timeout=settings.produce_timeout_s + 1,
              # a connection that sends no complete request (idle, or stalled inside
              # its headers) is closed after this; bodies have BODY_TIMEOUT_S
              keepalive_timeout=IDLE_TIMEOUT_S,
              loop=_event_loop())
    except OSError as exc:
        raise click.ClickException(
            f"Cannot listen on {host}:{port} ({exc.strerror}). Stop the program using it or "
            "choose another port with --port."
        ) from exc


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise click.ClickException(
                f"Cannot listen on {host}:{port} ({exc.strerror}). Stop the program using it or "
                "choose another port with --port."
            ) from exc


async def _freeze_startup_objects(app: object) -> None:
    # Everything imported and built at start-up (stripe's many classes, aiohttp, aiokafka)
    # lives as long as the process: moved out of the collector's reach, a full collection
    # under load scans only what requests left behind, so its pause stays short.
    gc.collect()
    gc.freeze()


def _event_loop() -> asyncio.AbstractEventLoop:
    # uvloop roughly halves the event loop's share of each request; plain asyncio otherwise
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
