"""`refstream console [--port 8090]`: the operator console, a web page (docs/console.md).

The app itself lives in `refstream/console/`; this is its command line.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal

import click

from refstream.commands.payouts import settings_or_fail


@click.command(name="console")
@click.option("--port", default=8090, show_default=True, type=click.IntRange(1, 65535),
              help="Port to serve the console on.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Keep 127.0.0.1 unless a TLS proxy in front of it serves other hosts.")
@click.option("--worker-url", "worker_urls", multiple=True, metavar="URL",
              help="A worker's web API, for its health (repeat for each worker) [default: http://127.0.0.1:6066].")
@click.option("--ingest-url", default="http://127.0.0.1:8080", show_default=True, metavar="URL",
              help="Ingest's address, for its health; an empty value leaves it out.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
@click.option("--topic-prefix", default="refstream", hidden=True)
def console(port: int, host: str, worker_urls: tuple[str, ...], ingest_url: str, log_level: str,
            topic_prefix: str) -> None:
    """Serve the operator console: overview, referrers, review queue, payouts and rules.

    Sign-in takes REFSTREAM_CONSOLE_TOKEN; every payout run and review decision made
    there is a control record naming the signed-in person. See docs/console.md.
    """
    from aiohttp import web

    from refstream import jsonlog
    from refstream.console.app import make_app
    from refstream.console.security import TokenError, check_token
    from refstream.console.sources import Config
    from schemas.topics import Topics

    settings = settings_or_fail()
    try:
        token = check_token(os.environ.get("REFSTREAM_CONSOLE_TOKEN"))
    except TokenError as exc:
        raise click.ClickException(str(exc)) from None
    jsonlog.configure(getattr(logging, log_level.upper()))
    cfg = Config(
        bootstrap=settings.kafka_bootstrap, topics=Topics(settings.env, topic_prefix),
        worker_urls=tuple(u.rstrip("/") for u in worker_urls) or ("http://127.0.0.1:6066",),
        ingest_url=ingest_url.rstrip("/") or None,
        web_token=os.environ.get("REFSTREAM_WEB_TOKEN", "").strip() or None,
    )
    app = make_app(cfg, token)
    log = logging.getLogger("refstream.console")

    async def serve() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            try:
                await site.start()
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise click.ClickException(
                        f"Port {port} on {host} is in use (another console?). Stop what uses it, or choose "
                        f"another with --port.") from None
                raise click.ClickException(
                    f"Cannot listen on {host}:{port}: {exc.strerror or exc}.") from None
            log.info("console listening", extra={"url": f"http://{host}:{port}/", "env": settings.env,
                                                  "kafka": settings.kafka_bootstrap})
            if host not in ("127.0.0.1", "::1", "localhost"):
                log.warning("the console speaks plain HTTP: serve it to other hosts only through a TLS proxy",
                            extra={"host": host})
            click.echo(f"refstream console ({settings.env}) on http://{host}:{port}/ — Ctrl-C stops it",
                       err=True)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
        finally:
            await runner.cleanup()

    asyncio.run(serve())
