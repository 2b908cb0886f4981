"""The control records of the payout lifecycle, accounts and adjustments encode and decode
exactly, old payout runs and decisions (without actor or reason) still decode, and a bad
record is refused naming its field (docs/cli.md#control-records)."""

from __future__ import annotations

import orjson
import pytest

from schemas import control

RECORDS = [
    control.PayoutRun("run-1", 1771113600, 1771113700, "ana", "monthly run"),
    control.ReviewDecision("case-1", "ucc_X", True, "checked the invoice", 1771113800, "ana"),
    control.PayoutOutcome("p1", "ucc_X", control.PAID, "tr_123", 1771113900, "refstream-execute",
                          "Stripe transfer"),
    control.PayoutOutcome("p1", "ucc_X", control.RETURNED, "", 1771114000, "ana", "bank returned it"),
    control.ReferrerAccount("ucc_X", "acct_1Nv0FGQ9RKHgCVdK", 1771113000, "ana", "onboarded"),
    control.ReferrerAccount("ucc_X", "x@example.com", 1771113000, "ana", "pays by PayPal"),
    control.LedgerAdjustment("adj-1", "ucc_X", "usd", -500, 1771113000, "ana", "goodwill reversed"),
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: type(r).__name__)
def test_control_records_round_trip(record: control.ControlRecord) -> None:
    raw = control.encode(record)
    assert control.decode(raw) == record
    assert control.encode(control.decode(raw)) == raw


def test_runs_and_decisions_written_before_they_named_their_actor_still_decode() -> None:
    run = control.decode(b'{"v":1,"type":"payout_run","run_id":"run-1","as_of":5,"requested_at":6}')
    assert run == control.PayoutRun("run-1", 5, 6, "", "")
    decision = control.decode(b'{"v":1,"type":"review_decision","case_id":"c","ucc":"u","approve":false,'
                              b'"reason":"no","decided_at":7}')
    assert decision == control.ReviewDecision("c", "u", False, "no", 7, "")
    # the ids are what they were: a decision's id does not depend on who made it
    assert decision.control_id == control.ReviewDecision("c", "u", False, "no", 7, "ana").control_id


def test_ids_are_idempotency_keys() -> None:
    paid = control.PayoutOutcome("p1", "ucc_X", control.PAID, "tr_1", 1, "a", "r")
    again = control.PayoutOutcome("p1", "ucc_X", control.PAID, "tr_1", 2, "b", "s")
    assert paid.control_id == again.control_id
    assert paid.control_id != control.PayoutOutcome("p1", "ucc_X", control.FAILED, "", 1, "a", "r").control_id
    a = control.adjustment_id("ucc_X", "usd", 500, 10, "ana", "goodwill")
    assert a == control.adjustment_id("ucc_X", "usd", 500, 10, "ana", "goodwill")
    assert a != control.adjustment_id("ucc_X", "usd", 500, 11, "ana", "goodwill")


def _doc(**fields: object) -> bytes:
    return orjson.dumps({"v": 1, **fields})


@pytest.mark.parametrize("raw, reason", [
    (_doc(type="payout_outcome", payout_id="p", ucc="u", status="lost", reference="", at=1, actor="a",
          reason="r"), "status: expected one of paid, failed, returned"),
    (_doc(type="payout_outcome", payout_id="", ucc="u", status="paid", reference="", at=1, actor="a",
          reason="r"), "payout_id: expected a non-empty string"),
    (_doc(type="payout_outcome", payout_id="p", ucc="u", status="paid", at=1, actor="a", reason="r"),
     "reference: expected a string"),
    (_doc(type="referrer_account", ucc="u", account="", set_at=1, actor="a", reason="r"),
     "account: expected a non-empty string"),
    (_doc(type="ledger_adjustment", adjustment_id="x", ucc="u", currency="usd", amount=0, at=1, actor="a",
          reason="r"), "amount: expected a non-zero whole number"),
    (_doc(type="ledger_adjustment", adjustment_id="x", ucc="u", currency="usd", amount=1.5, at=1,
          actor="a", reason="r"), "amount: expected a non-zero whole number"),
    (_doc(type="ledger_adjustment", adjustment_id="x", ucc="u", currency="usd", amount=5, at="now",
          actor="a", reason="r"), "at: expected Unix seconds"),
    (_doc(type="payout_run", run_id="r", as_of=1, requested_at=2, actor=3), "actor: expected a string"),
])
def test_a_bad_record_is_refused_naming_its_field(raw: bytes, reason: str) -> None:
    with pytest.raises(control.ControlDecodeError, match=reason):
        control.decode(raw)
