"""The fast path of `parse_event` (msgspec, schemas/stripe_wire.py) against the precise path
(`precise_parse_event`: orjson and the readers), docs/performance.md#decoding-with-msgspec.

The contract: for every body orjson accepts, `parse_event` gives what `precise_parse_event`
gives, the same record or the same StripeParseError (path and message). Checked on event
bodies of both API shapes, every event type the rules read and some they do not, each
mutated: a field dropped, set to another type or shape, unknown fields added, keys
duplicated or escaped, non-ASCII or invalid UTF-8 put anywhere, the body cut short. Bodies
orjson refuses give the precise path's error too, except the documented residual class (a
number beyond a double's range, or nesting deeper than orjson's limit, in a field the
rules never read), which `test_the_documented_residual_difference` pins down.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bench.gen import Log
from schemas.stripe import READ_TYPES, StripeParseError, parse_event, precise_parse_event
from tests.conftest import FIXTURES
from tests.unit import builders as b

# --- the bodies ------------------------------------------------------------------------------


def _sample(era: str, name: str) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads((FIXTURES / era / f"{name}.json").read_bytes())
    return doc


def _wrap(obj: dict[str, Any], type_: str, api: str | None) -> dict[str, Any]:
    return {"id": "evt_sample", "object": "event", "api_version": api, "created": 1767225600,
            "livemode": False, "pending_webhooks": 1, "request": {"id": None, "idempotency_key": None},
            "type": type_, "data": {"object": obj}}


def _base_documents() -> list[dict[str, Any]]:
    t = b.ts("2026-01-10")
    raws = [
        b.customer("cus_1", t, ucc=" ucc_a ", user="u1", org="o1"),
        b.customer("cus_2", t, type_="customer.updated", email=None),
        b.customer("cus_3", t, ucc="ucc_a", user="u3", type_="customer.deleted", deleted=True),
        b.subscription("sub_1", "cus_1", t, at=t + 5, canceled_at=t + 9, ended_at=t + 9,
                       type_="customer.subscription.deleted"),
        b.subscription("sub_2", "cus_1", t, at=t, type_="customer.subscription.created"),
        b.invoice_paid("in_1", "cus_1", t, amount_paid=1190, total=1190, total_excluding_tax=1000,
                       sub="sub_1", charge="ch_1"),
        b.invoice_paid("in_2", "cus_1", t, amount_paid=5000, sub="sub_1", new_shape=True,
                       payments_charge="ch_2", months=3),
        b.invoice_paid("in_3", "cus_1", t, amount_paid=700, new_shape=True, no_totals=True,
                       lines=[(500, "price_1", "prod_1"), (200, None, None)]),
        b.invoice_paid("in_4", "cus_1", t, amount_paid=700, sub="sub_1",
                       lines=[(500, "price_1", "prod_1"), (200, "price_2", None)]),
        b.charge("ch_1", "cus_1", t, amount=1190, invoice="in_1", card="fp_1"),
        b.charge("ch_2", "cus_1", t, amount=5000, payment_intent="pi_2", type_="charge.updated"),
        b.charge("ch_3", "cus_1", t, amount=300, invoice=None),
        b.refund("ch_1", "cus_1", t, amount=1190, amount_refunded=500, at=t + 50, invoice="in_1"),
        b.invoice_payment_paid("in_2", t, charge="ch_2"),
        b.invoice_payment_paid("in_5", t, payment_intent="pi_5"),
        b.dispute("dp_1", "ch_1", 1190, "needs_response", t, payment_intent="pi_1"),
        b.dispute("dp_2", "ch_1", 1190, "lost", t, type_="charge.dispute.closed"),
    ]
    docs = [orjson.loads(raw) for raw in raws]
    carriers = {
        "customer": ["customer.created", "customer.updated"], "deleted_customer": ["customer.deleted"],
        "subscription": ["customer.subscription.updated"],
        "subscription_canceled": ["customer.subscription.deleted"], "invoice": ["invoice.paid"],
        "charge": ["charge.succeeded"], "charge_refunded": ["charge.refunded"],
        "charge_one_off": ["charge.succeeded"], "invoice_payment": ["invoice_payment.paid"],
        # not read: a refund object is no charge, an invoice under a type the rules ignore
        "refund": ["charge.refunded", "charge.refund.updated"],
    }
    for era in ("current", "pre-basil-2025-02-14"):
        for name, types in carriers.items():
            path = FIXTURES / era / f"{name}.json"
            if path.exists():
                docs += [_wrap(_sample(era, name), type_, None if era == "current" else "2024-06-20")
                         for type_ in types]
    docs.append(_wrap(_sample("current", "invoice"), "invoice.created", "2025-03-31.basil"))
    docs.append(orjson.loads((FIXTURES / "docs-example-event.setup_intent.created.json").read_bytes()))
    docs.append(orjson.loads((FIXTURES / "current" / "event.json").read_bytes()))
    log = list(Log(12, 3, 5).stripe_log())
    seen: set[str] = set()
    for raw in log:  # one body of each (type, API shape) the bench renders
        doc = orjson.loads(raw)
        key = f"{doc['type']} {doc['api_version']}"
        if key not in seen:
            seen.add(key)
            docs.append(doc)
    return docs


BASES = _base_documents()
READ = sorted(READ_TYPES)

# values a mutation puts in a field: every JSON type, the shapes the readers tell apart
VALUES: list[Any] = [
    None, True, False, 0, -1, 1, 7, 1.0, 1.5, -0.0, 2**63 - 1, -(2**63), 2**64 - 1, 10**15, 10**15 + 1,
    -(10**15) - 1, "", " ", "x", "usd", " USD ", "us", "€ur", "Ωmg", "é", " ucc_é ", "\u0000", "event",
    "customer", "subscription", "invoice", "charge", "dispute", "invoice_payment", "payment_intent",
    "list", "paid", "open", "subscription_details", "subscription_item_details", "quote_details",
    "2024-06-20", [], [None], [1, "x"], [{}], [{"amount": 1}], {}, {"id": "x"}, {"id": ""}, {"id": None},
    {"id": 5}, {"data": []}, {"data": None}, {"data": [{}]}, {"data": [{"amount": 5}]},
    {"object": "list", "data": [{"status": "paid", "payment": {"charge": "ch_x"}}]},
    {"type": None}, {"type": "subscription_item_details"}, {"type": "subscription_details"},
    {"subscription_details": {"subscription": {"id": "sub_x"}}}, {"price_details": {"price": "p"}},
    {"fingerprint": " fp "}, {"card": {"fingerprint": 5}}, {"start": 1, "end": True},
    {"cello_ucc": 5, "new_user_id": "u"}, {"a": {"b": {"c": [1, [2, [3, {"d": None}]]]}}},
]
# JSON orjson.dumps does not write, put in place of a value as it is
RAW = [
    b"1E5", b"-0", b"1e-400", b"1.0e2", b"18446744073709551616", b"-9223372036854775809",
    b"9223372036854775808", b"18446744073709551615", b"123456789012345678901234567890", b'"caf\xc3\xa9"',
    b'"\\u00e9"', b'"\\u0063harge"', b'"\\ud83d\\ude00"', b'"\\ud800"', b'"\xff"', b'"\xed\xa0\x80"',
    b'"\xc3"', b"NaN", b"tru", b"01", b"[" * 900 + b"]" * 900, b'"\t"', b"\x7f",
]
# of these, what orjson refuses where msgspec may skip it without a look: the residual class
RESIDUAL = [b"1e400", b"-1E+999", b"9" * 400, b"[" * 1100 + b"]" * 1100]
DEEP = b"[" * 1100 + b"]" * 1100
SENTINEL = "\u0001raw\u0001"


@dataclass(frozen=True)
class Case:
    raw: bytes
    residual: bool = False  # holds a number or nesting of the documented residual class


def _children(node: Any) -> list[Any]:
    if isinstance(node, dict):
        return list(node)
    if isinstance(node, list):
        return list(range(len(node)))
    return []


@st.composite
def bodies(draw: st.DrawFn) -> Case:
    doc = orjson.loads(orjson.dumps(draw(st.sampled_from(BASES))))  # a deep copy
    if draw(st.integers(0, 9)) == 0:  # another type than the object promises, or one not read
        doc["type"] = draw(st.sampled_from([*READ, "charge.captured", "invoice.created", "customer.x"]))
    raws: list[bytes] = []
    residual = False
    for _ in range(draw(st.integers(0, 3))):
        # walk from the top, mostly into data.object
        node: Any = doc
        data = doc.get("data")
        if type(data) is dict and type(data.get("object")) is dict and draw(st.integers(0, 4)) > 0:
            node = data["object"]
        while True:
            keys = _children(node)
            if not keys or draw(st.integers(0, 2)) == 0:
                break
            key = draw(st.sampled_from(keys))
            child = node[key]
            if not _children(child) or draw(st.booleans()):
                break
            node = child
        keys = _children(node)
        if not keys:
            continue
        key = draw(st.sampled_from(keys))
        what = draw(st.sampled_from(["drop", "set", "set", "raw", "add", "dup"]))
        if what == "drop":
            del node[key]
        elif what == "set":
            node[key] = copy.deepcopy(draw(st.sampled_from(VALUES)))
        elif what == "raw":
            token = draw(st.sampled_from(RAW + RESIDUAL))
            residual = residual or token in RESIDUAL
            raws.append(token)
            node[key] = SENTINEL
        elif isinstance(node, dict):
            name = draw(st.sampled_from(["unknown", "x_" + str(key), *map(str, node)]))
            value = copy.deepcopy(draw(st.sampled_from(VALUES)))
            if what == "add":
                node[name] = value
            else:  # the same key twice: put the copy's name in after dumping
                node[f"\u0002{len(raws)}"] = value
                raws.append(orjson.dumps(name))
    raw = orjson.dumps(doc)
    for i, token in enumerate(raws):
        dup = b'"\\u0002' + str(i).encode() + b'"'
        raw = raw.replace(dup if dup in raw else orjson.dumps(SENTINEL), token, 1)
    edit = draw(st.integers(0, 11))
    if edit in (0, 1, 2):  # bytes put anywhere: non-ASCII, invalid UTF-8, an escaped key
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.sampled_from([b"\xc3\xa9", b"\xe2\x82\xac", b"\xff", b"\xed\xa0\x80",
                                               b"\xc3", b"\\u0069", b" ", b"\x00"])) + raw[at:]
    elif edit == 3:
        raw = raw[:draw(st.integers(0, len(raw)))]
    elif edit == 4:  # a key the readers look up, escaped
        raw = raw.replace(draw(st.sampled_from([b'"id"', b'"amount"', b'"object"', b'"currency"'])),
                          b'"\\u0069d"' if draw(st.booleans()) else b'"\\u006fbject"', 1)
    return Case(raw, residual)


def _outcome(parse: Any, raw: bytes) -> tuple[Any, ...]:
    try:
        return ("record", parse(raw))
    except StripeParseError as exc:
        return ("error", type(exc), exc.path, exc.problem)


def _orjson_accepts(raw: bytes) -> bool:
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return True


def _dump(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc)


def _with(base: bytes, old: bytes, new: bytes) -> bytes:
    assert old in base
    return base.replace(old, new, 1)


_T = b.ts("2026-01-10")
_CHARGE = b.charge("ch_1", "cus_1", _T, amount=1190, invoice="in_1", card="fp_1")
_INVOICE = b.invoice_paid("in_2", "cus_1", _T, amount_paid=5000, sub="sub_1", new_shape=True,
                          payments_charge="ch_2")
_CUSTOMER = b.customer("cus_1", _T, ucc="ucc_a", user="u1")


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=bodies())
# each difference class of docs/performance.md#decoding-with-msgspec, in a field read and not:
# an integer beyond 64 bits (orjson: a float), one between 2**63 and 2**64 - 1 (an int to both)
@example(case=Case(_with(_CHARGE, b'"amount":1190', b'"amount":18446744073709551616')))
@example(case=Case(_with(_CHARGE, b'"amount":1190', b'"amount":-9223372036854775809')))
@example(case=Case(_with(_CHARGE, b'"amount":1190', b'"amount":9223372036854775808')))
@example(case=Case(_with(_CHARGE, b'"created":', b'"x":18446744073709551616,"created":')))
# a bool for an int, an int for a bool, 1.0 and 1E3 for an int
@example(case=Case(_with(_CHARGE, b'"amount":1190', b'"amount":true')))
@example(case=Case(_with(_CHARGE, b'"livemode":false', b'"livemode":0')))
@example(case=Case(_with(_CHARGE, b'"amount":1190', b'"amount":1190.0')))
@example(case=Case(_with(_CHARGE, b'"amount":1190', b'"amount":1E3')))
# invalid UTF-8 and an encoded surrogate, in a string read and in one not read
@example(case=Case(_with(_CHARGE, b'"ch_1"', b'"ch_\xff"')))
@example(case=Case(_with(_CHARGE, b'"succeeded"', b'"succ\xed\xa0\x80eeded"')))
@example(case=Case(_with(_CHARGE, b'"visa"', b'"vi\xffsa"')))
# valid non-ASCII, read and not read; a lone surrogate escape
@example(case=Case(_with(_CUSTOMER, b'"ucc_a"', b'" ucc_\xc3\xa9\xe2\x80\x83"')))
@example(case=Case(_with(_CHARGE, b'"visa"', b'"vis\xc3\xa1"')))
@example(case=Case(_with(_CHARGE, b'"visa"', b'"\\ud800"')))
# nesting at and beyond msgspec's and orjson's limits in a field not read
@example(case=Case(_with(_CHARGE, b'"visa"', b"[" * 1000 + b"]" * 1000)))
@example(case=Case(_with(_CHARGE, b'"visa"', b"[" * 1024 + b"]" * 1024), residual=True))
# duplicate keys (the last wins in both), escaped keys
@example(case=Case(_with(_CHARGE, b'"amount":1190', b'"amount":1190,"amount":"x"')))
@example(case=Case(_with(_CHARGE, b'"amount":1190', b'"amount":"x","amount":1190')))
@example(case=Case(_with(_CHARGE, b'"object":"charge"', b'"object":"charge","object":"invoice"')))
@example(case=Case(_with(_CHARGE, b'"id":"ch_1"', b'"\\u0069d":"ch_1"')))
@example(case=Case(_with(_CHARGE, b'"object":"charge"', b'"object":"\\u0063harge"')))
# ids expanded, `invoice` null or absent, an empty parent, a line without parent type
@example(case=Case(_with(_CHARGE, b'"invoice":"in_1"', b'"invoice":{"id":"in_1","object":"invoice"}')))
@example(case=Case(_with(_CHARGE, b'"invoice":"in_1"', b'"invoice":{"id":""}')))
@example(case=Case(_with(_CHARGE, b'"invoice":"in_1"', b'"invoice":null')))
@example(case=Case(_with(_INVOICE, b'"parent":{"type":"subscription_item_details"',
                         b'"parent":{},"x":{"type":"subscription_item_details"')))
@example(case=Case(_with(_INVOICE, b'"parent":{"type":"subscription_item_details"',
                         b'"parent":{"type":null},"x":{"type":"subscription_item_details"')))
@example(case=Case(_with(_INVOICE, b'"amount_paid":5000', b'"amount_paid":1000000000000001')))
@example(case=Case(_with(_CUSTOMER, b'"object":"customer"', b'"object":null')))
@example(case=Case(_with(_CUSTOMER, b'"api_version":"2024-06-20"', b'"api_version":20240620')))
def test_the_fast_path_equals_the_precise_path(case: Case) -> None:
    if _orjson_accepts(case.raw) or not case.residual:
        assert _outcome(parse_event, case.raw) == _outcome(precise_parse_event, case.raw)


def test_every_base_body_takes_the_fast_path() -> None:
    """The fast path reads what the bench and the samples send (it is not only ever falling
    back), as the precise path does."""
    from schemas import stripe, stripe_wire

    fast = 0
    for doc in BASES:
        raw = _dump(doc)
        try:
            expected = precise_parse_event(raw)
        except StripeParseError:
            continue  # a refund object sent as `charge.refunded`
        if expected.object is None:
            continue  # a type the rules do not read
        assert stripe._fast_event(stripe_wire.decode_event(raw)) == expected
        fast += 1
    assert fast >= 30


@pytest.mark.parametrize("token", RESIDUAL, ids=["1e400", "-1E+999", "400 digits", "nesting 1100"])
@pytest.mark.parametrize("read", [False, True], ids=["unread", "read"])
def test_the_documented_residual_difference(token: bytes, read: bool) -> None:
    """docs/performance.md#decoding-with-msgspec: a body orjson refuses only for a number
    beyond a double's range, or nesting deeper than its limit, in a field the rules never read,
    is read by the fast path (as the body without that field); in a field read, both refuse it
    alike. Nesting that deep is refused by msgspec too while Python's recursion limit is the
    default, so it only reads it when the limit was raised."""
    body = (_with(_CHARGE, b'"amount":1190', b'"amount":' + token) if read
            else _with(_CHARGE, b'"visa"', token))
    assert not _orjson_accepts(body)
    precise = _outcome(precise_parse_event, body)
    assert precise[:3] == ("error", StripeParseError, "$") and "not JSON" in precise[3]
    if read:
        assert _outcome(parse_event, body) == precise
        return
    without = _outcome(precise_parse_event, _with(_CHARGE, b'"visa"', b'"x"'))
    if token != DEEP:
        assert _outcome(parse_event, body) == without
        return
    limit = sys.getrecursionlimit()
    try:
        sys.setrecursionlimit(1000)  # Python's default: msgspec refuses it first
        assert _outcome(parse_event, body) == precise
        sys.setrecursionlimit(10_000)  # raised (hypothesis raises it while it runs a test)
        assert _outcome(parse_event, body) == without
    finally:
        sys.setrecursionlimit(limit)
