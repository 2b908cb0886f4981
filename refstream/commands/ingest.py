"""`refstream ingest` (SPEC §13). Not built yet."""

from __future__ import annotations

import click


@click.command(name="ingest", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def ingest(args: tuple[str, ...]) -> None:
    """Not built yet."""
    raise click.ClickException("`refstream ingest` is not built yet in this version.")
