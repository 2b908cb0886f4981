"""What the console computes from a fold of the log: withheld amounts, what a decision did,
a payout preview, the runs' CSV, notes in money (docs/console.md)."""

from __future__ import annotations

from projections.demo import customer, invoice_paid, late_attribution_example, ts, worked_example
from refstream.console import model
from schemas import control
from schemas.commands import LATE_ATTRIBUTION, SHARED_CARD, SUSPECTED_FRAUD, UNSUPPORTED_CURRENCY, VELOCITY
from schemas.rules import load_rules
from tests.console.helpers import RULES, fold_of

JAN10 = ts("2026-01-10")
MARCH = ts("2026-03-01")


def log() -> list[bytes]:
    return [
        *worked_example(), *late_attribution_example(),
        customer("evt_e_cus", "cus_E", JAN10, ucc="ucc_E", user="u_e"),
        invoice_paid("evt_e_inv", "in_E1", "cus_E", JAN10 + 3600, amount_paid=10000, total=10000,
                     total_excluding_tax=10000, charge="ch_E1", currency="eur"),
    ]


def case_of(f: model.Fold, ucc: str, kind: str) -> str:
    [case_id] = [cid for cid, c in f.engine.referrers[ucc].cases.items() if c.kind == kind]
    return case_id


def test_open_cases_withhold_their_referrals_bonuses_and_hold_their_payments() -> None:
    f = fold_of(log())
    [usd] = [t for t in model.totals(f, MARCH) if t.currency == "usd"]
    # ucc_R's and ucc_E's signup bonuses are withheld; each case also holds a payment
    assert (usd.withheld, usd.held_payments) == (1000, 1)
    [eur] = [t for t in model.totals(f, MARCH) if t.currency == "eur"]
    assert (eur.earned, eur.held_payments) == (0, 1)


def test_a_decision_shows_what_it_released_computed_or_voided() -> None:
    first = fold_of(log())
    late, eur = case_of(first, "ucc_R", LATE_ATTRIBUTION), case_of(first, "ucc_E", UNSUPPORTED_CURRENCY)
    decisions = [
        control.ReviewDecision(late, "ucc_R", True, "confirmed", MARCH, "Ada"),
        control.ReviewDecision(eur, "ucc_E", False, "no euro deal", MARCH, "Ada"),
        control.ReviewDecision(late, "ucc_R", False, "changed my mind", MARCH + 1, "Bob"),  # changes nothing
    ]
    f = fold_of(log(), [control.encode(d) for d in decisions])
    approved, rejected = f.effects[late], f.effects[eur]
    assert approved.changed and approved.approve
    # the withheld signup bonus is released; the held payment earns 25 % and the purchase bonus
    assert (approved.released, approved.computed, approved.voided) == ({"usd": 500}, {"usd": 3500}, {})
    assert rejected.changed and (rejected.released, rejected.voided) == ({}, {"usd": 500})
    assert model.decisions(f)[late].actor == "Ada"  # the first decision is the one that counts


def test_a_preview_pays_what_the_run_then_pays_and_changes_nothing() -> None:
    f = fold_of(log())
    run = control.PayoutRun("march", MARCH, MARCH + 60, "Ada", "March payouts")
    before = model.totals(f, MARCH)
    preview = model.preview(f, run)
    assert model.totals(f, MARCH) == before and f.payouts == []  # the fold is untouched
    ran = fold_of(log(), [control.encode(run)])
    assert [(p.ucc, p.currency, p.amount) for p in preview.payouts] == \
        [(p.ucc, p.currency, p.amount) for p in sorted(ran.payouts, key=lambda p: (p.ucc, p.currency))]
    assert preview.totals == {"usd": 2750} and not preview.already_used
    # ucc_R's and ucc_E's bonuses are withheld; nothing else is payable but below usd's minimum
    assert model.preview(ran, run).already_used and model.preview(ran, run).payouts == []


def test_a_runs_csv_has_one_row_per_payout_in_units_and_minor_units_with_its_outcome() -> None:
    run = control.PayoutRun("march", MARCH, MARCH + 60, "Ada", "March payouts")
    first = fold_of(log(), [control.encode(run)])
    [payout] = first.payouts
    paid = control.PayoutOutcome(payout.payout_id, "ucc_X", control.PAID, "tr_123", MARCH + 3600, "Ada",
                                 "sent")
    f = fold_of(log(), [control.encode(run), control.encode(paid)])
    [view] = model.runs(f)
    assert (view.run.actor, view.totals) == ("Ada", {"usd": 2750})
    lines = model.csv_of(view, model.outcomes(f)).splitlines()
    assert lines[0] == "run_id,payout_id,ucc,currency,amount,amount_minor,as_of,entries,outcome,reference"
    assert lines[1] == f"march,{payout.payout_id},ucc_X,usd,27.50,2750,2026-03-01T00:00:00Z,4,paid,tr_123"


def test_a_cases_details_show_money_and_dates() -> None:
    rows = dict(model.detail_rows({"customer_id": "cus_R", "payment_id": "in_R1", "currency": "usd",
                                   "base": 10000, "created": ts("2026-01-06")}))
    assert rows == {"customer id": "cus_R", "payment id": "in_R1", "currency": "usd", "base": "$100.00",
                    "created": "2026-01-06 00:00 UTC"}


def test_notes_show_dates_and_money_not_unix_seconds_and_minor_units() -> None:
    assert model.readable("refund of ch_1: 5950 of 11900 refunded", "usd") == \
        "refund of ch_1: $59.50 of $119.00 refunded"
    assert model.readable("dispute dp_1 of ch_1 lost: 500 of 11900", "eur") == \
        "dispute dp_1 of ch_1 lost: €5.00 of €119.00"
    assert model.readable("instalment 2 of 12, earned 1770768000") == \
        "instalment 2 of 12, earned 2026-02-11 00:00 UTC"


def test_a_fraud_case_says_which_signal_fired_and_its_limit_in_words() -> None:
    rules = load_rules(RULES)
    card = model.why(SUSPECTED_FRAUD, {"signal": SHARED_CARD, "customer_id": "cus_B",
                                       "max_referrals_per_card": 1}, "ucc_X", rules)
    assert card.startswith("Shared card: a card customer cus_B paid with")
    assert "than the 1 the rules allow per card" in card
    burst = model.why(SUSPECTED_FRAUD, {"signal": VELOCITY, "max_signups_per_day": 10}, "ucc_X", rules)
    assert burst.startswith("Velocity: ucc_X had more than 10 signups within 24 hours")
    assert all("reject voids the referral" in text for text in (card, burst))
