"""`refstream referrers …`: control events about one referrer (docs/cli.md#referrers):
campaign assignments, payout accounts and links to their own Stripe customer."""

from __future__ import annotations

import asyncio
import re
import time

import click

from refstream import control_log
from refstream.commands.kafka_access import NotWritten, Unconfirmed, failure
from refstream.commands.payouts import append_control, settings_or_fail
from refstream.commands.rules import _control_records
from schemas import control
from schemas.rules import DEFAULT_CAMPAIGN
from schemas.topics import Topics


@click.group(name="referrers")
def referrers() -> None:
    """Control events about one referrer."""


@referrers.command(name="assign")
@click.argument("ucc")
@click.option("--campaign", required=True, help="A campaign of the rules in force ([campaigns.<name>]), "
              f"or {DEFAULT_CAMPAIGN!r}.")
@click.option("--reason", required=True, help="Why (kept with the assignment).")
@click.option("--actor", default=None, help="Who assigns [default: the OS user].")
@click.option("--topic-prefix", default="refstream", hidden=True)
def assign(ucc: str, campaign: str, reason: str, actor: str | None, topic_prefix: str) -> None:
    """Put referrer UCC on CAMPAIGN from now on. What it earned before stays as it was
    (docs/rules.md#campaigns)."""
    ucc = ucc.strip()
    if not ucc:
        raise click.BadParameter("the referrer's code is empty", param_hint="UCC")
    _, _, records = _control_records(topic_prefix)
    book = control_log.book(records)
    now = int(time.time())
    if book is None:
        raise click.ClickException("no rules revision is published yet, so no campaign exists. Start a "
                                   "worker (it publishes REFSTREAM_RULES) or run `refstream rules publish`.")
    known = {DEFAULT_CAMPAIGN} | set(book.at(now).campaigns) | set(book.latest.rules.campaigns)
    if campaign not in known:
        raise click.ClickException(
            f"there is no campaign {campaign!r} in the rules in force (revision {book.at(now).revision}) or "
            f"the latest (revision {book.latest.rules.revision}). Known: {', '.join(sorted(known))}. Add "
            f"[campaigns.{campaign}] to the rules and publish them first (docs/rules.md#campaigns).")
    settings = settings_or_fail()
    topic = Topics(settings.env, topic_prefix).control
    record = control.CampaignAssignment(ucc, campaign, now, control_log.actor(actor), reason)
    try:
        _, offset = asyncio.run(append_control(settings.kafka_bootstrap, topic, record))
    except NotWritten as exc:
        raise failure(settings.kafka_bootstrap, f"{ucc} was not assigned to {campaign!r}", exc) from None
    except Unconfirmed as exc:
        raise failure(settings.kafka_bootstrap, f"{ucc} may or may not have been assigned to {campaign!r}",
                      exc, after="Assigning again is harmless.") from None
    click.echo(f"assigned {ucc} to campaign {campaign!r} from now on (offset {offset} of {topic})")


STRIPE_ACCOUNT = re.compile(r"^acct_[A-Za-z0-9]{6,}$")
EMAIL = re.compile(r"^[^@\s,]+@[^@\s,]+\.[^@\s,]+$")


@referrers.command(name="set-account")
@click.argument("ucc")
@click.argument("account")
@click.option("--reason", required=True, help="Why (kept with the account, shown by `refstream audit`).")
@click.option("--name", default="", help="The account holder's name, for files that ask for one (Wise).")
@click.option("--actor", default=None, help="Who sets it [default: the OS user].")
@click.option("--topic-prefix", default="refstream", hidden=True)
def set_account(ucc: str, account: str, reason: str, name: str, actor: str | None, topic_prefix: str) -> None:
    """Pay referrer UCC to ACCOUNT from now on: a Stripe connected account (acct_…), which
    `payouts execute` transfers to, or an e-mail address, which `payouts export --format
    paypal|wise` pays. The latest of each kind counts."""
    from refstream.commands.payouts import _append_one, _text_or_fail

    ucc = ucc.strip()
    if not ucc:
        raise click.BadParameter("the referrer's code is empty", param_hint="UCC")
    account = account.strip()
    if not (STRIPE_ACCOUNT.match(account) or EMAIL.match(account)):
        raise click.BadParameter(
            f"{account!r} is neither a Stripe connected account id (acct_ followed by letters and digits, as "
            "the Dashboard's Connect → Accounts page shows it) nor an e-mail address (for PayPal or Wise).",
            param_hint="ACCOUNT")
    why = _text_or_fail(reason, "--reason", "onboarded to Connect")
    settings = settings_or_fail()
    t = Topics(settings.env, topic_prefix)
    record = control.ReferrerAccount(ucc, account, int(time.time()), control_log.actor(actor), why,
                                     name.strip())
    offset = _append_one(settings, t, record, f"The payout account of {ucc}", "Setting it again is harmless.")
    kind = "Stripe connected account" if record.kind == "stripe" else "e-mail address"
    click.echo(f"{ucc} is paid to {kind} {account} from now on (offset {offset} of {t.control})")


@referrers.command(name="link")
@click.argument("ucc")
@click.option("--customer", "customer_id", required=True, metavar="cus_…",
              help="The referrer's own Stripe customer: the one whose user holds the referral code.")
@click.option("--reason", required=True, help="Why (kept with the link).")
@click.option("--actor", default=None, help="Who links [default: the OS user].")
@click.option("--topic-prefix", default="refstream", hidden=True)
def link(ucc: str, customer_id: str, reason: str, actor: str | None, topic_prefix: str) -> None:
    """Record that Stripe customer cus_… is referrer UCC's own. A referral of UCC whose
    customer shares an e-mail address or a card with it then opens a suspected_fraud case
    (signal self_referral), whichever of them Stripe told about first
    (docs/rules.md#fraud-signals)."""
    ucc, customer_id = ucc.strip(), customer_id.strip()
    if not ucc:
        raise click.BadParameter("the referrer's code is empty", param_hint="UCC")
    if not customer_id.startswith("cus_") or len(customer_id) < 5 or any(c.isspace() for c in customer_id):
        raise click.BadParameter(
            f"{customer_id!r} is not a Stripe customer id. Give the id Stripe shows for the referrer's own "
            "customer, e.g. --customer cus_NffrFeUfNV2Hib.", param_hint="--customer")
    if not reason.strip():
        raise click.BadParameter("the reason is empty. Say why, e.g. --reason 'the referrer's own account'.",
                                 param_hint="--reason")
    settings = settings_or_fail()
    topic = Topics(settings.env, topic_prefix).control
    record = control.ReferrerLink(ucc, customer_id, int(time.time()), control_log.actor(actor),
                                  reason.strip())
    try:
        _, offset = asyncio.run(append_control(settings.kafka_bootstrap, topic, record))
    except NotWritten as exc:
        raise failure(settings.kafka_bootstrap, f"{customer_id} was not linked to {ucc}", exc) from None
    except Unconfirmed as exc:
        raise failure(settings.kafka_bootstrap, f"{customer_id} may or may not have been linked to {ucc}",
                      exc, after="Linking again is harmless.") from None
    click.echo(f"linked {customer_id} to referrer {ucc} as its own customer (offset {offset} of {topic})")
    if settings.identity_key is None:
        click.echo("note: REFSTREAM_IDENTITY_KEY is not set here. The worker compares e-mail addresses and "
                   "cards only when it has the key (docs/rules.md#fraud-signals).", err=True)
