"""`refstream audit UCC`: a referrer's full history from the log (docs/cli.md#audit,
docs/rules.md#audit-trail). The worker's `GET /referrers/{ucc}/history` answers the same."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import click
import orjson

from refstream.commands.kafka_access import failure
from refstream.commands.payouts import _money, parse_ts, settings_or_fail
from schemas import control
from schemas.topics import Topics


def _when(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


@click.command(name="audit")
@click.argument("ucc")
@click.option("--as-of", "as_of", default=None, metavar="TS",
              help="What is payable as of TS [default: now]. ISO 8601 with an offset, or Unix seconds.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object, as the worker's /referrers/{ucc}/history answers.")
@click.option("--topic-prefix", default="refstream", hidden=True)
def audit(ucc: str, as_of: str | None, as_json: bool, topic_prefix: str) -> None:
    """Everything that happened to referrer UCC, in order: Stripe facts, rewards, reversals,
    cases and their decisions, adjustments, payouts and their outcomes, each with its source;
    the amounts add up to what the referrer is owed."""
    from processors.answers import history_json
    from processors.rules import referrer
    from projections import ledger

    at = parse_ts(as_of) if as_of is not None else int(time.time())
    settings = settings_or_fail()
    t = Topics(settings.env, topic_prefix)
    problem = f"Cannot read the history of {ucc}"
    try:
        records = asyncio_read(settings.kafka_bootstrap, t.control)
        engine = ledger.fold(settings.kafka_bootstrap, t, ledger.first_book(records, settings.rules_path))
    except Exception as exc:
        raise failure(settings.kafka_bootstrap, problem, exc) from None
    state = engine.referrers.get(ucc)
    if state is None:
        raise click.ClickException(
            f"there is no referrer {ucc!r} in the log of {settings.env} (yet): a referrer appears with its "
            "first signup or adjustment. Check the code, and REFSTREAM_ENV.")
    accounts = [r for r in records if isinstance(r, control.ReferrerAccount) and r.ucc == ucc]
    answer = history_json(state, at)
    if as_json:
        answer["accounts"] = [{"account": a.account, "kind": a.kind, "name": a.name, "set_at": a.set_at,
                               "actor": a.actor, "reason": a.reason} for a in accounts]
        click.echo(orjson.dumps(answer).decode())
        return
    summary = referrer.summary(state, at)
    n, cases = summary.referrals, summary.open_cases
    click.echo(f"referrer {ucc} ({settings.env}): {n} referral{'s' if n != 1 else ''}, "
               f"{cases} open case{'s' if cases != 1 else ''}")
    click.echo(f"{'time (UTC)':19}  {'what':18} {'amount':>13} {'owed after':>13}  {'referral':14} "
               "source / about")
    for line in answer["history"]:
        amount = line["amount"]
        shown = _money(amount["amount"], amount["currency"]) if amount and amount["amount"] else ""
        after = _money(line["balance"]["amount"], line["balance"]["currency"]) if line["balance"] else ""
        about = " ".join(x for x in (line["ref"] or "", line["note"]) if x)
        click.echo(f"{_when(line['at']):19}  {line['kind']:18} {shown:>13} {after:>13}  "
                   f"{line['referral_id'] or '-':14} {line['source_event_id']}"
                   + (f"  ({about})" if about else ""))
    for currency, f in summary.currencies.items():
        click.echo(f"{currency}: earned {_money(f.earned, currency)}, "
                   f"reversed {_money(f.reversed, currency)}, net {_money(f.net, currency)}, "
                   f"paid {_money(f.paid, currency)}: owed "
                   f"{_money(f.net - f.paid, currency)}, of it payable as of {_when(at)} UTC "
                   f"{_money(f.payable, currency)}")
    for a in accounts:
        click.echo(f"payout account ({a.kind}) {a.account}" + (f" ({a.name})" if a.name else "")
                   + f", set {_when(a.set_at)} UTC by {a.actor}: {a.reason}")


def asyncio_read(bootstrap: str, topic: str) -> list[control.ControlRecord]:
    import asyncio

    from refstream import control_log

    return asyncio.run(control_log.read(bootstrap, topic))
