"""`refstream`: the one operator command (docs/cli.md).

Each subcommand lives in its own module under `refstream/commands/`, so the command tree
reads like the table in docs/cli.md and each piece can change on its own.
"""

from __future__ import annotations

import importlib

import click

# (module under refstream.commands, attribute) in the order `--help` lists them
_COMMANDS = [
    ("kafka", "kafka"),
    ("topics", "topics"),
    ("ingest", "ingest"),
    ("worker", "worker"),
    ("payouts", "payouts"),
    ("review", "review"),
    ("rules", "rules"),
    ("replay", "replay"),
    ("export", "export"),
    ("demo", "demo"),
]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="refstream")
def main() -> None:
    """refstream: Stripe webhooks in, referral rewards and payouts out."""


for _module, _attr in _COMMANDS:
    main.add_command(getattr(importlib.import_module(f"refstream.commands.{_module}"), _attr))
