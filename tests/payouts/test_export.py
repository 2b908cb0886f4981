"""`refstream payouts export` files (docs/cli.md#payouts-export): what PayPal Payouts and a Wise
batch read, amounts as plain decimals in the currency's major unit, and what is left out."""

from __future__ import annotations

import csv
import io

from projections.payouts import PayoutView, decimal, export
from schemas import control
from tests.payouts.conftest import payout

ACCOUNTS = {
    "ucc_A": {"email": control.ReferrerAccount("ucc_A", "a@example.com", 1, "ana", "PayPal", "Ada Lovelace"),
              "stripe": control.ReferrerAccount("ucc_A", "acct_1NvAaAaAaAaA", 1, "ana", "Connect")},
    "ucc_B": {"email": control.ReferrerAccount("ucc_B", "b@example.com", 1, "ana", "PayPal")},
}


def views() -> list[PayoutView]:
    paid = PayoutView(payout("ucc_B", "run-1", 990), control.PAID, "wire 7")
    return [PayoutView(payout("ucc_A", "run-1", 2750)), paid, PayoutView(payout("ucc_C", "run-1", 500))]


def rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def test_amounts_are_plain_decimals_in_major_units() -> None:
    assert [decimal(2750, "usd"), decimal(5, "eur"), decimal(123456, "usd")] == ["27.50", "0.05", "1234.56"]
    assert [decimal(500, "jpy"), decimal(1234, "kwd")] == ["500", "1.234"]


def test_a_paypal_file_pays_the_pending_payouts_of_referrers_with_an_email() -> None:
    made = export(views(), ACCOUNTS, "paypal")
    a = views()[0].payout
    # no header: recipient, amount, currency, customer id, note, wallet
    assert rows(made.text) == [["a@example.com", "27.50", "USD", "ucc_A",
                                f"Referral rewards, payout {a.payout_id}", "PAYPAL"]]
    assert [(v.payout.ucc, why) for v, why in made.left_out] == [
        ("ucc_B", "already paid"), ("ucc_C", "ucc_C has no e-mail account")]


def test_a_wise_file_has_the_send_by_email_templates_columns() -> None:
    made = export(views(), ACCOUNTS, "wise")
    head, *body = rows(made.text)
    assert head == ["name", "recipientEmail", "paymentReference", "receiverType", "amountCurrency", "amount",
                    "sourceCurrency", "targetCurrency"]
    a = views()[0].payout
    assert body == [["Ada Lovelace", "a@example.com", f"RS{a.payout_id[:12]}", "PERSON", "target", "27.50",
                     "USD", "USD"]]


def test_the_csv_lists_every_payout_of_the_run_with_its_status() -> None:
    head, *body = rows(export(views(), ACCOUNTS, "csv").text)
    assert head[:8] == ["payout_id", "run_id", "ucc", "currency", "amount_minor", "amount", "status",
                        "reference"]
    assert [(r[2], r[4], r[6], r[7], r[8], r[9]) for r in body] == [
        ("ucc_A", "2750", "pending", "", "acct_1NvAaAaAaAaA", "a@example.com"),
        ("ucc_B", "990", "paid", "wire 7", "", "b@example.com"),
        ("ucc_C", "500", "pending", "", "", "")]
