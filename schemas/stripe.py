"""Reading the Stripe objects the reward rules read (docs/rules.md#stripe-input).

`parse_event(raw)` reads a verified webhook body and keeps only what the rules need, as the
frozen records of schemas/stripe_records.py (re-exported here): by msgspec into the wire
structs of schemas/stripe_wire.py, or, for whatever that path cannot map exactly, by orjson
and the readers below (`precise_parse_event`), with the same result for every body orjson
accepts (docs/performance.md#decoding-with-msgspec). Both API
shapes are read: before 2025-03-31 (`charge.invoice`, `invoice.charge`,
`invoice.subscription`, lines' `type`/`proration`) and after (`invoice.parent
.subscription_details.subscription`, `invoice.payments`, `invoice_payment` objects, lines'
`parent`). Unknown fields are ignored. A body that is not what its type promises raises
`StripeParseError` naming the field path, never anything else.
"""

from __future__ import annotations

from typing import Any

import msgspec
import orjson

from schemas import stripe_wire as w
from schemas.stripe_records import (
    Charge,
    Customer,
    Dispute,
    Invoice,
    InvoiceLine,
    InvoicePayment,
    StripeEvent,
    StripeObject,
    Subscription,
)

__all__ = [
    "CHARGE_TYPES", "CUSTOMER_TYPES", "DISPUTE_TYPES", "INVOICE_PAYMENT_TYPES", "INVOICE_TYPES", "MAX_AMOUNT",
    "READ_TYPES", "SUBSCRIPTION_TYPES", "Charge", "Customer", "Dispute", "Invoice", "InvoiceLine",
    "InvoicePayment", "StripeEvent", "StripeObject", "StripeParseError", "Subscription", "customer_of",
    "parse_envelope", "parse_event", "precise_parse_event", "read_envelope",
]

# Event types the rules read (docs/rules.md#stripe-input); ingest writes these and answers 200 to the rest.
CUSTOMER_TYPES = frozenset({"customer.created", "customer.updated", "customer.deleted"})
SUBSCRIPTION_TYPES = frozenset({
    "customer.subscription.created", "customer.subscription.updated", "customer.subscription.deleted",
})
CHARGE_TYPES = frozenset({"charge.succeeded", "charge.refunded", "charge.updated"})
INVOICE_TYPES = frozenset({"invoice.paid"})
INVOICE_PAYMENT_TYPES = frozenset({"invoice_payment.paid"})
DISPUTE_TYPES = frozenset({
    "charge.dispute.created", "charge.dispute.closed", "charge.dispute.funds_withdrawn",
})
READ_TYPES = (CUSTOMER_TYPES | SUBSCRIPTION_TYPES | CHARGE_TYPES | INVOICE_TYPES | INVOICE_PAYMENT_TYPES
              | DISPUTE_TYPES)


class StripeParseError(ValueError):
    """The body is not the Stripe event it claims to be; `path` names the offending field."""

    def __init__(self, path: str, problem: str):
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")


def customer_of(event: StripeEvent) -> str | None:
    """The Stripe customer the event is about (the log's key), if any: an invoice payment or a
    dispute names none (the invoice stage finds it), nor does a type the rules do not read."""
    # `type(...) is`, not isinstance: the parsers build exactly these classes, and an
    # isinstance that fails against a msgspec Struct class (or a union of them) goes through
    # a slow `__instancecheck__` (docs/performance.md#compiled-core)
    obj = event.object
    kind = type(obj)
    if kind is Customer:
        return obj.id  # type: ignore[union-attr]
    if obj is None or kind is InvoicePayment or kind is Dispute:
        return None
    return obj.customer  # type: ignore[union-attr]


# --- field readers: each names the path of what it rejects -------------------------------


def _type_name(v: object) -> str:
    return "null" if v is None else type(v).__name__


def _req_str(d: dict[str, Any], key: str, path: str) -> str:
    v = d.get(key)
    if not isinstance(v, str) or not v:
        raise StripeParseError(f"{path}.{key}", f"expected a non-empty string, got {_type_name(v)}")
    return v


