"""`refstream ledger adjust UCC --amount ±N --currency CUR --reason TEXT`: a manual ledger
entry (docs/cli.md#ledger-adjust, docs/rules.md#manual-adjustments)."""

from __future__ import annotations

import re
import time
from decimal import Decimal, InvalidOperation

import click

from refstream import control_log
from refstream.commands.payouts import _append_one, _money, _text_or_fail, parse_ts, settings_or_fail
from schemas import control
from schemas.topics import Topics


@click.group(name="ledger")
def ledger() -> None:
    """Manual entries in a referrer's ledger."""


@ledger.command(name="adjust")
@click.argument("ucc")
@click.option("--amount", required=True,
              help="Minor units, + owed to the referrer or − taken back, e.g. 1250 for 12.50 usd, -500.")
@click.option("--currency", required=True, help="Lower-case ISO code, e.g. usd.")
@click.option("--reason", required=True, help="Why (kept with the adjustment, shown by `refstream audit`).")
@click.option("--actor", default=None, help="Who adjusts [default: the OS user].")
@click.option("--at", "at_text", default=None, metavar="TS",
              help="When it becomes payable [default: now]. ISO 8601 with an offset, or Unix seconds.")
@click.option("--adjustment-id", default=None,
              help="Its idempotency key [default: derived from everything it says and the time].")
@click.option("--topic-prefix", default="refstream", hidden=True)
def adjust(ucc: str, amount: str, currency: str, reason: str, actor: str | None, at_text: str | None,
           adjustment_id: str | None, topic_prefix: str) -> None:
    """Add an entry of AMOUNT to UCC's ledger: paid by the next run once payable, and reported by
    replay like any other entry (docs/rules.md#manual-adjustments)."""
    ucc = ucc.strip()
    if not ucc:
        raise click.BadParameter("the referrer's code is empty", param_hint="UCC")
    code = currency.strip().lower()
    if not re.fullmatch(r"[a-z]{3}", code):
        raise click.BadParameter(f"{currency!r} is not a currency code: use the three-letter ISO code, "
                                 "e.g. usd.", param_hint="--currency")
    value = _minor_units(amount, code)
    why = _text_or_fail(reason, "--reason", "goodwill for the late payout")
    at = parse_ts(at_text) if at_text is not None else int(time.time())
    who = control_log.actor(actor)
    aid = adjustment_id.strip() if adjustment_id else control.adjustment_id(ucc, code, value, at, who, why)
    if not aid:
        raise click.BadParameter("the adjustment id is empty", param_hint="--adjustment-id")
    settings = settings_or_fail()
    t = Topics(settings.env, topic_prefix)
    record = control.LedgerAdjustment(aid, ucc, code, value, at, who, why)
    offset = _append_one(settings, t, record, f"The adjustment of {ucc} by {_money(value, code)}",
                         f"Appending it again with --adjustment-id {aid} is safe: an id adjusts once "
                         f"(`refstream audit {ucc}` shows whether it arrived).")
    click.echo(f"appended adjustment {aid} of {ucc}: {_money(value, code)} ({why}) at offset {offset} of "
               f"{t.control}")


def _minor_units(text: str, currency: str) -> int:
    """--amount as a non-zero whole number of minor units; a decimal is refused, naming the
    whole number it most likely means."""
    from projections.report import minor_unit_exponent

    raw = text.strip().replace("_", "")
    if re.fullmatch(r"[+-]?\d+", raw):
        value = int(raw)
        if value == 0:
            raise click.BadParameter("0 changes nothing: give the amount to add (positive) or to take back "
                                     "(negative).", param_hint="--amount")
        return value
    hint = ""
    try:
        major = Decimal(raw.replace(",", "."))
        minor = major * 10 ** minor_unit_exponent(currency)
        if minor == minor.to_integral_value() and minor != 0:
            hint = f": {raw} {currency} is --amount {int(minor)}"
    except InvalidOperation:
        pass
    raise click.BadParameter(f"{text!r} is not a whole number of minor units{hint}. Amounts are in the "
                             "currency's smallest unit, e.g. 1250 for 12.50 usd.", param_hint="--amount")
