"""The Stripe records and the domain events are frozen msgspec structs
(schemas/stripe_records.py, schemas/event_records.py, docs/performance.md#stripe-records),
and still what every caller relied on when they were frozen dataclasses: built by position
or by name, equal and hashed by value, never changed after construction, and pickled whole
(replay hands records between processes)."""

from __future__ import annotations

import pickle
from types import ModuleType

import msgspec
import pytest

from schemas import event_records, events, stripe, stripe_records


def _structs(module: ModuleType) -> list[type[msgspec.Struct]]:
    return [cls for cls in vars(module).values() if isinstance(cls, type)
            and issubclass(cls, msgspec.Struct) and cls.__module__ == module.__name__]


STRIPE_RECORDS = _structs(stripe_records)
RECORDS = STRIPE_RECORDS + _structs(event_records)


def test_every_record_is_exported_by_the_reader() -> None:
    assert {cls.__name__ for cls in STRIPE_RECORDS} == {
        "Customer", "Subscription", "InvoiceLine", "Invoice", "Charge", "InvoicePayment", "Dispute",
        "StripeEvent",
    }
    for cls in STRIPE_RECORDS:
        assert getattr(stripe, cls.__name__) is cls


def test_every_domain_event_is_a_record_the_codec_knows() -> None:
    assert {cls.__name__: cls for cls in _structs(event_records)} == events._TYPES
    for cls in events._TYPES.values():
        assert getattr(events, cls.__name__) is cls


@pytest.mark.parametrize("cls", RECORDS, ids=lambda c: c.__name__)
def test_a_record_is_frozen_and_equal_by_value(cls: type[msgspec.Struct]) -> None:
    names = cls.__struct_fields__
    values = [f"v{i}" for i in range(len(names))]
    record = cls(*values)
    assert [getattr(record, n) for n in names] == values
    assert record == cls(**dict(zip(names, values, strict=True)))
    assert record != cls(*values[:-1], "other")
    assert hash(record) == hash(cls(*values))
    assert pickle.loads(pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)) == record
    changed = msgspec.structs.replace(record, **{names[0]: "other"})
    assert getattr(changed, names[0]) == "other" and getattr(record, names[0]) == "v0"
    with pytest.raises(AttributeError):
        setattr(record, names[0], "x")
    with pytest.raises(TypeError):
        cls(*values[:-1])  # a missing field is refused


def test_a_parsed_event_pickles_and_compares_whole() -> None:
    raw = (b'{"id":"evt_1","object":"event","type":"invoice.paid","created":1767225600,"livemode":false,'
           b'"data":{"object":{"id":"in_1","object":"invoice","customer":"cus_1","created":1767225600,'
           b'"currency":"usd","amount_paid":1900,"lines":{"data":[{"amount":1900,"type":"subscription",'
           b'"period":{"start":1767225600,"end":1769904000}}]}}}}')
    event = stripe.parse_event(raw)
    again = pickle.loads(pickle.dumps(event, protocol=pickle.HIGHEST_PROTOCOL))
    assert again == event and hash(again) == hash(event)
    assert isinstance(again.object, stripe.Invoice) and again.object.lines[0].subscription is True
    assert stripe.customer_of(again) == "cus_1"


def test_the_customer_stage_refuses_an_event_about_no_customer_by_its_id_and_type() -> None:
    from processors.rules import referral
    from schemas.rules import RuleBook
    from tests.unit.test_properties import CAPPED_RULES

    raw = (b'{"id":"evt_9","object":"event","type":"invoice_payment.paid","created":1767225600,'
           b'"livemode":false,"data":{"object":{"id":"inpay_1","object":"invoice_payment","invoice":"in_1",'
           b'"status":"paid","payment":{"type":"charge","charge":"ch_1"}}}}')
    event = stripe.parse_event(raw)
    assert stripe.customer_of(event) is None
    with pytest.raises(ValueError, match=r"^event evt_9 \(invoice_payment.paid\) is not about a customer$"):
        referral.step(None, event, RuleBook.of(CAPPED_RULES))