def _opt_str(d: dict[str, Any], key: str, path: str) -> str | None:
    v = d.get(key)
    if v is None or v == "":
        return None
    if not isinstance(v, str):
        raise StripeParseError(f"{path}.{key}", f"expected a string or null, got {_type_name(v)}")
    return v


def _ref(d: dict[str, Any], key: str, path: str) -> str | None:
    """An id field that Stripe may also send expanded as an object with an `id`."""
    v = d.get(key)
    if v is None or v == "":
        return None
    if isinstance(v, str):
        return v
    if isinstance(v, dict):
        return _req_str(v, "id", f"{path}.{key}")
    raise StripeParseError(f"{path}.{key}", f"expected an id or an object, got {_type_name(v)}")


def _req_int(d: dict[str, Any], key: str, path: str) -> int:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int):
        raise StripeParseError(f"{path}.{key}", f"expected an integer, got {_type_name(v)}")
    return v


def _opt_int(d: dict[str, Any], key: str, path: str) -> int | None:
    v = d.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise StripeParseError(f"{path}.{key}", f"expected an integer or null, got {_type_name(v)}")
    return v


def _opt_dict(d: dict[str, Any], key: str, path: str) -> dict[str, Any]:
    v = d.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise StripeParseError(f"{path}.{key}", f"expected an object or null, got {_type_name(v)}")
    return v


def _list_data(d: dict[str, Any], key: str, path: str) -> list[Any]:
    v = d.get(key)
    if v is None:
        return []
    if isinstance(v, list):
        return v
    if isinstance(v, dict):
        data = v.get("data")
        if isinstance(data, list):
            return data
    raise StripeParseError(f"{path}.{key}", f"expected a list object with `data`, got {_type_name(v)}")


_CURRENCIES: dict[str, str] = {}  # a spelling seen → its code: most events repeat a few


def _currency_code(v: str) -> str | None:
    """The 3-letter ISO code `v` spells (trimmed, lower case), or None if it spells none."""
    known = _CURRENCIES.get(v)
    if known is not None:
        return known
    code = v.strip().lower()
    if len(code) != 3 or not code.isalpha() or not code.isascii():
        return None
    if len(_CURRENCIES) < 512:
        _CURRENCIES[v] = code
    return code


def _currency(d: dict[str, Any], key: str, path: str) -> str:
    v = _req_str(d, key, path)
    code = _currency_code(v)
    if code is None:
        got = v.strip().lower()
        raise StripeParseError(f"{path}.{key}", f"expected a 3-letter ISO currency code, got {got!r}")
    return code


def _meta(meta: dict[str, Any], key: str) -> str | None:
    v = meta.get(key)
    if type(v) is str:
        v = v.strip()
        return v or None
    return None


def _expect_object(obj: dict[str, Any], name: str, path: str) -> None:
    kind = obj.get("object")
    if kind is not None and kind != name:
        raise StripeParseError(f"{path}.object", f"expected {name!r} for this event type, got {kind!r}")


# The parsers below take the common case inline (a plain type check, no call) and fall
# back to the readers above, which normalise the rare shapes or raise with the path.


def _sid(obj: dict[str, Any], key: str, path: str) -> str | None:
    v = obj.get(key)
    return v if type(v) is str and v else _ref(obj, key, path)


def _int(obj: dict[str, Any], key: str, path: str) -> int:
    v = obj.get(key)
    return v if type(v) is int else _req_int(obj, key, path)


def _oint(obj: dict[str, Any], key: str, path: str) -> int | None:
    v = obj.get(key)
    return v if v is None or type(v) is int else _opt_int(obj, key, path)


def _dict(obj: dict[str, Any], key: str, path: str) -> dict[str, Any]:
    v = obj.get(key)
    return v if type(v) is dict else _opt_dict(obj, key, path)


def _id(obj: dict[str, Any], path: str) -> str:
    v = obj.get("id")
    return v if type(v) is str and v else _req_str(obj, "id", path)


# --- objects ------------------------------------------------------------------------------


