"""The project's own Stripe samples (tests/stripe_samples/, see its README.md), in both
API shapes: before 2025-03-31 ("pre-basil") and 2025-03-31 and later ("current").

Every sample of an object the rules read parses to what the rules need, whatever the
many fields the rules do not read hold; a refund object is not a charge; events of types
the rules do not read route nowhere; and each shape's samples, sent as the events that
carry them, fold to the amounts docs/rules.md gives (the current shape's story is the
worked example: 500 + 2500 + 1000 − 1250 = 2750 usd).
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.rules.engine import Engine, route_stripe_event
from schemas.commands import NEW_SIGNUP, RECURRING_REWARDS_CANCELLED, REWARD_EARNED, REWARD_REVERSED
from schemas.rules import Rules
from schemas.stripe import (
    Charge,
    Customer,
    Invoice,
    InvoicePayment,
    StripeParseError,
    Subscription,
    parse_event,
)
from tests.conftest import FIXTURES
from tests.unit.builders import ts
from tests.unit.conftest import feed, make_rules, notifications, payouts, run

CURRENT = "current"
PRE_BASIL = "pre-basil-2025-02-14"
ERAS = [CURRENT, PRE_BASIL]

# sample name -> (the event types that carry it, the record it parses to)
CARRIERS: dict[str, tuple[list[str], type]] = {
    "customer": (["customer.created", "customer.updated"], Customer),
    "deleted_customer": (["customer.deleted"], Customer),
    "subscription": (["customer.subscription.created", "customer.subscription.updated"], Subscription),
    "subscription_canceled": (["customer.subscription.updated", "customer.subscription.deleted"],
                              Subscription),
    "invoice": (["invoice.paid"], Invoice),
    "charge": (["charge.succeeded", "charge.updated"], Charge),
    "charge_refunded": (["charge.refunded", "charge.updated"], Charge),
    "charge_one_off": (["charge.succeeded"], Charge),
    "invoice_payment": (["invoice_payment.paid"], InvoicePayment),
}
# the top-level fields each object's parser looks at; everything else must be ignored
READ_FIELDS: dict[type, set[str]] = {
    Customer: {"id", "object", "created", "deleted", "metadata", "email"},
    Subscription: {"id", "object", "customer", "created", "status", "canceled_at", "ended_at"},
    Invoice: {"id", "object", "customer", "created", "currency", "amount_paid", "total",
              "total_excluding_tax", "status_transitions", "parent", "subscription", "charge",
              "payment_intent", "payments", "lines"},
    Charge: {"id", "object", "customer", "created", "currency", "amount", "amount_refunded", "invoice",
             "payment_intent", "payment_method_details"},
    InvoicePayment: {"id", "object", "invoice", "created", "status", "payment"},
}
SAMPLES = [(era, name) for era in ERAS for name in CARRIERS if (FIXTURES / era / f"{name}.json").exists()]

_ids = iter(range(1, 1_000_000))


def sample(era: str, name: str) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads((FIXTURES / era / f"{name}.json").read_bytes())
    return doc


def event(obj: dict[str, Any], type_: str, created: int = 1767225600) -> bytes:
    """The webhook body Stripe sends for `obj` (its livemode, a fresh event id)."""
    return orjson.dumps({"id": f"evt_sample{next(_ids):06d}", "object": "event", "api_version": None,
                         "created": created, "livemode": obj.get("livemode") is True, "pending_webhooks": 1,
                         "request": {"id": None, "idempotency_key": None}, "type": type_,
                         "data": {"object": obj}})


def test_both_shapes_have_a_sample_of_every_object_the_rules_read() -> None:
    names = {era: {n for e, n in SAMPLES if e == era} for era in ERAS}
    common = {"customer", "deleted_customer", "subscription", "invoice", "charge", "charge_refunded"}
    assert common <= names[CURRENT] and common <= names[PRE_BASIL]
    assert "invoice_payment" in names[CURRENT]  # the link object exists from 2025-03-31 on
    assert "charge_one_off" in names[PRE_BASIL]  # only the old shape says `"invoice": null`


@pytest.mark.parametrize(("era", "name"), SAMPLES)
def test_every_sample_parses_under_every_event_type_that_carries_it(era: str, name: str) -> None:
    types, cls = CARRIERS[name]
    obj = sample(era, name)
    for type_ in types:
        parsed = parse_event(event(obj, type_)).object
        assert isinstance(parsed, cls)
        assert parsed.id == obj["id"]


@pytest.mark.parametrize(("era", "name"), SAMPLES)
def test_fields_the_rules_do_not_read_may_hold_anything(era: str, name: str) -> None:
    types, cls = CARRIERS[name]
    obj = sample(era, name)
    ignored = set(obj) - READ_FIELDS[cls]
    if name != "deleted_customer":  # Stripe's deleted object is bare: id, object, deleted
        assert len(ignored) >= 5, "a sample should carry the fields Stripe sends, not only those we read"
    odd = {key: {"unexpected": [None, 1.5, "x", {"nested": True}]} for key in ignored}
    for type_ in types:
        assert parse_event(event({**obj, **odd}, type_)).object == parse_event(event(obj, type_)).object


def test_what_the_current_shape_says() -> None:
    cus = parse_event(event(sample(CURRENT, "customer"), "customer.created")).object
    assert isinstance(cus, Customer)
    # metadata values are trimmed (" usr_8812 " in the sample)
    assert (cus.ucc, cus.new_user_id, cus.organization_id, cus.deleted) == (
        "ucc_maria", "usr_8812", "org_441", False)
    inv = parse_event(event(sample(CURRENT, "invoice"), "invoice.paid")).object
    assert isinstance(inv, Invoice)
    sub_id = sample(CURRENT, "subscription")["id"]
    # the subscription comes from parent.subscription_details; no charge or payment intent on it
    assert (inv.subscription, inv.charge, inv.payment_intent, inv.payment_charges) == (sub_id, None, None, ())
    assert (inv.amount_paid, inv.total, inv.total_excluding_tax) == (11900, 11900, 10000)
    [line] = inv.lines
    assert (line.amount, line.subscription, line.proration) == (10000, True, False)
    ch = parse_event(event(sample(CURRENT, "charge"), "charge.succeeded")).object
    assert isinstance(ch, Charge)
    assert (ch.invoice, ch.one_off) == (None, False)  # no `invoice` key: unknown, never a one-off
    pay = parse_event(event(sample(CURRENT, "invoice_payment"), "invoice_payment.paid")).object
    assert isinstance(pay, InvoicePayment)
    assert (pay.invoice, pay.payment_intent, pay.charge, pay.status) == (
        inv.id, ch.payment_intent, None, "paid")
    canceled = sample(CURRENT, "subscription_canceled")
    ended = parse_event(event(canceled, "customer.subscription.deleted")).object
    assert isinstance(ended, Subscription)
    assert ended.status == "canceled" and ended.ended_at is not None and ended.canceled_at == ended.ended_at
    # identity evidence for the fraud signals: the customer's e-mail, the card's fingerprint
    assert (cus.email, ch.card_fingerprint) == ("ines.duarte@example.com", "Qm8pX3vK0tLw2ZyN")


def test_what_the_pre_basil_shape_says() -> None:
    inv = parse_event(event(sample(PRE_BASIL, "invoice"), "invoice.paid")).object
    ch = parse_event(event(sample(PRE_BASIL, "charge"), "charge.succeeded")).object
    assert isinstance(inv, Invoice) and isinstance(ch, Charge)
    # the invoice names its subscription, charge and payment intent; the charge names its invoice
    assert (inv.subscription, inv.charge, inv.payment_intent) == (
        sample(PRE_BASIL, "subscription")["id"], ch.id, ch.payment_intent)
    assert (ch.invoice, ch.one_off) == (inv.id, False)
    [line] = inv.lines  # `type: subscription`, `proration: false`, a year long
    assert (line.amount, line.subscription, line.proration) == (120000, True, False)
    one_off = parse_event(event(sample(PRE_BASIL, "charge_one_off"), "charge.succeeded")).object
    assert isinstance(one_off, Charge) and one_off.one_off is True  # an explicit `"invoice": null`
    deleted = parse_event(event(sample(PRE_BASIL, "deleted_customer"), "customer.deleted")).object
    assert isinstance(deleted, Customer) and deleted.deleted and deleted.created is None
    assert deleted.email is None
    cus = parse_event(event(sample(PRE_BASIL, "customer"), "customer.created")).object
    assert isinstance(cus, Customer) and cus.email == "billing@northwind-labs.example"
    assert ch.card_fingerprint == one_off.card_fingerprint == "Lr5Nw8YcTbF3kQ2x"  # one card, both charges


def test_a_refund_object_is_not_a_charge() -> None:
    with pytest.raises(StripeParseError) as err:
        parse_event(event(sample(CURRENT, "refund"), "charge.refunded"))
    assert str(err.value) == "data.object.object: expected 'charge' for this event type, got 'refund'"


@pytest.mark.parametrize("path", ["current/event.json", "pre-basil-2025-02-14/event.json",
                                  "docs-example-event.setup_intent.created.json"])
def test_events_of_types_the_rules_do_not_read_parse_and_route_nowhere(path: str) -> None:
    event_ = parse_event((FIXTURES / path).read_bytes())
    assert event_.type not in {"customer.created", "invoice.paid", "charge.refunded"}
    assert event_.object is None and route_stripe_event(event_) == []


def _current_story() -> list[bytes]:
    c = CURRENT
    return [
        event(sample(c, "customer"), "customer.created", ts("2026-03-02T10:00")),
        event(sample(c, "subscription"), "customer.subscription.created", ts("2026-03-02T10:01")),
        event(sample(c, "invoice"), "invoice.paid", ts("2026-03-02T10:02")),
        event(sample(c, "invoice_payment"), "invoice_payment.paid", ts("2026-03-02T10:02")),
        event(sample(c, "charge"), "charge.succeeded", ts("2026-03-02T10:02")),
        event(sample(c, "charge_refunded"), "charge.refunded", ts("2026-03-20T15:30")),
        event(sample(c, "subscription_canceled"), "customer.subscription.deleted", ts("2026-05-10T16:42")),
    ]


def test_the_current_shape_folds_to_the_worked_example(rules: Rules) -> None:
    engine = Engine(rules)
    out = feed(engine, *_current_story())
    # the refund's charge names no invoice: invoice_payment.paid links it by payment intent
    assert [(n.kind, n.referral_id, n.amount) for n in notifications(out)] == [
        (NEW_SIGNUP, "user:usr_8812", 500),
        (REWARD_EARNED, "user:usr_8812", 2500 + 1000),  # base 11900 − 1900 tax, 25 %, purchase bonus
        (REWARD_REVERSED, "user:usr_8812", 1250),  # half of the charge refunded: half the 2500
        (RECURRING_REWARDS_CANCELLED, "user:usr_8812", 0),
    ]
    [payout] = payouts(run(engine, "run-april", ts("2026-04-15")))  # 30 days' hold: payable from 04-01
    assert (payout.ucc, payout.currency, payout.amount) == ("ucc_maria", "usd", 2750)
    assert feed(engine, *_current_story()) == []  # every delivery again: nothing more


def _pre_basil_story() -> list[bytes]:
    p = PRE_BASIL
    return [
        event(sample(p, "customer"), "customer.created", ts("2025-01-06T09:00")),
        event(sample(p, "subscription"), "customer.subscription.created", ts("2025-01-06T09:02")),
        event(sample(p, "invoice"), "invoice.paid", ts("2025-01-06T09:03")),
        event(sample(p, "charge"), "charge.succeeded", ts("2025-01-06T09:03")),
        event(sample(p, "charge_refunded"), "charge.refunded", ts("2025-02-01T11:15")),
        event(sample(p, "charge_one_off"), "charge.succeeded", ts("2025-03-15T14:20")),
        event(sample(p, "deleted_customer"), "customer.deleted", ts("2025-06-30T08:00")),
    ]


def test_the_pre_basil_shape_folds_an_annual_plan_into_capped_monthly_instalments(rules: Rules) -> None:
    engine = Engine(rules)
    out = feed(engine, *_pre_basil_story())
    # 25 % of 120000 is 30000, cut to the 10000 cap less the 500 + 1000 bonuses: 8500, paid in 12
    # monthly instalments (712, then 708 × 11); the one-off charge earns nothing under these rules
    assert [(n.kind, n.amount) for n in notifications(out)] == [
        (NEW_SIGNUP, 500), (REWARD_EARNED, 1000 + 8500), (REWARD_REVERSED, 2125)]  # 8500 × 30000 / 120000
    # by 2025-04-10 three instalments are past their 30 days' hold: 500 + 1000 + 712 + 708 + 708
    # − 2125 = 1503, below the minimum payout of 2000; a month later the fourth makes it 2211
    assert payouts(run(engine, "run-april", ts("2025-04-10"))) == []
    [payout] = payouts(run(engine, "run-may", ts("2025-05-10")))
    assert (payout.ucc, payout.amount) == ("ucc_ana", 1503 + 708)
    summary = engine.referrer("ucc_ana", ts("2026-02-01"))
    assert summary is not None
    usd = summary.currencies["usd"]
    assert (usd.earned, usd.reversed, usd.paid, usd.payable) == (10000, 2125, 2211, 7875 - 2211)


def test_an_invoice_created_after_the_customer_was_deleted_earns_nothing() -> None:
    engine = Engine(make_rules(**{"currency_usd": {"signup_bonus": 0, "purchase_bonus": 0}}))
    feed(engine, *_pre_basil_story())
    renewal = {**sample(PRE_BASIL, "invoice"), "id": "in_1RenewalAfterDeletion0001",
               "created": ts("2025-07-01"), "status_transitions": {"paid_at": ts("2025-07-01")}}
    assert feed(engine, event(renewal, "invoice.paid", ts("2025-07-01"))) == []
    earlier = {**renewal, "id": "in_1TopUpBeforeDeletion00001", "created": ts("2025-06-01"),
               "status_transitions": {"paid_at": ts("2025-06-01")}}
    [earned] = notifications(feed(engine, event(earlier, "invoice.paid", ts("2025-06-01"))))
    # no cap here: 30000 in 12 instalments of 2500, of which the 8 earned before the reward
    # window ends (2026-01-06, 12 months after the signup) are kept
    assert (earned.kind, earned.amount) == (REWARD_EARNED, 8 * 2500)


@pytest.mark.parametrize(("rewarded", "expected"), [(False, []), (True, [(REWARD_EARNED, 1000 + 1225)])])
def test_a_one_off_charge_earns_only_when_the_rules_say_so(rewarded: bool, expected: list[Any]) -> None:
    engine = Engine(make_rules(reward_one_off_charges=rewarded))
    feed(engine, event(sample(PRE_BASIL, "customer"), "customer.created", ts("2025-01-06T09:00")))
    out = feed(engine, event(sample(PRE_BASIL, "charge_one_off"), "charge.succeeded", ts("2025-03-15T14:20")))
    assert [(n.kind, n.amount) for n in notifications(out)] == expected  # 25 % of 4900, purchase bonus


def test_organisation_level_rules_make_the_organisation_the_referral() -> None:
    engine = Engine(make_rules(organization_level=True))
    [signup] = notifications(feed(engine, event(sample(PRE_BASIL, "customer"), "customer.created")))
    assert (signup.ucc, signup.referral_id) == ("ucc_ana", "org:org_77")


@pytest.mark.parametrize(("body", "path"), [
    (b"not json", "$"),
    (b"[]", "$"),
    (b'{"id": "evt_1", "type": "invoice.paid", "created": 1, "data": {}}', "data.object"),
    (b'{"id": "evt_1", "type": "invoice.paid", "created": "1", "data": {"object": {}}}', "$.created"),
    (event({"id": "in_1", "object": "invoice", "created": 1, "currency": "usd"}, "invoice.paid"),
     "data.object.amount_paid"),
    (event({"id": "in_1", "created": 1, "currency": "dollars", "amount_paid": 1}, "invoice.paid"),
     "data.object.currency"),
    (event({"id": "in_1", "created": 1, "currency": "usd", "amount_paid": 1, "lines": {"data": [{}]}},
           "invoice.paid"), "data.object.lines.data[0].amount"),
    (event({"id": "ch_1", "created": 1, "currency": "usd", "amount": True}, "charge.refunded"),
     "data.object.amount"),
    (event({"id": "cus_1", "metadata": "x", "created": 1}, "customer.created"), "data.object.metadata"),
    (event({"id": "ch_1", "created": 1, "currency": "usd", "amount": -5}, "charge.refunded"),
     "data.object.amount"),
    (event({"id": "in_1", "created": 1, "currency": "usd", "amount_paid": 10**16}, "invoice.paid"),
     "data.object.amount_paid"),
    (event({"id": "inpay_1", "invoice": "in_1", "payment": {"type": "payment_intent"}},
           "invoice_payment.paid"), "data.object.payment.payment_intent"),
])
def test_malformed_bodies_name_the_field(body: bytes, path: str) -> None:
    with pytest.raises(StripeParseError) as err:
        parse_event(body)
    assert err.value.path == path


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
FIELDS = sorted(set().union(*READ_FIELDS.values()) | {"amount_refunded", "deleted", "status"})


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(SAMPLES), st.sampled_from(FIELDS), json_values)
def test_any_field_value_parses_or_is_refused_naming_a_path(
    era_name: tuple[str, str], key: str, value: Any
) -> None:
    obj = sample(*era_name)
    obj[key] = value
    for type_ in CARRIERS[era_name[1]][0]:
        try:
            parse_event(event(obj, type_))
        except StripeParseError as exc:
            assert exc.path.startswith(("data.object", "$"))
