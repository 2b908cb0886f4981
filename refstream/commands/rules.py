"""`refstream rules check FILE`: validate a rules file before using it.

Keys, defaults and limits: docs/rules.md#the-rules-file.
"""

from __future__ import annotations

from typing import Any

import click

from schemas.rules import Rules, RulesError, load_rules

RULES_DOC = "docs/rules.md#the-rules-file"


def describe(rules: Rules) -> str:
    """One line an operator can read back: what the file will do."""
    parts = [
        f"revision {rules.revision}",
        f"{rules.reward_percent}% for {rules.reward_months} months",
        f"signup bonus in {rules.currency}",
        f"hold {rules.hold_days} days",
        f"late attribution {rules.late_attribution_days} days",
        f"organization level {'on' if rules.organization_level else 'off'}",
        f"one-off charges {'rewarded' if rules.reward_one_off_charges else 'not rewarded'}",
    ]
    currencies = ", ".join(sorted(rules.currencies)) or "none (every invoice opens a review case)"
    return "ok: " + ", ".join(parts) + f"; currencies: {currencies}; fraud signals: {fraud_signals(rules)}"


def fraud_signals(rules: Rules) -> str:
    """What the campaign's fraud signals hold for review (docs/rules.md#fraud-signals)."""
    card, day = rules.max_referrals_per_card, rules.max_signups_per_day
    return ", ".join([
        f"self-referral {'on' if rules.self_referral_check else 'off'}",
        f"shared card above {card} referral{'s' if card != 1 else ''}" if card else "shared card off",
        f"velocity above {day} signup{'s' if day != 1 else ''} a day" if day else "velocity off",
    ])


@click.group(name="rules")
def rules() -> None:
    """Reward rules files.

    Keys, defaults and limits: docs/rules.md#the-rules-file.
    """


@rules.command(name="check")
@click.argument("file", type=click.Path(dir_okay=False, path_type=str))
def check(file: str) -> None:
    """Validate FILE; explain the first mistake with its line and field.

    Keys, defaults and limits: docs/rules.md#the-rules-file.
    """
    try:
        loaded = load_rules(file)
    except RulesError as exc:
        click.echo(f"error: {exc}", err=True)
        if exc.line is not None or exc.field is not None:  # a mistake in the text, not an unreadable file
            click.echo(f"Keys, defaults and limits: {RULES_DOC}", err=True)
        raise SystemExit(1) from None
    click.echo(describe(loaded))


# --- revisions in the control log (docs/rules.md#revisions) --------------------------------

DEFAULT_MARGIN_S = 3600
MARGIN_ENV = "REFSTREAM_RULES_MARGIN_S"