def parse_customer(obj: dict[str, Any], path: str = "data.object") -> Customer:
    get = obj.get
    if get("object") not in (None, "customer"):
        _expect_object(obj, "customer", path)
    meta = get("metadata")
    if type(meta) is not dict:
        meta = _opt_dict(obj, "metadata", path)
    deleted = get("deleted") is True
    created = _oint(obj, "created", path) if deleted else _int(obj, "created", path)
    email = get("email")
    return Customer(
        _id(obj, path), created, deleted,
        # no metadata at all (most updates of unattributed customers): no lookups
        _meta(meta, "cello_ucc") if meta else None,
        _meta(meta, "new_user_id") if meta else None,
        _meta(meta, "new_user_organization_id") if meta else None,
        (email.strip() or None) if type(email) is str else None,
    )


def _text_or_none(v: object) -> str | None:
    """A string field read as evidence only: trimmed; any other shape reads as none."""
    if type(v) is str:
        v = v.strip()
        return v or None
    return None


def _card_fingerprint(details: dict[str, Any]) -> str | None:
    """The fingerprint of the card a charge was paid with, from its `payment_method_details`
    in both API shapes (`card.fingerprint`; `card_present`'s for a card-present payment).
    Read as evidence only: an unexpected shape reads as none, never as an error."""
    for kind in ("card", "card_present"):
        card = details.get(kind)
        if type(card) is dict:
            found = _text_or_none(card.get("fingerprint"))
            if found is not None:
                return found
    return None


def parse_subscription(obj: dict[str, Any], path: str = "data.object") -> Subscription:
    if obj.get("object") not in (None, "subscription"):
        _expect_object(obj, "subscription", path)
    get = obj.get  # read inline like parse_invoice
    sub_id = get("id")
    if type(sub_id) is not str or not sub_id:
        sub_id = _req_str(obj, "id", path)
    customer = get("customer")
    if type(customer) is not str or not customer:
        customer = _ref(obj, "customer", path)
    created = get("created")
    if created is not None and type(created) is not int:
        created = _opt_int(obj, "created", path)
    status = get("status")
    if type(status) is not str or not status:
        status = _opt_str(obj, "status", path)
    canceled_at = get("canceled_at")
    if canceled_at is not None and type(canceled_at) is not int:
        canceled_at = _opt_int(obj, "canceled_at", path)
    ended_at = get("ended_at")
    if ended_at is not None and type(ended_at) is not int:
        ended_at = _opt_int(obj, "ended_at", path)
    return Subscription(sub_id, customer, created, status, canceled_at, ended_at)


def _parse_line(line: Any, path: str) -> InvoiceLine:
    if type(line) is not dict:
        raise StripeParseError(path, f"expected a line item object, got {_type_name(line)}")
    get = line.get
    period = get("period")
    if type(period) is not dict:
        period = _opt_dict(line, "period", path)
    parent = get("parent")
    if type(parent) is not dict:
        parent = _opt_dict(line, "parent", path)
    if parent:  # 2025-03-31 and later
        is_sub = parent.get("type") == "subscription_item_details"
        details = parent.get("subscription_item_details") if is_sub else {}
        if type(details) is not dict:
            details = _opt_dict(parent, "subscription_item_details", f"{path}.parent")
        proration = details.get("proration") is True
    else:
        is_sub = line.get("type") == "subscription"
        proration = line.get("proration") is True
    start, end = period.get("start"), period.get("end")
    if (start is not None and type(start) is not int) or (end is not None and type(end) is not int):
        _opt_int(period, "start", f"{path}.period")
        _opt_int(period, "end", f"{path}.period")
    amount = get("amount")
    if type(amount) is not int:
        amount = _req_int(line, "amount", path)
    price, product = _line_plan(line)
    return InvoiceLine(amount, start, end, is_sub, proration, price, product)


def _id_of(v: Any) -> str | None:
    """An id, whether Stripe sent it as a string or as an expanded object."""
    if type(v) is str:
        return v or None
    if type(v) is dict:
        i = v.get("id")
        return i if type(i) is str and i else None
    return None


