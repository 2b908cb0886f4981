"""`refstream worker [--web-port 6066]`: a Faust worker for one environment (docs/pipeline.md)."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import sys
import time
from pathlib import Path

import click

from refstream.commands import kafka_access
from refstream.commands.kafka_access import failure, loud_clients, quiet_clients
from refstream.settings import SettingsError
from schemas.rules import RulesError
from schemas.topics import DEFAULT_PARTITIONS, Topics

_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR,
                   errno.EEXIST, errno.EIO}
_STORAGE_TEXTS = ("No space left", "Disk quota", "Permission denied", "Read-only file system",
                  "Not a directory", "Input/output error")


def _data_dir_problem(data_dir: Path, exc: BaseException | None) -> str | None:
    """A message naming the folder and the fix when `exc` (or what caused it) is the
    filesystem refusing the worker's table files; None for anything else."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc)
        if (isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS) or any(
            t in text for t in _STORAGE_TEXTS
        ):
            return (
                f"The worker cannot write its table files in {data_dir} ({text[:200]}). Fix: free "
                "space on that disk or make the folder writable for this user (or point "
                "REFSTREAM_DATA_DIR at one that is), then start the worker again; it restores its "
                "tables from Kafka and resumes where it stopped committing."
            )
        exc = exc.__cause__ or exc.__context__
    return None