def _iso(t: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def _control_records(topic_prefix: str) -> tuple[Any, str, list[Any]]:
    """Settings, the control topic and its records; one clear message when Kafka is away."""
    import asyncio

    from refstream import control_log
    from refstream.commands.kafka_access import Stalled, failure
    from refstream.commands.payouts import settings_or_fail
    from schemas.topics import Topics

    settings = settings_or_fail()
    topic = Topics(settings.env, topic_prefix).control
    try:
        records = asyncio.run(control_log.read(settings.kafka_bootstrap, topic))
    except (Stalled, Exception) as exc:
        raise failure(settings.kafka_bootstrap, "Cannot read the rules revisions", exc) from None
    return settings, topic, records


def _margin(given: int | None) -> int:
    import os

    if given is not None:
        return given
    raw = os.environ.get(MARGIN_ENV, "").strip()
    if not raw:
        return DEFAULT_MARGIN_S
    if not raw.isdigit():
        raise click.ClickException(f"{MARGIN_ENV}={raw!r} is not a number of seconds. Set it to e.g. 3600, "
                                   f"or unset it for the default of {DEFAULT_MARGIN_S}.")
    return int(raw)


@rules.command(name="publish")
@click.argument("file", type=click.Path(dir_okay=False, path_type=str))
@click.option("--effective-from", "effective_from", required=True,
              help="When the revision starts to price events: ISO 8601 with an offset, or Unix seconds.")
@click.option("--reason", required=True, help="Why the terms change (kept with the revision).")
@click.option("--actor", default=None, help="Who publishes it [default: the OS user].")
@click.option("--margin", "margin_s", type=click.IntRange(min=0), default=None,
              help=f"Seconds effective-from must lie ahead of now [default: ${MARGIN_ENV} or "
                   f"{DEFAULT_MARGIN_S}].")
@click.option("--topic-prefix", default="refstream", hidden=True)
def publish(file: str, effective_from: str, reason: str, actor: str | None, margin_s: int | None,
            topic_prefix: str) -> None:
    """Check FILE as `rules check` does and append it to the control topic as a revision
    that prices every event from --effective-from on.

    Past events are never re-priced live: --effective-from must lie at least the margin
    ahead of now. To see what the change would have done, replay the log with
    `refstream replay --rules FILE --effective-from TS --compare log`
    (docs/rules.md#revisions).
    """
    import asyncio
    import time

    from refstream import control_log
    from refstream.commands.kafka_access import NotWritten, Unconfirmed, failure
    from refstream.commands.payouts import append_control, parse_ts
    from schemas import control

    try:
        loaded = load_rules(file)
    except RulesError as exc:
        click.echo(f"error: {exc}", err=True)
        if exc.line is not None or exc.field is not None:
            click.echo(f"Keys, defaults and limits: {RULES_DOC}", err=True)
        raise SystemExit(1) from None
    start = parse_ts(effective_from)
    now = int(time.time())
    margin = _margin(margin_s)
    if start < now + margin:
        raise click.ClickException(
            f"--effective-from {_iso(start)} is earlier than now + {margin} s ({_iso(now + margin)}): "
            f"a revision never re-prices what has happened or may be on its way. Choose a later "
            f"time; to see what it would have done, run `refstream replay --rules {file} "
            f"--effective-from {effective_from} --compare log`.")
    settings, topic, records = _control_records(topic_prefix)
    published = control_log.revisions(records)
    latest = max((r.revision for r in published), default=None)
    if latest is not None and loaded.revision <= latest:
        raise click.ClickException(
            f"{file} is revision {loaded.revision}, but revision {latest} is already published: a new "
            f"revision must be greater. Set `revision = {latest + 1}` in [campaign] and publish again.")
    text = open(file, encoding="utf-8").read()  # noqa: SIM115 (checked just above: it reads)
    record = control.RulesRevision(loaded.revision, start, text, now, control_log.actor(actor), reason)
    try:
        _, offset = asyncio.run(append_control(settings.kafka_bootstrap, topic, record))
    except NotWritten as exc:
        raise failure(settings.kafka_bootstrap, f"Revision {loaded.revision} was not published", exc,
                      after="The rules in force are unchanged.") from None
    except Unconfirmed as exc:
        raise failure(settings.kafka_bootstrap, f"Revision {loaded.revision} may or may not have been "
                      f"published", exc, after="Check with `refstream rules history` before trying "
                      "again.") from None
    click.echo(f"published revision {loaded.revision}, in force from {_iso(start)}, to {topic} "
               f"(offset {offset}); {describe(loaded).removeprefix('ok: ')}")


@rules.command(name="history")
@click.option("--topic-prefix", default="refstream", hidden=True)
def history(topic_prefix: str) -> None:
    """List the published revisions, oldest first."""
    from refstream import control_log

    _, _, records = _control_records(topic_prefix)
    published = control_log.revisions(records)
    if not published:
        click.echo("no revision published yet (a worker publishes REFSTREAM_RULES as the first when it "
                   "starts)")
        return
    click.echo(f"{'revision':>8}  {'in force from':<20}  {'published':<20}  actor / reason")
    for r in published:
        click.echo(f"{r.revision:>8}  {_iso(r.effective_from):<20}  {_iso(r.published_at):<20}  "
                   f"{r.actor}: {r.reason}")


@rules.command(name="show")
@click.option("--at", "at", default=None, help="The moment to look at: ISO 8601 with an offset, or Unix "
              "seconds [default: now].")
@click.option("--topic-prefix", default="refstream", hidden=True)
def show(at: str | None, topic_prefix: str) -> None:
    """Print the rules file in force at a moment (default now)."""
    import time

    from refstream import control_log
    from refstream.commands.payouts import parse_ts

    moment = parse_ts(at) if at else int(time.time())
    _, _, records = _control_records(topic_prefix)
    published = control_log.revisions(records)
    book = control_log.book(records)
    if book is None:
        raise click.ClickException("no revision is published yet: nothing is in force. A worker publishes "
                                   "REFSTREAM_RULES as the first when it starts, or run `refstream rules "
                                   "publish`.")
    rules_at = book.at(moment)
    rev = next(r for r in reversed(published) if r.revision == rules_at.revision)
    click.echo(f"# revision {rev.revision}, in force at {_iso(moment)} (from {_iso(rev.effective_from)}); "
               f"published {_iso(rev.published_at)} by {rev.actor}: {rev.reason}")
    click.echo(rev.rules.rstrip("\n"))
