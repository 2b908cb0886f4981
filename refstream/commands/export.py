"""`refstream export` (docs/replay.md): the stripe-events and control logs to JSONL(.gz).

Read-only against Kafka (no consumer group, no commits). The stored bytes are kept
exactly, so a signature re-verification or a re-parse later sees what Stripe sent.
"""

from __future__ import annotations

import errno
from pathlib import Path

import click

from refstream.commands.kafka_access import require
from refstream.commands.replay import open_source, ts_option

_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


def first_revision_record(bootstrap: str, topic: str) -> bytes | None:
    """The log's first rules revision as stored (docs/rules.md#revisions), or None."""
    import asyncio

    from refstream import control_log
    from schemas import control

    revisions = control_log.revisions(asyncio.run(control_log.read(bootstrap, topic)))
    return control.encode(revisions[0]) if revisions else None


@click.command(name="export")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False),
              help="File to write; gzip-compressed when it ends in .gz. Default: stdout.")
@click.option("--since", callback=ts_option, metavar="TS",
              help="Only records from TS on (inclusive; ISO 8601 with offset, or Unix seconds).")
@click.option("--until", callback=ts_option, metavar="TS", help="Only records before TS (exclusive).")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr (default: when stderr is a terminal).")
@click.option("--topic-prefix", default="refstream", show_default=True, hidden=True,
              help="Topic name prefix (tests and benchmarks use a private one).")
def export(
    out: Path | None, since: int | None, until: int | None, progress: bool | None, topic_prefix: str
) -> None:
    """Write the environment's stripe-events and control logs to JSONL, in replay order, one
    record per line with its partition, offset, timestamp, key, headers and exact value."""
    from projections.export import ExportError, export_to
    from projections.logsource import KafkaSource, SourceError
    from projections.replay import Progress

    if since is not None and until is not None and until <= since:
        raise click.BadParameter("--until must be later than --since.", param_hint="--until")
    src, name = open_source("kafka", topic_prefix)
    assert isinstance(src, KafkaSource)
    # before the first byte of output: with the broker down, stdout gets nothing at all
    require(src.bootstrap, "Cannot export the log")
    first = first_revision_record(src.bootstrap, src.topics.control)
    bar = Progress(src, "export", progress)
    try:
        counts = export_to(
            src, out, src.topics, first_revision=first,
            since_ms=None if since is None else since * 1000,
            until_ms=None if until is None else until * 1000,
            progress=bar,
        )
    except (SourceError, ExportError) as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        if isinstance(exc, BrokenPipeError):
            raise  # the reader went away (`| head`): the CLI ends quietly, this is no disk problem
        fix = ("Free some space on that disk, or choose another --out." if exc.errno in _DISK_FULL
               else "Choose another --out.")
        raise click.ClickException(f"cannot write {out or 'stdout'}: {exc.strerror or exc}. {fix}") from None
    finally:
        bar.close()
    click.echo(
        f"exported {counts.stripe_events:,} stripe events and {counts.control_events:,} control "
        f"events from {name}" + (f" to {out}" if out is not None else ""),
        err=True,
    )