def _check_data_dir(data_dir: Path) -> None:
    """Refuse to start, naming the folder, unless table files can be written there."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        probe = data_dir / ".refstream-write-check"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        message = _data_dir_problem(data_dir, exc) or f"The worker cannot use {data_dir}: {exc}"
        raise click.ClickException(message) from None


def _partitions(bootstrap: str, topic: str) -> int | None:
    """The stripe-events topic's partition count (every stage is co-partitioned with it);
    None when the topic does not exist. Raises what the client raised when Kafka cannot be
    asked."""
    from aiokafka import AIOKafkaConsumer

    async def probe() -> int | None:
        timeout_s = kafka_access.TIMEOUT_S
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
        try:
            await asyncio.wait_for(consumer.start(), timeout_s)
            parts = consumer.partitions_for_topic(topic)
            if parts is None:
                await consumer._client.force_metadata_update()
                parts = consumer.partitions_for_topic(topic)
            return len(parts) if parts else None
        finally:
            await consumer.stop()

    quiet_clients()  # the one message below says what a failed connection means
    try:
        return asyncio.run(probe())
    finally:
        loud_clients()


def _use_uvloop() -> None:
    """Faust's loops (the main one and its consumer thread's) on libuv: the event loop's own
    share of the worker's CPU (callbacks, socket writes) is large, and uvloop's is smaller."""
    try:
        import uvloop
    except ImportError:  # plain asyncio works too, only slower
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.set_event_loop(asyncio.new_event_loop())


@click.command(name="worker")
@click.option("--web-port", default=6066, show_default=True, type=click.IntRange(1, 65535),
              help="Port of the web API (GET /referrers/{ucc}, /readyz) on 127.0.0.1.")
@click.option("--web-host", default="127.0.0.1", show_default=True,
              help="Address the web API binds and advertises to the other workers.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--topic-prefix", default="refstream", show_default=True, hidden=True,
              help="Topic name prefix (tests and benchmarks use a private one).")
def worker(web_port: int, web_host: str, log_level: str, topic_prefix: str) -> None:
    """Fold the environment's stripe-events into per-referrer tables and emit commands."""
    import dataclasses

    import faust

    from processors.agents import Pipeline
    from processors.app import DEFAULT_RULES, config_from_env, create_app, ensure_internal_topics

    try:
        cfg = config_from_env(web_port=web_port, topic_prefix=topic_prefix)
    except (SettingsError, RulesError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    stripe_events = Topics(env=cfg.settings.env, prefix=topic_prefix).stripe_events
    try:
        n = _partitions(cfg.settings.kafka_bootstrap, stripe_events)
    except Exception as exc:
        raise failure(cfg.settings.kafka_bootstrap, "The worker cannot start", exc) from None
    if n is None:
        raise click.ClickException(
            f"Kafka at {cfg.settings.kafka_bootstrap} has no topic {stripe_events}. Create the topics "
            f"(`refstream topics create`), or check REFSTREAM_ENV (now {cfg.settings.env!r}) and "
            "REFSTREAM_KAFKA_BOOTSTRAP."
        )
    # the review cases' topic came later than the others: a deployment whose topics were
    # created before it must create it before a case is published (the publisher would stall)
    review_cases = Topics(env=cfg.settings.env, prefix=topic_prefix).review_cases
    try:
        cases_partitions = _partitions(cfg.settings.kafka_bootstrap, review_cases)
    except Exception as exc:
        raise failure(cfg.settings.kafka_bootstrap, "The worker cannot start", exc) from None
    if cases_partitions is None:
        raise click.ClickException(
            f"Kafka at {cfg.settings.kafka_bootstrap} has no topic {review_cases}, where the worker keeps "
            "the review cases. Create it with `refstream topics create` (it adds the missing topics and "
            "leaves the others as they are)."
        )
    cfg = dataclasses.replace(cfg, partitions=n or DEFAULT_PARTITIONS, web_host=web_host)
    # the rules: the first revision in the control log (docs/rules.md#revisions); with none
    # yet, REFSTREAM_RULES is published as it
    from refstream import control_log

    rules_path = cfg.settings.rules_path or DEFAULT_RULES
    control_topic = Topics(env=cfg.settings.env, prefix=topic_prefix).control
    try:
        first = asyncio.run(control_log.ensure_first_revision(
            cfg.settings.kafka_bootstrap, control_topic, Path(rules_path).read_text(encoding="utf-8"),
            str(rules_path), int(time.time())))
    except RulesError as exc:
        raise click.ClickException(str(exc)) from exc
    except Exception as exc:
        raise failure(cfg.settings.kafka_bootstrap, "The worker cannot read its rules revisions",
                      exc) from None
    cfg = dataclasses.replace(cfg, first=first)
    _check_data_dir(cfg.data_dir)
    asyncio.run(ensure_internal_topics(cfg))
    _use_uvloop()
    app = create_app(cfg)
    pipeline = Pipeline(app, cfg)

    def stop_for_storage(exc: Exception) -> None:
        problem = _data_dir_problem(cfg.data_dir, exc)
        if problem:
            # faust's shutdown after an agent crash can hang (seen with a full disk), so stop
            # here: the batch's table values and offsets are not written, a restart replays
            # it exactly as after a kill -9 (tests/faults/test_worker_crashes.py)
            logging.disable(logging.CRITICAL)
            click.echo(f"Error: {problem}", err=True)
            sys.stderr.flush()
            os._exit(1)

    pipeline.on_storage_error = stop_for_storage
    logging_config = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "refstream.jsonlog.JsonFormatter"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json",
                                "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["stderr"], "level": log_level.upper()},
        "loggers": {"aiokafka": {"level": "WARNING"}, "faust": {"level": "WARNING"},
                    "mode": {"level": "WARNING"}},
    }
    logging.getLogger("refstream.worker").info(
        "starting", extra={"app_id": cfg.app_id, "partitions": cfg.partitions, "web_port": web_port,
                           "kafka": cfg.settings.kafka_bootstrap, "rules_revision": cfg.rules.revision}
    )
    runner = faust.Worker(app, loglevel=log_level.upper(), logging_config=logging_config, quiet=True,
                          redirect_stdouts=False)
    try:
        runner.execute_from_commandline()
    except (SystemExit, asyncio.CancelledError) as stopped:
        # a full or read-only disk under RocksDB crashes an agent: end with what to do about
        # it, not with the traceback faust logged (tests/faults/test_worker_data_dir.py)
        failed = not isinstance(stopped, SystemExit) or stopped.code not in (0, None)
        problem = failed and _data_dir_problem(
            cfg.data_dir, pipeline.storage_error or runner.crash_reason or app.crash_reason)
        if problem:
            # what is left to log (unclosed producers, destroyed tasks at exit) would bury it
            logging.disable(logging.CRITICAL)
            raise click.ClickException(problem) from None
        raise
