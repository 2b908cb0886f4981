"""Cross-check: Stripe's own fixture objects (a `shared/stripe-fixtures` folder next to
the checkout, see this folder's conftest.py) parse, or are refused with a clear error.

They are objects, valid in shape but not coherent scenarios; each is wrapped in the event
envelope Stripe sends for it. Outcomes:
- customer, deleted_customer, subscription, invoice, charge (both API eras): parse;
- current/invoice_payment.json: refused, because `payment.type` is "payment_intent" but no
  payment intent id is given, so it links nothing;
- a refund object sent as `charge.refunded`: refused (we read the charge, not the refund);
- event.json (plan.created) and the docs example (setup_intent.created): envelopes parse,
  the objects are not read (object = None) and route nowhere.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from processors.rules.engine import Engine, route_stripe_event
from schemas.stripe import (
    Charge,
    Customer,
    Invoice,
    StripeParseError,
    Subscription,
    parse_event,
    parse_invoice,
)
from tests.unit.conftest import make_rules
from tests.unit.crosscheck.conftest import STRIPE_FIXTURES as FIXTURES

ERAS = ["current", "pre-basil-2025-02-14"]
READ = {
    "customer": (["customer.created", "customer.updated"], Customer),
    "deleted_customer": (["customer.deleted"], Customer),
    "subscription": (["customer.subscription.created", "customer.subscription.updated",
                      "customer.subscription.deleted"], Subscription),
    "invoice": (["invoice.paid"], Invoice),
    "charge": (["charge.succeeded", "charge.refunded", "charge.updated"], Charge),
}


def fixture(era: str, name: str) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads((FIXTURES / era / f"{name}.json").read_bytes())
    return doc


def wrap(obj: dict[str, Any], type_: str) -> bytes:
    return orjson.dumps({"id": "evt_fixture", "object": "event", "api_version": None, "created": 1234567890,
                         "livemode": False, "pending_webhooks": 0, "type": type_, "data": {"object": obj}})


@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize("name", sorted(READ))
def test_fixture_parses_under_every_event_type_that_carries_it(era: str, name: str) -> None:
    types, cls = READ[name]
    obj = fixture(era, name)
    for type_ in types:
        event = parse_event(wrap(obj, type_))
        assert isinstance(event.object, cls)
        assert event.object.id == obj["id"]


def test_the_fixtures_read_the_fields_each_era_names() -> None:
    old = parse_event(wrap(fixture("pre-basil-2025-02-14", "charge"), "charge.succeeded")).object
    new = parse_event(wrap(fixture("current", "charge"), "charge.succeeded")).object
    assert isinstance(old, Charge) and isinstance(new, Charge)
    assert old.one_off is True  # `"invoice": null` before 2025-03-31
    assert new.one_off is False  # the field is gone: unknown, not a one-off
    inv = parse_event(wrap(fixture("current", "invoice"), "invoice.paid")).object
    assert isinstance(inv, Invoice)
    # parent.type is quote_details: its subscription_details is not read
    assert (inv.amount_paid, inv.total, inv.total_excluding_tax, inv.subscription) == (0, 1000, 1000, None)
    deleted = parse_event(wrap(fixture("current", "deleted_customer"), "customer.deleted")).object
    assert isinstance(deleted, Customer) and deleted.deleted and deleted.created is None


@pytest.mark.parametrize("era", ERAS)
def test_line_item_fixtures_parse_as_invoice_lines(era: str) -> None:
    inv = fixture(era, "invoice")
    inv["lines"] = {"object": "list", "data": [fixture(era, "line_item")]}
    [line] = parse_invoice(inv).lines
    assert (line.amount, line.subscription, line.proration) == (1000, False, False)


def test_the_invoice_payment_fixture_is_refused_because_it_names_no_payment() -> None:
    with pytest.raises(StripeParseError) as err:
        parse_event(wrap(fixture("current", "invoice_payment"), "invoice_payment.paid"))
    assert err.value.path == "data.object.payment.payment_intent"
    assert "no payment intent id" in str(err.value)


def test_a_refund_object_is_not_a_charge() -> None:
    with pytest.raises(StripeParseError) as err:
        parse_event(wrap(fixture("current", "refund"), "charge.refunded"))
    assert str(err.value) == "data.object.object: expected 'charge' for this event type, got 'refund'"


@pytest.mark.parametrize("path", ["current/event.json", "pre-basil-2025-02-14/event.json",
                                  "docs-example-event.setup_intent.created.json"])
def test_event_fixtures_of_types_we_do_not_read_parse_and_route_nowhere(path: str) -> None:
    event = parse_event((FIXTURES / path).read_bytes())
    assert event.object is None and route_stripe_event(event) == []


@pytest.mark.parametrize("era", ERAS)
def test_every_read_fixture_folds_without_error(era: str) -> None:
    engine = Engine(make_rules())
    for name, (types, _) in sorted(READ.items()):
        for type_ in types:
            engine.feed_stripe(wrap(fixture(era, name), type_))
    assert engine.referrers == {}  # no fixture carries an attribution