def _line_plan(line: dict[str, Any]) -> tuple[str | None, str | None]:
    """(price, product) of a line, in either API shape; (None, None) when it names none.
    Only read to choose a plan's rate, so an unexpected shape reads as none, not an error."""
    pricing = line.get("pricing")  # 2025-03-31 and later
    if type(pricing) is dict:
        details = pricing.get("price_details")
        if type(details) is dict:
            return _id_of(details.get("price")), _id_of(details.get("product"))
    for key in ("price", "plan"):  # before: an expanded price, or the older plan
        v = line.get(key)
        if type(v) is dict:
            return _id_of(v), _id_of(v.get("product"))
        if type(v) is str and v:
            return v, None
    return None, None


def _lines(obj: dict[str, Any], path: str) -> tuple[InvoiceLine, ...]:
    v = obj.get("lines")
    data = v.get("data") if type(v) is dict else None
    if type(data) is not list:
        data = _list_data(obj, "lines", path)
    if len(data) == 1:  # the usual invoice: one line, no generator
        return (_parse_line(data[0], f"{path}.lines.data[0]"),)
    return tuple(_parse_line(line, f"{path}.lines.data[{i}]") for i, line in enumerate(data))


def _opt_amount(obj: dict[str, Any], key: str, path: str) -> int | None:
    v: int | None = _oint(obj, key, path)  # typed: mypyc refuses a local inferred as None
    return v if v is None else _amount_ok(v, key, path, signed=True)


def parse_invoice(obj: dict[str, Any], path: str = "data.object") -> Invoice:
    # The most frequent and largest object: every field is read inline (one lookup, one type
    # check); the readers above run only for rare shapes and errors, in the same order as
    # the fields, so a bad body is refused with the same path as before.
    get = obj.get
    if get("object") not in (None, "invoice"):
        _expect_object(obj, "invoice", path)
    transitions = get("status_transitions")
    if type(transitions) is not dict:
        transitions = _opt_dict(obj, "status_transitions", path)
    parent = get("parent")
    if type(parent) is not dict:
        parent = _opt_dict(obj, "parent", path)
    subscription = None
    # only a subscription's invoice has subscription_details (a quote's has quote_details)
    if parent and parent.get("type") in (None, "subscription_details"):
        details = parent.get("subscription_details")
        if type(details) is not dict:
            details = _opt_dict(parent, "subscription_details", f"{path}.parent")
        v = details.get("subscription")
        subscription = v if type(v) is str and v else _ref(
            details, "subscription", f"{path}.parent.subscription_details")
    if subscription is None:
        v = get("subscription")
        subscription = v if type(v) is str and v else _ref(obj, "subscription", path)
    charges: list[str] = []
    intents: list[str] = []
    if get("payments") is not None:
        for i, pay in enumerate(_list_data(obj, "payments", path)):
            p = f"{path}.payments.data[{i}]"
            if not isinstance(pay, dict):
                raise StripeParseError(p, f"expected an invoice_payment object, got {_type_name(pay)}")
            if pay.get("status") not in (None, "paid"):
                continue
            payment = _opt_dict(pay, "payment", p)
            ch = _ref(payment, "charge", f"{p}.payment")
            pi = _ref(payment, "payment_intent", f"{p}.payment")
            if ch:
                charges.append(ch)
            if pi:
                intents.append(pi)
    invoice_id = get("id")
    if type(invoice_id) is not str or not invoice_id:
        invoice_id = _req_str(obj, "id", path)
    customer = get("customer")
    if type(customer) is not str or not customer:
        customer = _ref(obj, "customer", path)
    created = get("created")
    if type(created) is not int:
        created = _req_int(obj, "created", path)
    currency = get("currency")
    currency = _CURRENCIES.get(currency) if type(currency) is str else None
    if currency is None:
        currency = _currency(obj, "currency", path)
    amount_paid = get("amount_paid")
    if type(amount_paid) is not int:
        amount_paid = _req_int(obj, "amount_paid", path)
    if not -MAX_AMOUNT <= amount_paid <= MAX_AMOUNT:
        _amount_ok(amount_paid, "amount_paid", path, signed=True)
    total = get("total")
    if total is not None and (type(total) is not int or not -MAX_AMOUNT <= total <= MAX_AMOUNT):
        total = _opt_amount(obj, "total", path)
    excluding_tax = get("total_excluding_tax")
    if excluding_tax is not None and (
        type(excluding_tax) is not int or not -MAX_AMOUNT <= excluding_tax <= MAX_AMOUNT
    ):
        excluding_tax = _opt_amount(obj, "total_excluding_tax", path)
    paid_at = transitions.get("paid_at") if transitions else None
    if paid_at is not None and type(paid_at) is not int:
        paid_at = _opt_int(transitions, "paid_at", f"{path}.status_transitions")
    charge = get("charge")
    if type(charge) is not str or not charge:
        charge = _ref(obj, "charge", path)
    intent = get("payment_intent")
    if type(intent) is not str or not intent:
        intent = _ref(obj, "payment_intent", path)
    return Invoice(
        invoice_id, customer, created, currency, amount_paid, total, excluding_tax, paid_at,
        subscription, charge, intent, tuple(charges), tuple(intents), _lines(obj, path),
    )


