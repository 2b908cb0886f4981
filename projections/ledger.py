"""The log folded for an operator's question: what a payout run would pay now
(`refstream payouts run`'s preview) and a referrer's history (`refstream audit`).

Both fold the stripe-events and control logs exactly as `refstream replay` does by default
(the log's own rules revisions, in replay order), so they say what the workers hold.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from processors.rules.engine import Engine, revision_of
from projections.logsource import KafkaSource
from projections.replay import RuleSpec, _feed
from schemas import commands, control
from schemas.rules import RuleBook, load_rules
from schemas.topics import Topics

DEFAULT_RULES = Path(__file__).resolve().parent.parent / "examples" / "rules.toml"


def first_book(records: list[control.ControlRecord], rules_path: Path | None) -> RuleBook:
    """The log's first rules revision; with none yet (no worker has run), the file the
    worker would publish as it (REFSTREAM_RULES)."""
    for r in records:
        if isinstance(r, control.RulesRevision):
            return RuleBook([revision_of(r)])
    return RuleBook.of(load_rules(rules_path or DEFAULT_RULES))


def fold(bootstrap: str, topics: Topics, book: RuleBook,
         progress: Callable[[int], None] | None = None) -> Engine:
    """The whole log (to the end offsets of when it starts), folded like `refstream replay`."""
    src = KafkaSource(bootstrap, topics, headers=False)
    _, (engine,) = _feed(src, [RuleSpec(book, True, "the log's revisions")], progress)
    return engine


def preview(engine: Engine, run: control.PayoutRun) -> list[commands.PayoutCommand]:
    """What `run` pays if it takes effect after everything folded so far (the engine is
    changed: fold afresh for anything else)."""
    return [r.record for r in engine.feed_control_record(run) if isinstance(r.record, commands.PayoutCommand)]
