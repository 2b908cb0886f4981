"""`refstream`: the one operator command (docs/cli.md).

Each subcommand lives in its own module under `refstream/commands/`, so the command tree
reads like the table in docs/cli.md and each piece can change on its own.
"""

from __future__ import annotations

import errno
import importlib
import os
import sys
from typing import Any, NoReturn

import click

# what a shell reports for a program that a closed pipe stopped (128 + SIGPIPE), as for
# `yes | head -1`
CLOSED_PIPE_EXIT = 141

# (module under refstream.commands, attribute) in the order `--help` lists them
_COMMANDS = [
    ("kafka", "kafka"),
    ("topics", "topics"),
    ("ingest", "ingest"),
    ("worker", "worker"),
    ("deliver", "deliver"),
    ("payouts", "payouts"),
    ("ledger", "ledger"),
    ("audit", "audit"),
    ("review", "review"),
    ("rules", "rules"),
    ("referrers", "referrers"),
    ("replay", "replay"),
    ("export", "export"),
    ("demo", "demo"),
    ("console", "console"),
]


def _closed_pipe() -> NoReturn:
    """Whoever read our output has gone (`refstream export | head -1`): stop like a Unix
    tool, without a message (nobody is left to read it) and with status 141. Both streams
    point at /dev/null from here, so the interpreter's last flush has nothing to complain
    about either."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for stream in (sys.stdout, sys.stderr):
            try:
                fd = stream.fileno()
            except (AttributeError, OSError, ValueError):  # not a real file (tests' CliRunner)
                continue
            os.dup2(devnull, fd)
    finally:
        os.close(devnull)
    raise SystemExit(CLOSED_PIPE_EXIT)


def _closed(exc: OSError) -> bool:
    return isinstance(exc, BrokenPipeError) or exc.errno == errno.EPIPE


class _Refstream(click.Group):
    """The command group, plus one rule for every subcommand: a closed pipe on stdout or
    stderr ends the command quietly (click alone would exit 1, and output still buffered
    at exit would make the interpreter print a BrokenPipeError)."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:  # `--help` and `--version` print while the arguments are parsed
            return super().make_context(*args, **kwargs)
        except OSError as exc:
            if not _closed(exc):
                raise
            _closed_pipe()

    def invoke(self, ctx: click.Context) -> Any:
        try:
            result = super().invoke(ctx)
            sys.stdout.flush()  # here, where a closed pipe can still be handled
            return result
        except OSError as exc:
            if not _closed(exc):
                raise
            _closed_pipe()

    def main(self, *args: Any, **kwargs: Any) -> Any:
        try:
            try:
                return super().main(*args, **kwargs)
            finally:
                # a command that ended with SystemExit (an error, or exit 0) may have left
                # output in the buffer; so may click's own error message on stderr
                sys.stdout.flush()
                sys.stderr.flush()
        except OSError as exc:
            if not _closed(exc):
                raise
            _closed_pipe()


@click.group(cls=_Refstream, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="refstream")
def main() -> None:
    """refstream: Stripe webhooks in, referral rewards and payouts out."""


for _module, _attr in _COMMANDS:
    main.add_command(getattr(importlib.import_module(f"refstream.commands.{_module}"), _attr))
