"""The control topic as operators' commands and the worker read it: rules revisions and
campaign assignments (docs/rules.md#revisions, docs/rules.md#campaigns).

The first rules revision in the log prices everything before the later ones; a worker that
finds none publishes `REFSTREAM_RULES` as the first (`ensure_first_revision`), and every
worker then reads back the same first one, whichever published it.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Iterable

from processors.rules.engine import revision_of
from schemas import control
from schemas.rules import RuleBook, RulesError

BOOTSTRAP_ACTOR = "refstream-worker"


def decoded(values: Iterable[bytes]) -> list[control.ControlRecord]:
    """The control records that decode, in log order (a bad one is the worker's dead letter)."""
    out: list[control.ControlRecord] = []
    for raw in values:
        try:
            out.append(control.decode(raw))
        except control.ControlDecodeError:
            continue
    return out


def revisions(records: Iterable[control.ControlRecord]) -> list[control.RulesRevision]:
    return [r for r in records if isinstance(r, control.RulesRevision)]


def book(records: Iterable[control.ControlRecord]) -> RuleBook | None:
    """Every revision in the log (what `refstream rules show` and replay use), or None."""
    revs = []
    for r in revisions(records):
        try:
            revs.append(revision_of(r))
        except RulesError:
            continue  # refused by `rules publish`; only a hand-written record can be bad
    return RuleBook(revs) if revs else None


def first_book(records: Iterable[control.ControlRecord]) -> RuleBook | None:
    """The first revision in the log, alone: what every worker starts from."""
    for r in revisions(records):
        try:
            return RuleBook([revision_of(r)])
        except RulesError:
            continue
    return None


def assignments(records: Iterable[control.ControlRecord]) -> dict[str, list[control.CampaignAssignment]]:
    out: dict[str, list[control.CampaignAssignment]] = {}
    for r in records:
        if isinstance(r, control.CampaignAssignment):
            out.setdefault(r.ucc, []).append(r)
    return out


def actor(given: str | None) -> str:
    """Who acts: `--actor`, else the OS user."""
    if given and given.strip():
        return given.strip()
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return os.environ.get("USER", "unknown")


async def read(bootstrap: str, topic: str, *, timeout_s: float = 30.0) -> list[control.ControlRecord]:
    from refstream.commands.review import read_to_end

    return decoded(v for _, v in await read_to_end(bootstrap, [topic], timeout_s=timeout_s))


async def ensure_first_revision(bootstrap: str, topic: str, rules_text: str, source: str,
                                published_at: int) -> RuleBook:
    """The first revision in the log; publishes `rules_text` as it when there is none."""
    from refstream.commands.payouts import append_control
    from schemas.rules import parse_rules

    found = first_book(await read(bootstrap, topic))
    if found is not None:
        return found
    rules = parse_rules(rules_text, source)  # a bad file stops the worker with its RulesError
    await append_control(bootstrap, topic, control.RulesRevision(
        rules.revision, 0, rules_text, published_at, BOOTSTRAP_ACTOR,
        f"no revision in the log: the first one, from {source}",
    ))
    found = first_book(await read(bootstrap, topic))
    assert found is not None, "the revision just published is not in the control topic"
    return found
