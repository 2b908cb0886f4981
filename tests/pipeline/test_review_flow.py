"""Review flow: a case opens, the referral's payout is withheld, approval releases it on
the next run, and deciding the case again changes nothing (docs/rules.md#review-cases)."""

from __future__ import annotations

import pytest

from projections.demo import customer, invoice_paid, ts, worked_example
from schemas.commands import PayoutCommand, ReviewCase
from tests.pipeline.stack import Stack, of_kind

pytestmark = pytest.mark.kafka

JAN10 = ts("2026-01-10")


async def test_a_case_withholds_the_payout_until_approved_and_a_second_decision_changes_nothing(
    stack: Stack,
) -> None:
    await stack.start_ingest()
    worker = await stack.start_worker()
    await stack.post([
        *worked_example(),  # ucc_X: a referrer without a case, paid as usual
        customer("evt_r_cus", "cus_R", JAN10, ucc="ucc_R", user="u_r"),
        # euros are not configured in the rules: an unsupported_currency case
        invoice_paid("evt_r_inv", "in_R1", "cus_R", JAN10 + 3600, amount_paid=10000, total=10000,
                     total_excluding_tax=10000, charge="ch_R1", currency="eur"),
    ])
    got = await stack.assert_outputs_match_engine()
    [case] = of_kind(got, ReviewCase)
    assert (case.kind, case.ucc) == ("unsupported_currency", "ucc_R")
    listed = stack.cli("review", "list").stdout
    assert case.case_id in listed and "1 open" in listed

    # the case pauses the referral: its signup bonus is payable but withheld
    await stack.payout_run("2026-03-01T00:00:00+00:00", "march")
    got = await stack.assert_outputs_match_engine()
    assert {p.ucc for p in of_kind(got, PayoutCommand)} == {"ucc_X"}
    _, summary = await stack.get_json(worker, f"/referrers/ucc_R?as_of={ts('2026-03-01')}")
    assert summary["open_cases"] == 1 and summary["currencies"]["usd"]["payable"] == 0  # withheld

    resolved = stack.cli("review", "resolve", case.case_id, "--approve", "--reason", "EUR deal agreed")
    assert "approve" in resolved.stdout
    assert "No open review cases." in stack.cli("review", "list").stdout
    await stack.payout_run("2026-03-01T00:00:00+00:00", "march-after-review")
    got = await stack.assert_outputs_match_engine()
    released = sorted((p.currency, p.amount) for p in of_kind(got, PayoutCommand) if p.ucc == "ucc_R")
    # eur: 25 % of 10000 by the normal rule, without a cap (and min_payout 1 by default);
    # the usd signup bonus (500) is released too but stays below usd's min_payout of 2000
    assert released == [("eur", 2500)]

    again = stack.cli("review", "resolve", case.case_id, "--reject", "--reason", "changed my mind")
    assert "changes nothing" in again.stdout
    await stack.payout_run("2026-04-01T00:00:00+00:00", "april")
    got = await stack.assert_outputs_match_engine()
    assert sorted((p.currency, p.amount) for p in of_kind(got, PayoutCommand) if p.ucc == "ucc_R") == released
    _, summary = await stack.get_json(worker, f"/referrers/ucc_R?as_of={ts('2026-04-01')}")
    assert summary["open_cases"] == 0
    assert summary["currencies"]["eur"]["paid"] == 2500 and summary["currencies"]["usd"]["payable"] == 500


async def test_resolving_an_unknown_case_names_the_problem_and_the_fix(stack: Stack) -> None:
    result = stack.cli("review", "resolve", "case_nope", "--approve", "--reason", "x", check=False)
    assert result.returncode != 0
    assert "no review case 'case_nope'" in result.stderr and "refstream review list" in result.stderr
