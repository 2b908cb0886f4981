"""The records that cross process boundaries encode and decode exactly (docs/cli.md#output-records, control
topic, internal stage topics), and bad bytes are refused with a reason."""

from __future__ import annotations

import pytest

from schemas import commands, control, events

COMMANDS = [
    commands.PayoutCommand("p1", "run-1", "ucc_X", "usd", 2750, 1771113600, ("e1", "e2"), 3),
    commands.NotificationCommand("n1", commands.PAYOUT_CREATED, "ucc_X", None, "usd", 2750, "c1", 1),
    commands.NotificationCommand("n2", commands.NEW_SIGNUP, "ucc_X", "user:u1", "usd", 500, "evt_1", 1),
    commands.ReviewCase("c1", commands.LARGE_REWARD, "ucc_X", "user:u1", {"amount": 60000}, 1),
    commands.CaseState("s1", "c1", commands.LARGE_REWARD, "ucc_X", "user:u1", commands.CASE_OPEN,
                       {"amount": 60000}, 1, None, None),
    commands.CaseState("s2", "c1", commands.LARGE_REWARD, "ucc_X", "user:u1", commands.CASE_APPROVED,
                       {"amount": 60000}, 1, 2, "checked the invoice"),
]


@pytest.mark.parametrize("record", COMMANDS)
def test_output_records_round_trip_with_exactly_the_spec_fields(record: commands.Command) -> None:
    raw = commands.encode(record)
    assert commands.decode(raw) == record
    assert commands.encode(commands.decode(raw)) == raw  # stable bytes


def test_payout_command_json_has_the_spec_fields_only() -> None:
    import orjson
    doc = orjson.loads(commands.encode(COMMANDS[0]))
    assert sorted(doc) == sorted(["payout_id", "run_id", "ucc", "currency", "amount", "as_of", "entry_ids",
                                  "rules_revision"])


@pytest.mark.parametrize("record", [
    control.PayoutRun("run-1", 1771113600, 1771113700),
    control.ReviewDecision("case-1", "ucc_X", True, "checked the invoice", 1771113800),
])
def test_control_records_round_trip_and_have_stable_ids(record: control.ControlRecord) -> None:
    assert control.decode(control.encode(record)) == record
    assert control.control_id(record) == control.control_id(control.decode(control.encode(record)))


@pytest.mark.parametrize(("raw", "reason"), [
    (b"nope", "not JSON"),
    (b'{"v": 2, "type": "payout_run"}', "version"),
    (b'{"v": 1, "type": "payday"}', "unknown control record type"),
    (b'{"v": 1, "type": "payout_run", "run_id": "", "as_of": 1, "requested_at": 1}', "run_id"),
    (b'{"v": 1, "type": "payout_run", "run_id": "r", "as_of": "soon", "requested_at": 1}', "as_of"),
    (b'{"v": 1, "type": "review_decision", "case_id": "c", "ucc": "u", "approve": "yes", "reason": "",'
     b' "decided_at": 1}', "approve"),
])
def test_bad_control_records_are_refused_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(control.ControlDecodeError, match=reason):
        control.decode(raw)