# Stripe's largest amounts have 12 digits; anything beyond this is not a real payment
MAX_AMOUNT = 10**15


def _amount_ok(value: int, field: str, path: str, *, signed: bool = False) -> int:
    if value > MAX_AMOUNT or value < (-MAX_AMOUNT if signed else 0):
        raise StripeParseError(f"{path}.{field}", f"{value} is not a plausible amount in minor units")
    return value


def parse_charge(obj: dict[str, Any], path: str = "data.object") -> Charge:
    # read inline like parse_invoice (the second most frequent object)
    get = obj.get
    if get("object") not in (None, "charge"):
        _expect_object(obj, "charge", path)
    amount = get("amount")
    if type(amount) is not int:
        amount = _req_int(obj, "amount", path)
    if not 0 <= amount <= MAX_AMOUNT:
        _amount_ok(amount, "amount", path)
    refunded = get("amount_refunded")
    if refunded is not None and type(refunded) is not int:
        refunded = _opt_int(obj, "amount_refunded", path)
    refunded = refunded or 0
    if not 0 <= refunded <= MAX_AMOUNT:
        _amount_ok(refunded, "amount_refunded", path)
    charge_id = get("id")
    if type(charge_id) is not str or not charge_id:
        charge_id = _req_str(obj, "id", path)
    customer = get("customer")
    if type(customer) is not str or not customer:
        customer = _ref(obj, "customer", path)
    created = get("created")
    if type(created) is not int:
        created = _req_int(obj, "created", path)
    currency = get("currency")
    currency = _CURRENCIES.get(currency) if type(currency) is str else None
    if currency is None:
        currency = _currency(obj, "currency", path)
    invoice = get("invoice")
    if type(invoice) is not str or not invoice:
        invoice = _ref(obj, "invoice", path)
    intent = get("payment_intent")
    if type(intent) is not str or not intent:
        intent = _ref(obj, "payment_intent", path)
    return Charge(
        charge_id, customer, created, currency, amount, refunded, invoice,
        "invoice" in obj and obj["invoice"] is None, intent,
        _card_fingerprint(details) if type(details := get("payment_method_details")) is dict else None,
    )


def parse_invoice_payment(obj: dict[str, Any], path: str = "data.object") -> InvoicePayment:
    if obj.get("object") not in (None, "invoice_payment"):
        _expect_object(obj, "invoice_payment", path)
    get = obj.get  # read inline like parse_invoice
    payment = get("payment")
    if type(payment) is not dict:
        payment = _opt_dict(obj, "payment", path)
    charge = payment.get("charge")
    if type(charge) is not str or not charge:
        charge = _ref(payment, "charge", f"{path}.payment")
    intent = payment.get("payment_intent")
    if type(intent) is not str or not intent:
        intent = _ref(payment, "payment_intent", f"{path}.payment")
    kind = payment.get("type")
    if kind == "charge" and charge is None:
        raise StripeParseError(f"{path}.payment.charge", "payment.type is 'charge' but no charge id is given")
    if kind == "payment_intent" and intent is None:
        raise StripeParseError(
            f"{path}.payment.payment_intent",
            "payment.type is 'payment_intent' but no payment intent id is given",
        )
    payment_id = get("id")
    if type(payment_id) is not str or not payment_id:
        payment_id = _req_str(obj, "id", path)
    invoice = get("invoice")
    if type(invoice) is not str or not invoice:
        invoice = _ref(obj, "invoice", path) or _req_str(obj, "invoice", path)
    created = get("created")
    if created is not None and type(created) is not int:
        created = _opt_int(obj, "created", path)
    status = get("status")
    if type(status) is not str or not status:
        status = _opt_str(obj, "status", path)
    return InvoicePayment(payment_id, invoice, created, charge, intent, status)


