"""`refstream payouts run --as-of TS [--run-id ID]`: append a payout run (docs/cli.md#payouts-run)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import click
import orjson

from refstream.commands import kafka_access
from refstream.commands.kafka_access import NotWritten, Unconfirmed, failure, quiet_clients
from refstream.settings import Settings, SettingsError
from schemas import control
from schemas.topics import Topics


def parse_ts(text: str) -> int:
    """ISO 8601 with an offset, or Unix seconds (docs/cli.md#timestamps) → Unix seconds."""
    raw = text.strip()
    if raw.lstrip("-").isdigit():
        return int(raw)
    try:
        d = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not a timestamp. Use ISO 8601 with an offset, e.g. 2026-02-15T00:00:00+00:00, "
            "or Unix seconds, e.g. 1771113600."
        ) from None
    if d.tzinfo is None:
        example = raw if "T" in raw else f"{raw}T00:00:00"
        raise click.BadParameter(
            f"{text!r} has no UTC offset, so it could mean several instants. Add one, e.g. "
            f"{example}+00:00 (or Z)."
        )
    return int(d.timestamp())


def default_run_id(as_of: int) -> str:
    # derived from as_of alone, so running the same command twice pays nothing more
    return f"run-{as_of}"


async def append_control(bootstrap: str, topic: str, record: control.ControlRecord) -> tuple[int, int]:
    """Append one control record; (partition, offset). Raises NotWritten when the broker could
    not be reached or refused the record, and Unconfirmed when it did not answer the write."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError

    quiet_clients()
    timeout_s = kafka_access.TIMEOUT_S
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                                request_timeout_ms=int(timeout_s * 1000))
    try:
        try:
            await asyncio.wait_for(producer.start(), timeout_s)
        except Exception as exc:
            raise NotWritten() from exc
        try:
            meta = await asyncio.wait_for(producer.send_and_wait(topic, control.encode(record)), timeout_s)
        except (TimeoutError, KafkaTimeoutError, KafkaConnectionError) as exc:
            raise Unconfirmed() from exc  # it may have arrived before the answer was lost
        except Exception as exc:
            raise NotWritten() from exc  # the broker refused it
    finally:
        await producer.stop()
    return meta.partition, meta.offset


def settings_or_fail() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc


@click.group(name="payouts")
def payouts() -> None:
    """Payout runs on the control topic."""


@payouts.command(name="run")
@click.option("--as-of", "as_of", required=True, help="Pay entries payable by then: ISO 8601 with an offset, "
              "or Unix seconds.")
@click.option("--run-id", default=None, help="Idempotency key of the run [default: derived from --as-of].")
@click.option("--topic-prefix", default="refstream", hidden=True)
def run(as_of: str, run_id: str | None, topic_prefix: str) -> None:
    """Append a payout run; every worker pays what is payable as of TS."""
    at = parse_ts(as_of)
    settings = settings_or_fail()
    record = control.PayoutRun(run_id or default_run_id(at), at, int(time.time()))
    topic = Topics(settings.env, topic_prefix).control
    try:
        partition, offset = asyncio.run(append_control(settings.kafka_bootstrap, topic, record))
    except NotWritten as exc:
        raise failure(settings.kafka_bootstrap, f"The payout run {record.run_id!r} was not appended", exc,
                      after="Nothing is paid until it is.") from None
    except Unconfirmed as exc:
        raise failure(settings.kafka_bootstrap,
                      f"The payout run {record.run_id!r} may or may not have been appended", exc,
                      after="Running the same command again is safe: a run id pays once.") from None
    when = datetime.fromtimestamp(at, UTC).isoformat()
    click.echo(f"appended payout run {record.run_id!r} as of {when} to {topic} "
               f"(partition {partition}, offset {offset}):")
    click.echo(orjson.dumps(orjson.loads(control.encode(record)), option=orjson.OPT_SORT_KEYS).decode())
