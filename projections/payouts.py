"""Payouts as operators handle them (docs/cli.md#payouts): the payout commands of the
payouts topic with what became of each (the outcomes on the control topic), the referrers'
payout accounts, paying through Stripe Connect, and the files PayPal Payouts and Wise
batches accept.

Pure apart from `execute`'s calls to the transfer function it is given: the CLI reads the
topics and appends the outcomes (refstream/commands/payouts.py).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from projections.report import minor_unit_exponent
from schemas import commands, control
from schemas.topics import Topics

STRIPE, EMAIL = "stripe", "email"


@dataclass
class PayoutView:
    """A payout and what became of it."""

    payout: commands.PayoutCommand
    status: str = control.PENDING  # pending, paid, failed, returned
    reference: str = ""
    outcomes: list[control.PayoutOutcome] = field(default_factory=list)  # in log order, applied or not


@dataclass
class PayoutBook:
    runs: dict[str, control.PayoutRun]  # the first record of each run id: the one that counts
    payouts: dict[str, PayoutView]  # by payout id, in the order they were written
    accounts: dict[str, dict[str, control.ReferrerAccount]]  # ucc → kind → the latest
    # by payout id, also of payouts not (or no longer) on the topic
    outcomes: dict[str, list[control.PayoutOutcome]]

    def of_run(self, run_id: str) -> list[PayoutView]:
        return sorted((v for v in self.payouts.values() if v.payout.run_id == run_id),
                      key=lambda v: (v.payout.ucc, v.payout.currency))


def book_of(records: Iterable[tuple[str, bytes]], t: Topics) -> PayoutBook:
    """From the payouts and control topics' records, (topic, value), each topic in log order."""
    runs: dict[str, control.PayoutRun] = {}
    payouts: dict[str, PayoutView] = {}
    accounts: dict[str, dict[str, control.ReferrerAccount]] = {}
    outcomes: dict[str, list[control.PayoutOutcome]] = {}
    for topic, value in records:
        if topic == t.payouts:
            try:
                cmd = commands.decode(value)
            except (ValueError, TypeError):
                continue
            if isinstance(cmd, commands.PayoutCommand):
                payouts.setdefault(cmd.payout_id, PayoutView(cmd))
            continue
        try:
            rec = control.decode(value)
        except control.ControlDecodeError:
            continue  # the worker dead-letters it
        if isinstance(rec, control.PayoutRun):
            runs.setdefault(rec.run_id, rec)
        elif isinstance(rec, control.PayoutOutcome):
            outcomes.setdefault(rec.payout_id, []).append(rec)
        elif isinstance(rec, control.ReferrerAccount):
            accounts.setdefault(rec.ucc, {})[rec.kind] = rec
    for payout_id, view in payouts.items():
        for o in outcomes.get(payout_id, []):
            view.outcomes.append(o)
            if control.outcome_applies(view.status, o.status):  # as the worker applies them
                view.status, view.reference = o.status, o.reference or view.reference
    return PayoutBook(runs, payouts, accounts, outcomes)


def status_after(outcomes: Iterable[control.PayoutOutcome]) -> str:
    status = control.PENDING
    for o in outcomes:
        if control.outcome_applies(status, o.status):
            status = o.status
    return status


# --- paying through Stripe Connect --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Unpaid:
    view: PayoutView
    why: str  # no_account, unsupported_currency, refused, unreachable
    detail: str


class TransferRefused(Exception):
    """Stripe refused the transfer (a 4xx): trying again as it is would be refused again."""


class TransferUnconfirmed(Exception):
    """Stripe could not be reached or answered 5xx / 429 even after the library's retries:
    the transfer may or may not exist; the same idempotency key makes trying again safe."""


# (payout, destination account) → the transfer id; raises TransferRefused / TransferUnconfirmed
Transfer = Callable[[commands.PayoutCommand, str], str]