def parse_dispute(obj: dict[str, Any], path: str = "data.object") -> Dispute:
    if obj.get("object") not in (None, "dispute"):
        _expect_object(obj, "dispute", path)
    dispute_id = _req_str(obj, "id", path)
    charge = _ref(obj, "charge", path) or _req_str(obj, "charge", path)
    amount = _req_int(obj, "amount", path)
    _amount_ok(amount, "amount", path)
    return Dispute(dispute_id, charge, _ref(obj, "payment_intent", path), _opt_int(obj, "created", path),
                   _currency(obj, "currency", path), amount, _req_str(obj, "status", path))


_PARSERS: dict[str, Any] = {}
for _t in CUSTOMER_TYPES:
    _PARSERS[_t] = parse_customer
for _t in INVOICE_TYPES:
    _PARSERS[_t] = parse_invoice
for _t in CHARGE_TYPES:
    _PARSERS[_t] = parse_charge
for _t in SUBSCRIPTION_TYPES:
    _PARSERS[_t] = parse_subscription
for _t in INVOICE_PAYMENT_TYPES:
    _PARSERS[_t] = parse_invoice_payment
for _t in DISPUTE_TYPES:
    _PARSERS[_t] = parse_dispute


def _parse_object(event_type: str, obj: dict[str, Any]) -> StripeObject | None:
    parser = _PARSERS.get(event_type)
    if parser is None:
        return None
    parsed: StripeObject = parser(obj)
    return parsed


def read_envelope(doc: Any) -> tuple[str, str, int, bool, str | None, dict[str, Any]]:
    """(id, type, created, livemode, api_version, data.object) of a decoded event document.

    The envelope checks alone, without reading the object: ingest refuses what fails here,
    so the worker never dead-letters a signed event for its envelope. Raises StripeParseError.
    """
    if type(doc) is not dict:
        raise StripeParseError("$", f"expected a JSON object, got {_type_name(doc)}")
    if doc.get("object", "event") != "event":
        raise StripeParseError("object", f"expected 'event', got {doc.get('object')!r}")
    event_id, event_type, created = doc.get("id"), doc.get("type"), doc.get("created")
    if type(event_id) is not str or not event_id:
        event_id = _req_str(doc, "id", "$")
    if type(event_type) is not str or not event_type:
        event_type = _req_str(doc, "type", "$")
    if type(created) is not int:
        created = _req_int(doc, "created", "$")
    livemode = doc.get("livemode", False)
    if type(livemode) is not bool:
        raise StripeParseError("livemode", f"expected true or false, got {_type_name(livemode)}")
    data = doc.get("data")
    obj = data.get("object") if type(data) is dict else None
    if type(obj) is not dict:
        raise StripeParseError("data.object", "expected the event's object")
    api_version = doc.get("api_version")
    return event_id, event_type, created, livemode, api_version if type(api_version) is str else None, obj


def parse_envelope(doc: Any) -> StripeEvent:
    """A StripeEvent from an already-decoded JSON document."""
    event_id, event_type, created, livemode, api_version, obj = read_envelope(doc)
    parser = _PARSERS.get(event_type)  # _parse_object, inline
    return StripeEvent(
        event_id, event_type, created, livemode, api_version, None if parser is None else parser(obj),
    )


