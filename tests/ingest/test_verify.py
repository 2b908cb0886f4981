"""The pure checks in ingest/verify.py: signature, freshness, envelope, record key."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from ingest.verify import Rejection, check_envelope, parse_signature_header, record_key, verify_signature
from schemas.stripe import StripeParseError, parse_event, read_envelope
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
            b' "created": 1800000000, "data": {"object": {"id": "in_1", "customer": "cus_1"}}}')
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


# --- the signature header's grammar (SECURITY.md) ----------------------------------------------

SECURITY = Path(__file__).resolve().parents[2] / "SECURITY.md"
HEX64 = "0123456789abcdef" * 4


def _security_examples() -> list[tuple[str, str | None]]:
    text = SECURITY.read_text()
    block = text.split("<!-- signature-examples -->", 1)[1].split("<!-- /signature-examples -->", 1)[0]
    lines = [line for line in block.splitlines() if line.strip() and not line.startswith("```")]
    examples: list[tuple[str, str | None]] = []
    for line in lines:
        verdict, _, header = line.partition(" ")
        header = header.strip().replace("<hex64>", HEX64).replace("<HEX64>", HEX64.upper())
        examples.append((verdict, header or None))
    return examples


EXAMPLES = _security_examples()


def test_security_md_lists_examples_of_every_verdict() -> None:
    verdicts = {verdict for verdict, _ in EXAMPLES}
    assert verdicts == {"accepted", "missing_signature", "no_v1_signature", "malformed_signature"}
    assert len(EXAMPLES) >= 20


@pytest.mark.parametrize(("verdict", "header"), EXAMPLES, ids=[f"{v}: {h}" for v, h in EXAMPLES])
def test_the_grammar_in_security_md_is_the_grammar_in_the_code(verdict: str, header: str | None) -> None:
    if verdict == "accepted":
        timestamp, v1, _ = parse_signature_header(header)
        assert timestamp == 1_800_000_000 and v1
        return
    with pytest.raises(Rejection) as info:
        parse_signature_header(header)
    assert (info.value.status, info.value.code) == (400, verdict)
    if header:
        assert header not in info.value.message  # the header is never quoted back


@pytest.mark.parametrize("age_s", [1_000, 30 * 86_400, 5 * 365 * 86_400])
@pytest.mark.parametrize("extra", [",t={now}", ", t={now}", ",t={now},v1=" + "0" * 64])
def test_an_old_signature_with_a_fresh_t_added_is_refused(age_s: int, extra: str) -> None:
    """The replay-window bypass: the library verified the first (old) `t`, freshness read the
    last (new) one."""
    body = b'{"id": "evt_replayed"}'
    captured = sign(body, SECRET, timestamp=NOW - age_s)
    with pytest.raises(Rejection) as info:
        _verify(body, captured + extra.format(now=NOW))
    assert info.value.code == "malformed_signature"
    assert "more than one `t`" in info.value.message or "item" in info.value.message


def test_a_genuine_header_with_a_stale_t_added_is_malformed_not_stale() -> None:
    body = b"{}"
    with pytest.raises(Rejection) as info:
        _verify(body, sign(body, SECRET, timestamp=NOW) + f",t={NOW - 10**6}")
    assert info.value.code == "malformed_signature"


@pytest.mark.parametrize(
    "t_text",
    [
        "0" * 3990 + str(NOW),  # 4,000 digits, int() reads them as NOW
        str(NOW).translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")),  # Arabic-Indic digits
        f"+{NOW}",
        f"{str(NOW)[:1]}_{str(NOW)[1:]}",
        f"0{NOW}",
        f"{NOW}.0",
        f"{NOW} ",
    ],
    ids=["4000 digits", "arabic-indic", "plus sign", "underscore", "leading zero", "decimal", "space"],
)
def test_a_t_that_int_would_read_as_now_is_still_refused(t_text: str) -> None:
    # the library signs "%d." % int(t): these all verify against a signature made for NOW
    body = b"{}"
    mac = sign(body, SECRET, timestamp=NOW).split("v1=")[1]
    with pytest.raises(Rejection) as info:
        _verify(body, f"t={t_text},v1={mac}")
    assert info.value.code == "malformed_signature"


def test_a_signature_from_the_future_is_refused_beyond_the_tolerance() -> None:
    body = b"{}"
    _verify(body, sign(body, SECRET, timestamp=NOW + 300))  # a clock a little ahead: fine
    with pytest.raises(Rejection) as info:
        _verify(body, sign(body, SECRET, timestamp=NOW + 301))
    assert info.value.code == "future_timestamp"
    assert "ahead" in info.value.message and "NTP" in info.value.message


@pytest.mark.parametrize("v1", ["é", "é" * 64, "ａ" * 64, "\udcff" * 64],
                         ids=["e-acute", "64 e-acute", "fullwidth a", "surrogate"])
def test_a_non_ascii_v1_is_refused_not_a_crash(v1: str) -> None:
    # hmac.compare_digest raised TypeError on these inside the stripe library
    with pytest.raises(Rejection) as info:
        _verify(b"{}", f"t={NOW},v1={v1}")
    assert info.value.code == "malformed_signature"


def test_an_overlong_header_is_refused_without_quoting_it() -> None:
    header = f"t={NOW}," + ",".join(["v1=" + HEX64] * 20)
    assert len(header) > 1024
    with pytest.raises(Rejection) as info:
        _verify(b"{}", header)
    assert info.value.code == "malformed_signature" and HEX64 not in info.value.message


# --- the envelope: what the worker needs is checked at ingest ---------------------------------

GOOD_EVENT = {"id": "evt_1", "object": "event", "type": "invoice.paid", "livemode": False,
              "created": 1_800_000_000, "data": {"object": {"id": "in_1", "customer": "cus_1"}}}
_DROP = object()
ENVELOPE_CASES = [
    ("created", _DROP), ("created", None), ("created", "1800000000"), ("created", 1.5), ("created", True),
    ("type", _DROP), ("type", ""), ("type", 7),
    ("id", _DROP), ("id", 123),
    ("livemode", _DROP), ("livemode", "false"),
    ("data", _DROP), ("data", {}), ("data", {"object": None}), ("data", {"object": []}),
]


@pytest.mark.parametrize(("field", "value"), ENVELOPE_CASES,
                         ids=[f"{f}={'missing' if v is _DROP else repr(v)}" for f, v in ENVELOPE_CASES])
def test_an_envelope_the_worker_would_set_aside_is_refused_naming_the_field(field: str, value: object
                                                                           ) -> None:
    doc = dict(GOOD_EVENT)
    if value is _DROP:
        del doc[field]
    else:
        doc[field] = value
    body = orjson.dumps(doc)
    if field != "livemode":  # the worker takes a missing livemode as false; ingest wants it said
        with pytest.raises(StripeParseError):  # the premise: the worker would dead-letter it
            parse_event(body)
    with pytest.raises(Rejection) as info:
        check_envelope(body, env="sandbox")
    assert (info.value.status, info.value.code) == (400, "not_an_event")
    assert f'"{field}' in info.value.message


def test_the_envelope_check_accepts_what_the_worker_reads() -> None:
    envelope = check_envelope(orjson.dumps(GOOD_EVENT), env="sandbox")
    assert (envelope.event_id, envelope.event_type) == read_envelope(GOOD_EVENT)[:2]
