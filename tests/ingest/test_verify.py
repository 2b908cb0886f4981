"""The pure checks in ingest/verify.py: signature, freshness, envelope, record key."""

from __future__ import annotations

import pytest

from ingest.verify import Rejection, check_envelope, record_key, verify_signature
from tests.conftest import sign

SECRET = "whsec_unit_0123456789"
NOW = 1_800_000_000


def _verify(body: bytes, header: str | None, secrets: tuple[str, ...] = (SECRET,), now: float = NOW) -> None:
    verify_signature(body, header, secrets, env="sandbox", now=now, tolerance_s=300)


def test_a_fresh_signature_by_any_configured_secret_verifies() -> None:
    body = b'{"id": "evt_1"}'
    _verify(body, sign(body, SECRET, timestamp=NOW), secrets=("whsec_new", SECRET))
    _verify(body, sign(body, SECRET, timestamp=NOW - 300))  # at the edge of the tolerance


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (None, "missing_signature"),
        ("", "missing_signature"),
        ("v1=abc", "malformed_signature"),
        ("t=abc,v1=abc", "malformed_signature"),
        (f"t={NOW},v0=abc", "no_v1_signature"),
        (f"t={NOW},v1=" + "0" * 64, "signature_mismatch"),
    ],
)
def test_bad_headers_are_named(header: str | None, code: str) -> None:
    with pytest.raises(Rejection) as info:
        _verify(b"{}", header)
    assert (info.value.status, info.value.code) == (400, code)


def test_a_stale_signature_is_refused_even_when_it_matches() -> None:
    body = b"{}"
    with pytest.raises(Rejection) as info:
        _verify(body, sign(body, SECRET, timestamp=NOW - 301))
    assert info.value.code == "stale_timestamp"


def test_the_secret_never_appears_in_a_refusal() -> None:
    with pytest.raises(Rejection) as info:
        _verify(b"{}", sign(b"{}", "whsec_other", timestamp=NOW))
    assert SECRET not in info.value.message and "whsec_other" not in info.value.message


def test_envelope_gives_id_type_and_customer_key() -> None:
    body = (b'{"id": "evt_1", "object": "event", "type": "invoice.paid", "livemode": false,'
            b' "data": {"object": {"id": "in_1", "customer": "cus_1"}}}')
    envelope = check_envelope(body, env="sandbox")
    assert (envelope.event_id, envelope.event_type, envelope.key, envelope.handled) == (
        "evt_1", "invoice.paid", "cus_1", True)
    with pytest.raises(Rejection) as info:
        check_envelope(body, env="production")
    assert info.value.code == "livemode_mismatch"


@pytest.mark.parametrize(
    ("obj", "key"),
    [
        ({"id": "in_1", "customer": "cus_1"}, "cus_1"),
        ({"id": "in_1", "customer": {"id": "cus_2", "object": "customer"}}, "cus_2"),
        ({"id": "cus_3", "object": "customer"}, "cus_3"),
        ({"id": "ch_1", "customer": None}, "ch_1"),
        ({"customer": None}, "evt_x"),
    ],
)
def test_record_key(obj: dict[str, object], key: str) -> None:
    assert record_key("x", obj, "evt_x") == key