def parse_event(raw: bytes) -> StripeEvent:
    """Parse a webhook body. Raises StripeParseError (with the field path), nothing else.

    The fast path (msgspec and the wire structs of schemas/stripe_wire.py) reads the common
    shapes; whatever msgspec refuses, or the mapping below cannot map exactly, is read by
    `precise_parse_event`. For every body orjson accepts the two give the same record or the
    same error (docs/performance.md#decoding-with-msgspec).
    """
    if type(raw) is bytes and (raw.isascii() or _utf8(raw)):
        try:
            event = _fast_event(w.decode_event(raw))
        except (msgspec.ValidationError, msgspec.DecodeError, RecursionError, _Declined):
            pass
        else:
            return event
    return precise_parse_event(raw)


def precise_parse_event(raw: bytes) -> StripeEvent:
    """`parse_event` by orjson and the readers alone: what the fast path must equal."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise StripeParseError("$", f"not JSON ({exc})") from None
    return parse_envelope(doc)


# --- the fast path -------------------------------------------------------------------------
# Maps the wire structs to the records exactly as the readers above would, or raises
# _Declined where it cannot tell; the precise path then decides and names any error.


class _Declined(Exception):
    """The fast path cannot map this body exactly: the precise path reads it."""


def _utf8(raw: bytes) -> bool:
    """Whether a non-ASCII body is valid UTF-8 (else orjson's error is the answer). msgspec
    skips the strings it does not read without checking them."""
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True


def _ref_of(v: str | w.Ref | None) -> str | None:
    """As `_ref`: an id, or an expanded object's non-empty id; "" and null read as none."""
    if v is None:
        return None
    if type(v) is str:
        return v or None
    assert isinstance(v, w.Ref)
    if not v.id:
        raise _Declined
    return v.id


def _id_of_wire(v: str | w.IdOf | w.Price | None) -> str | None:
    """As `_id_of`."""
    if v is None:
        return None
    if type(v) is str:
        return v or None
    assert isinstance(v, w.IdOf | w.Price)
    return v.id or None


def _fast_currency(v: str) -> str:
    code = _currency_code(v)
    if code is None:
        raise _Declined
    return code


def _amount_in(v: int, low: int) -> int:
    if not low <= v <= MAX_AMOUNT:
        raise _Declined
    return v


def _fast_customer(o: object) -> Customer:
    if type(o) is not w.Customer or not o.id:
        raise _Declined
    deleted = o.deleted is True
    if o.created is None and not deleted:
        raise _Declined
    meta = o.metadata
    if meta is None:
        ucc = user = org = None
    else:
        ucc = _text_or_none(meta.cello_ucc)
        user = _text_or_none(meta.new_user_id)
        org = _text_or_none(meta.new_user_organization_id)
    return Customer(o.id, o.created, deleted, ucc, user, org, _text_or_none(o.email))


def _fast_subscription(o: object) -> Subscription:
    if type(o) is not w.Subscription or not o.id:
        raise _Declined
    return Subscription(o.id, _ref_of(o.customer), o.created, o.status or None, o.canceled_at, o.ended_at)


def _fast_line(line: w.Line) -> InvoiceLine:
    parent = line.parent
    if parent is not None:
        if parent.type is None:  # `{}` reads as no parent, `{"type": null}` as one: cannot tell
            raise _Declined
        is_sub = parent.type == "subscription_item_details"
        details = parent.subscription_item_details if is_sub else None
        proration = details is not None and details.proration is True
    else:
        is_sub = line.type == "subscription"
        proration = line.proration is True
    period = line.period
    start, end = (None, None) if period is None else (period.start, period.end)
    price: str | None = None
    product: str | None = None
    pricing = line.pricing
    if pricing is not None and pricing.price_details is not None:
        price = _id_of_wire(pricing.price_details.price)
        product = _id_of_wire(pricing.price_details.product)
    else:
        for v in (line.price, line.plan):
            if isinstance(v, w.Price):
                price, product = _id_of_wire(v), _id_of_wire(v.product)
                break
            if v:
                price = v
                break
    return InvoiceLine(line.amount, start, end, is_sub, proration, price, product)


def _fast_invoice(o: object) -> Invoice:
    if type(o) is not w.Invoice or not o.id:
        raise _Declined
    subscription = None
    parent = o.parent
    if parent is not None and parent.type in (None, "subscription_details") \
            and parent.subscription_details is not None:
        subscription = _ref_of(parent.subscription_details.subscription)
    if subscription is None:
        subscription = _ref_of(o.subscription)
    charges: list[str] = []
    intents: list[str] = []
    payments = o.payments
    if payments is not None:
        for pay in payments if isinstance(payments, list) else payments.data:
            if pay.status not in (None, "paid"):
                continue
            refs = pay.payment
            if refs is not None:
                ch = _ref_of(refs.charge)
                pi = _ref_of(refs.payment_intent)
                if ch:
                    charges.append(ch)
                if pi:
                    intents.append(pi)
    total: int | None = o.total  # typed: mypyc refuses a local inferred as None
    excluding_tax: int | None = o.total_excluding_tax
    lines = o.lines
    data = [] if lines is None else lines if isinstance(lines, list) else lines.data
    transitions = o.status_transitions
    return Invoice(
        o.id, _ref_of(o.customer), o.created, _fast_currency(o.currency),
        _amount_in(o.amount_paid, -MAX_AMOUNT),
        total if total is None else _amount_in(total, -MAX_AMOUNT),
        excluding_tax if excluding_tax is None else _amount_in(excluding_tax, -MAX_AMOUNT),
        None if transitions is None else transitions.paid_at,
        subscription, _ref_of(o.charge), _ref_of(o.payment_intent), tuple(charges), tuple(intents),
        tuple([_fast_line(line) for line in data]),
    )


def _fast_charge(o: object) -> Charge:
    if type(o) is not w.Charge or not o.id:
        raise _Declined
    invoice = o.invoice
    fingerprint = None
    details = o.payment_method_details
    if details is not None:
        for card in (details.card, details.card_present):
            if card is not None:
                fingerprint = _text_or_none(card.fingerprint)
                if fingerprint is not None:
                    break
    return Charge(
        o.id, _ref_of(o.customer), o.created, _fast_currency(o.currency), _amount_in(o.amount, 0),
        _amount_in(o.amount_refunded or 0, 0),
        None if isinstance(invoice, msgspec.UnsetType) else _ref_of(invoice),
        invoice is None, _ref_of(o.payment_intent), fingerprint,
    )


def _fast_invoice_payment(o: object) -> InvoicePayment:
    if type(o) is not w.InvoicePayment or not o.id:
        raise _Declined
    refs = o.payment
    charge = intent = None
    if refs is not None:
        charge, intent = _ref_of(refs.charge), _ref_of(refs.payment_intent)
        if (refs.type == "charge" and charge is None) or (refs.type == "payment_intent" and intent is None):
            raise _Declined
    invoice = _ref_of(o.invoice)
    if invoice is None:
        raise _Declined
    return InvoicePayment(o.id, invoice, o.created, charge, intent, o.status or None)


def _fast_dispute(o: object) -> Dispute:
    if type(o) is not w.Dispute or not o.id or not o.status:
        raise _Declined
    charge = _ref_of(o.charge)
    if charge is None:
        raise _Declined
    return Dispute(o.id, charge, _ref_of(o.payment_intent), o.created, _fast_currency(o.currency),
                   _amount_in(o.amount, 0), o.status)


# each event type's fast mapper, from its precise reader: which type reads which object is
# written once, in _PARSERS
_FAST_OF: dict[Any, Any] = {
    parse_customer: _fast_customer, parse_invoice: _fast_invoice, parse_charge: _fast_charge,
    parse_subscription: _fast_subscription, parse_invoice_payment: _fast_invoice_payment,
    parse_dispute: _fast_dispute,
}
_FAST: dict[str, Any] = {t: _FAST_OF[parser] for t, parser in _PARSERS.items()}


def _fast_event(env: w.Envelope) -> StripeEvent:
    """The event from its wire envelope, or _Declined where the precise path must decide."""
    if not env.id or not env.type:
        raise _Declined
    mapper = _FAST.get(env.type)
    obj: StripeObject | None = None if mapper is None else mapper(env.data.object)
    return StripeEvent(env.id, env.type, env.created, env.livemode, env.api_version, obj)