def execute(views: Iterable[PayoutView], accounts: dict[str, dict[str, control.ReferrerAccount]],
            currencies: frozenset[str], transfer: Transfer,
            paid: Callable[[PayoutView, str], None]) -> list[Unpaid]:
    """Pays every pending payout among `views` through `transfer`, one after the other, and
    calls `paid(view, transfer_id)` after each transfer (the caller appends the outcome).
    A payout whose referrer has no connected account, or whose currency the platform does
    not transfer, is left unpaid and reported, as is one Stripe refused or did not confirm."""
    unpaid: list[Unpaid] = []
    for view in views:
        if view.status != control.PENDING:
            continue  # paid (by a transfer or by hand), failed or returned: never again
        p = view.payout
        account = accounts.get(p.ucc, {}).get(STRIPE)
        if account is None:
            unpaid.append(Unpaid(view, "no_account", f"{p.ucc} has no Stripe connected account"))
            continue
        if p.currency not in currencies:
            unpaid.append(Unpaid(view, "unsupported_currency",
                                 f"{p.currency} is not among the currencies transferred "
                                 f"({', '.join(sorted(currencies))})"))
            continue
        try:
            transfer_id = transfer(p, account.account)
        except TransferRefused as exc:
            unpaid.append(Unpaid(view, "refused", str(exc)))
            continue
        except TransferUnconfirmed as exc:
            unpaid.append(Unpaid(view, "unreachable", str(exc)))
            continue
        paid(view, transfer_id)
    return unpaid


def transfer_params(p: commands.PayoutCommand, destination: str) -> dict[str, object]:
    """The Transfer.create parameters of a payout (the idempotency key is its id)."""
    return {
        "amount": p.amount, "currency": p.currency, "destination": destination,
        "transfer_group": p.run_id, "description": f"refstream payout {p.payout_id} (run {p.run_id})",
        "metadata": {"payout_id": p.payout_id, "run_id": p.run_id, "ucc": p.ucc},
    }


# --- files for paying by hand ---------------------------------------------------------------

FORMATS = ("csv", "paypal", "wise")


def decimal(amount: int, currency: str) -> str:
    """Minor units as a plain decimal in major units, as PayPal's and Wise's files want them:
    2750 usd → 27.50, 500 jpy → 500 (no thousands separator, a point for the decimals)."""
    places = minor_unit_exponent(currency)
    if places == 0:
        return str(amount)
    whole, frac = divmod(amount, 10**places)
    return f"{whole}.{frac:0{places}d}"


@dataclass(frozen=True, slots=True)
class ExportFile:
    text: str
    rows: int
    left_out: list[tuple[PayoutView, str]]  # and why


def export(views: list[PayoutView], accounts: dict[str, dict[str, control.ReferrerAccount]],
           fmt: str) -> ExportFile:
    """The file for `fmt`; payouts not pending (paid, failed, returned) are left out, and for
    paypal and wise those whose referrer has no e-mail account too."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    left_out: list[tuple[PayoutView, str]] = []
    rows = 0
    if fmt == "csv":
        w.writerow(["payout_id", "run_id", "ucc", "currency", "amount_minor", "amount", "status", "reference",
                    "stripe_account", "email", "name"])
    elif fmt == "wise":
        # the columns of Wise's "send by email" batch template
        w.writerow(["name", "recipientEmail", "paymentReference", "receiverType", "amountCurrency", "amount",
                    "sourceCurrency", "targetCurrency"])
    for view in views:
        p = view.payout
        mine = accounts.get(p.ucc, {})
        if fmt == "csv":
            stripe_account, email = mine.get(STRIPE), mine.get(EMAIL)
            w.writerow([p.payout_id, p.run_id, p.ucc, p.currency, p.amount, decimal(p.amount, p.currency),
                        view.status, view.reference, stripe_account.account if stripe_account else "",
                        email.account if email else "", email.name if email else ""])
            rows += 1
            continue
        if view.status != control.PENDING:
            left_out.append((view, f"already {view.status}"))
            continue
        email = mine.get(EMAIL)
        if email is None:
            left_out.append((view, f"{p.ucc} has no e-mail account"))
            continue
        if fmt == "paypal":
            # no header: recipient, amount, currency, customer id (≤ 30 characters, no spaces),
            # note to the recipient, wallet
            w.writerow([email.account, decimal(p.amount, p.currency), p.currency.upper(),
                        p.ucc[:30].replace(" ", ""), f"Referral rewards, payout {p.payout_id}", "PAYPAL"])
        else:
            w.writerow([email.name or p.ucc, email.account, f"RS{p.payout_id[:12]}", "PERSON", "target",
                        decimal(p.amount, p.currency), p.currency.upper(), p.currency.upper()])
        rows += 1
    return ExportFile(out.getvalue(), rows, left_out)
