"""`refstream export` (docs/replay.md): the stripe-events and control logs to JSONL(.gz).

Read-only against Kafka (no consumer group, no commits). The stored bytes are kept
exactly, so a signature re-verification or a re-parse later sees what Stripe sent.
"""

from __future__ import annotations

from pathlib import Path

import click

from refstream.commands.replay import open_source, ts_option


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
    bar = Progress(src, "export", progress)
    try:
        counts = export_to(
            src, out, src.topics,
            since_ms=None if since is None else since * 1000,
            until_ms=None if until is None else until * 1000,
            progress=bar,
        )
    except (SourceError, ExportError) as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(
            f"cannot write {out or 'stdout'}: {exc.strerror or exc}. Free some space or choose "
            f"another --out."
        ) from None
    finally:
        bar.close()
    click.echo(
        f"exported {counts.stripe_events:,} stripe events and {counts.control_events:,} control "
        f"events from {name}" + (f" to {out}" if out is not None else ""),
        err=True,
    )
