"""`refstream kafka up|down`: a local single-node (or small) Apache Kafka on 127.0.0.1."""

from __future__ import annotations

import contextlib
import signal
import time
from pathlib import Path

import click

from refstream import localkafka
from refstream.commands import refstream_command


def _data_dir(value: str | None) -> Path:
    return Path(value).resolve() if value else localkafka.default_data_dir()


@click.group(name="kafka")
def kafka() -> None:
    """A local Apache Kafka (KRaft) for development and tests."""


@kafka.command()
@click.option("--port", default=9092, show_default=True, help="Client port of the first node.")
@click.option("--data-dir", default=None, help="Storage folder [default: $REFSTREAM_DATA_DIR/kafka].")
@click.option("--brokers", default=1, show_default=True, type=click.IntRange(1, 5),
              help="Number of nodes (each broker+controller).")
@click.option("--detach", is_flag=True, help="Return once the broker is ready; leave it running.")
def up(port: int, data_dir: str | None, brokers: int, detach: bool) -> None:
    """Start the broker; returns (with --detach) once it accepts requests. A broker that
    already runs from the same data dir is left as it is."""
    cluster = localkafka.Cluster(_data_dir(data_dir), port=port, brokers=brokers)
    try:
        started = localkafka.start(cluster)
    except localkafka.KafkaError as exc:
        raise click.ClickException(str(exc)) from exc
    if not started:
        pids = ", ".join(str(pid) for pid in localkafka.running(cluster).values())
        click.echo(f"Kafka is already running at {cluster.bootstrap} (pid {pids}, data dir "
                   f"{cluster.data_dir}); left as it is.")
        if not detach:
            click.echo("This `up` did not start it, so it will not stop it either: "
                       f"`{refstream_command()} kafka down --data-dir {cluster.data_dir}` does.")
        return
    click.echo(f"Kafka {localkafka.KAFKA_VERSION} is ready at {cluster.bootstrap}")
    for line in localkafka.describe(cluster):
        click.echo(f"  {line}")
    if detach:
        click.echo(f"Stop it with: {refstream_command()} kafka down --data-dir {cluster.data_dir}")
        return
    click.echo("Press Ctrl-C to stop it.")
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop)
    try:
        while not stop:
            if not set(started) & set(localkafka.running(cluster)):
                raise click.ClickException(
                    f"The broker stopped by itself; its log: {cluster.nodes[0].log_file}")
            time.sleep(0.5)
    finally:
        # only the nodes this `up` started: a node another `up` started keeps running
        localkafka.down(cluster.data_dir, only=started)
    with contextlib.suppress(OSError):  # a closed terminal must not keep it from stopping
        click.echo("Kafka stopped.")


@kafka.command()
@click.option("--data-dir", default=None, help="Storage folder given to `up`.")
def down(data_dir: str | None) -> None:
    """Stop the broker started from this data dir (and nothing else)."""
    folder = _data_dir(data_dir)
    stopped = localkafka.down(folder)
    if stopped:
        click.echo(f"Stopped node(s) {', '.join(map(str, stopped))} of {folder}.")
    else:
        click.echo(f"No broker of {folder} was running.")