@pytest.mark.parametrize("event", [
    events.Signup("ucc_X", "user:u1", "cus_A", 1, "evt_1"),
    events.Payment("ucc_X", "user:u1", "cus_A", "in_1", "usd", 10000, 1, 2, 12, False, "evt_2", "", 11900),
    events.Payment("ucc_X", "user:u1", "cus_A", "in_2", "usd", 10000, 1, 2, 1, False, "evt_3",
                   '[["price_1","prod_1",6000]]', 10000),
    events.ChargeSeen("ch_1", "cus_A"),
    events.DisputeSeen("ch_1", "pi_1", "dp_1", "needs_response", 5000, 3, "evt_4"),
    events.DisputeUpdate("cus_A", "ch_1", None, "dp_1", "lost", 5000, 4, "evt_5"),
    events.DisputeChanged("ucc_X", "user:u1", "cus_A", "in_1", "ch_1", "dp_1", "lost", 5000, 4, "evt_5"),
    events.Refund("ucc_X", "user:u1", "cus_A", "in_1", "ch_1", 11900, 5950, 3, "evt_3"),
    events.UnlinkedRefund("ucc_X", "user:u1", "cus_A", "ch_1", "usd", 11900, 5950, 3, "evt_3"),
    events.SubscriptionEnded("ucc_X", "user:u1", "cus_A", "sub_1", 4, "evt_4"),
    events.AttributionConflict("ucc_X", "user:u1", "cus_A", "ucc_Y", 5, "evt_5"),
    events.InvoicePaymentPaid("in_1", None, "pi_1", "evt_6"),
    events.InvoiceSeen("in_1", "cus_A"),
    events.PaymentLink("cus_A", "in_1", "ch_1", None),
])
def test_domain_events_round_trip(event: events.DomainEvent) -> None:
    assert events.decode(events.encode(event)) == event


@pytest.mark.parametrize("raw", [b"{", b'{"v": 1, "t": "Nope"}', b'{"v": 1, "t": "InvoiceSeen"}'])
def test_bad_domain_events_are_refused(raw: bytes) -> None:
    with pytest.raises(events.EventDecodeError):
        events.decode(raw)


# The field order of each domain event as the frozen dataclasses of earlier releases wrote it
# (they are msgspec structs since issue #15): records on the internal topics and in the
# tables must keep their bytes, so a worker reads what the previous release wrote.
WIRE_FIELDS = {
    "Signup": "ucc referral_id customer_id signed_up_at event_id",
    "Payment": ("ucc referral_id customer_id payment_id currency base created earned_at "
        "months late event_id plans amount"),
    "Refund": "ucc referral_id customer_id payment_id charge_id amount amount_refunded created event_id",
    "UnlinkedRefund": ("ucc referral_id customer_id charge_id currency amount amount_refunded "
        "created event_id"),
    "SubscriptionEnded": "ucc referral_id customer_id subscription_id ended_at event_id",
    "AttributionConflict": "ucc referral_id customer_id other_ucc created event_id",
    "DisputeChanged": ("ucc referral_id customer_id payment_id charge_id dispute_id status "
        "amount created event_id"),
    "InvoicePaymentPaid": "invoice_id charge_id payment_intent_id event_id",
    "InvoiceSeen": "invoice_id customer_id",
    "PaymentLink": "customer_id invoice_id charge_id payment_intent_id",
    "ChargeSeen": "charge_id customer_id",
    "DisputeSeen": "charge_id payment_intent_id dispute_id status amount created event_id",
    "DisputeUpdate": "customer_id charge_id payment_intent_id dispute_id status amount created event_id",
    "IdentitySeen": "identity ucc referral_id customer_id",
    "OwnIdentity": "identity ucc customer_id",
    "IdentityMatch": "customer_id ucc referral_id signal referrals",
}


def test_domain_events_keep_the_bytes_the_previous_release_wrote() -> None:
    assert {name: " ".join(cls.__struct_fields__) for name, cls in events._TYPES.items()} == WIRE_FIELDS
    payment = events.Payment("ucc_1", "user:u1", "cus_1", "in_1", "usd", 1900, 1767225600, 1767225700, 1,
                             False, "evt_1", "", 1900)
    assert events.encode(payment) == (
        b'{"v":1,"t":"Payment","ucc":"ucc_1","referral_id":"user:u1","customer_id":"cus_1",'
        b'"payment_id":"in_1","currency":"usd","base":1900,"created":1767225600,"earned_at":1767225700,'
        b'"months":1,"late":false,"event_id":"evt_1","plans":"","amount":1900}'
    )
    assert events.decode(events.encode(payment)) == payment
