"""Fuzz the webhook endpoint: whatever is sent, never a 5xx, never an unverified byte in Kafka.

Six families of requests, each a function of a `random.Random` (hypothesis drives it here,
`bench/fuzz.py` drives the same functions with a seeded one for 100,000+ cases):

- `valid`: genuine deliveries with fuzzed contents and harmless extra headers: must be 200 and stored;
- `hostile`: random methods, paths, headers, signatures, bodies (encodings, sizes, nesting);
- `raw_http`: HTTP at the byte level: broken request lines and headers, bare LFs, folded
  headers, Content-Length/Transfer-Encoding conflicts, chunk sizes, pipelining, smuggling
  attempts, long and many headers, TLS and binary garbage;
- `signature`: the `Stripe-Signature` grammar (SECURITY.md): a correctly signed body with a
  header reshaped; only the forms the grammar allows may be stored;
- `encoding`: Content-Encoding and Transfer-Encoding: only `identity` (or none) and plain
  `chunked` may pass, compressed bodies and bombs are refused with 415;
- `strange_body`: correctly signed bodies that are odd JSON or not JSON at all.

Oracle, per answer: no 5xx; every answer JSON (except /metrics); no header value echoed;
each family's expected status. Afterwards, over the log: every record is a body signed with
that environment's secret and a fresh timestamp (unverified bytes written: 0), was answered
200 (or its sender left before any answer: a complete delivery is stored even when its answer
is lost, as it must be), never refused, and has the envelope the worker needs; every genuine
delivery answered 200 is there.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from random import Random

import orjson
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from schemas.stripe import READ_TYPES, StripeParseError, read_envelope
from schemas.topics import Topics
from tests.conftest import FIXTURES, sign
from tests.faults.conftest import Reliability, ingest_server
from tests.ingest.helpers import (
    PRODUCTION_SECRET,
    SANDBOX_OLD_SECRET,
    SANDBOX_SECRET,
    envelope,
    make_topics,
    read_topic,
    settings,
)

EXAMPLES = 600
LIMIT = 16 * 1024  # the bounded run's REFSTREAM_MAX_BODY_BYTES
CUSTOMER = json.loads((FIXTURES / "current" / "customer.json").read_text())
SECRETS = {"sandbox": SANDBOX_SECRET, "production": PRODUCTION_SECRET}
TOLERANCE_S = 300
ENVS = ("sandbox", "production")
CUSTOMER_TYPES = ("customer.created", "customer.updated", "customer.deleted")


@dataclass
class Case:
    family: str
    data: bytes  # sent byte for byte
    kind: str = ""  # which variant of the family
    signed: list[tuple[str, bytes]] = field(default_factory=list)  # (env, body) signed right and fresh
    must_store: tuple[str, bytes] | None = None  # genuine: answered 200 and in that topic
    expect: frozenset[int] | None = None  # the first final answer must be one of these
    may_go_unanswered: bool = False  # the request may be incomplete or not HTTP at all
    half_close: bool = False  # incomplete on purpose: end the sending side after it
    no_echo: bytes | None = None  # must not appear in any answer


@dataclass(frozen=True)
class Context:
    """What a family needs to know about the ingest it is sent to."""

    limit: int = LIMIT
    now: Callable[[], float] = time.time
    customers: int | None = None  # draw customer ids from this many (None: all distinct)


# --- building requests ---------------------------------------------------------------------


def request(method: str, path: str, headers: list[tuple[str, str]], body: bytes, *,
            version: str = "HTTP/1.1", content_length: bool = True, close: bool = True) -> bytes:
    lines = [f"{method} {path} {version}", "Host: 127.0.0.1"]
    if close:
        lines.append("Connection: close")
    lines += [f"{name}: {value}" for name, value in headers]
    if content_length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body


def _text(rng: Random, size: int, alphabet: str = "abcdefghijklmnopqrstuvwxyz0123456789 _-é€\u202e😀") -> str:
    return "".join(rng.choice(alphabet) for _ in range(size))


def _header_value(rng: Random, size: int) -> str:
    # visible latin-1 and spaces, as a client could send them
    return "".join(chr(rng.choice([rng.randint(32, 126), rng.randint(160, 255)])) for _ in range(size))


def genuine_body(rng: Random, env: str, *, event_type: str | None = None, event_id: str | None = None,
                 compact: bool | None = None, customers: int | None = None) -> bytes:
    number = rng.getrandbits(48) if customers is None else rng.randrange(customers)
    customer = {**CUSTOMER, "id": f"cus_fz{number:x}",
                "metadata": {_text(rng, rng.randint(0, 8)): _text(rng, rng.randint(0, 20))
                             for _ in range(rng.randint(0, 3))}}
    doc = envelope(customer, event_type or rng.choice(CUSTOMER_TYPES), livemode=env == "production",
                   event_id=event_id or f"evt_fz{rng.getrandbits(64):x}")
    if compact if compact is not None else rng.random() < 0.5:
        return orjson.dumps(doc)
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"


def _mac(header: str) -> str:
    return header.split("v1=")[1]


# --- the families ------------------------------------------------------------------------------


def valid(rng: Random, ctx: Context) -> Case:
    env = rng.choice(ENVS)
    body = genuine_body(rng, env, customers=ctx.customers)
    secret = SANDBOX_OLD_SECRET if env == "sandbox" and rng.random() < 0.2 else SECRETS[env]
    signature = sign(body, secret)
    # harmless extras, one of each (aiohttp rightly refuses a repeated User-Agent or Content-Type)
    extra = [(name, _header_value(rng, rng.randint(0, 60)).strip() or "x")
             for name in rng.sample(["X-Junk", "User-Agent", "Content-Type", "Accept"], rng.randint(0, 3))]
    headers = [("Stripe-Signature", signature), *extra]
    rng.shuffle(headers)
    return Case("valid", request("POST", f"/webhooks/stripe/{env}", headers, body), kind="genuine",
                signed=[(env, body)], must_store=(env, body), expect=frozenset({200}),
                no_echo=_mac(signature).encode())


def _hostile_body(rng: Random, ctx: Context) -> bytes:
    kind = rng.choice(["event", "mutated_event", "json", "text", "binary", "huge", "deep", "empty"])
    if kind == "event":
        obj = rng.choice([CUSTOMER, {"id": "ch_1", "object": "charge", "customer": None}, {}])
        doc = envelope(obj, rng.choice(["customer.created", "invoice.paid", "plan.created", ""]),
                       livemode=rng.random() < 0.5, event_id=rng.choice(["evt_fz", "evt_", "x"]))
        return orjson.dumps(doc)
    if kind == "mutated_event":
        doc = envelope(CUSTOMER, "customer.updated", livemode=False, event_id=f"evt_m{rng.getrandbits(32)}")
        doc[rng.choice(["id", "object", "type", "data", "livemode", "created"])] = rng.choice(
            [None, True, 0, -1, 1.5, "", "x", [], {}, {"object": {}}, "evt_x", 2**63])
        return json.dumps(doc).encode(rng.choice(["utf-8", "utf-16", "utf-32"]))
    if kind == "json":
        return json.dumps(rng.choice([None, True, 1, "s", [1, 2], {"a": {"b": []}}])).encode()
    if kind == "text":
        return _text(rng, rng.randint(0, 300)).encode(rng.choice(["utf-8", "utf-16-le", "latin-1"]),
                                                      errors="replace")
    if kind == "binary":
        return rng.randbytes(rng.randint(0, 2000))
    if kind == "huge":
        return b"{" + b" " * rng.randint(ctx.limit - 10, ctx.limit + 2000) + b"}"
    if kind == "deep":
        depth = rng.randint(100, 5000)
        return b"[" * depth + b"]" * depth
    return b""


def hostile(rng: Random, ctx: Context) -> Case:
    body = _hostile_body(rng, ctx)
    env = rng.choice(["sandbox", "production", "staging", "", "sandbox/../production", "%00"])
    method = rng.choice(["POST", "POST", "POST", "GET", "PUT", "DELETE", "OPTIONS"])
    now = int(ctx.now())
    signing = rng.choice(["right", "right", "stale", "wrong", "other_env", "random", "none", "v0",
                          "garbage", "several"])
    secret = PRODUCTION_SECRET if env == "production" else SANDBOX_SECRET
    signature: str | None
    if signing == "right":
        signature = sign(body, secret)
    elif signing == "stale":
        signature = sign(body, secret, timestamp=now - rng.randint(TOLERANCE_S + 60, 10**9))
    elif signing == "wrong":
        signature = sign(body, "whsec_" + _text(rng, rng.randint(1, 30)))
    elif signing == "other_env":
        signature = sign(body, SANDBOX_SECRET if env == "production" else PRODUCTION_SECRET)
    elif signing == "random":
        signature = f"t={rng.randint(-(10**12), 10**12)},v1={rng.randbytes(32).hex()}"
    elif signing == "v0":
        signature = sign(body, secret, scheme="v0")
    elif signing == "garbage":
        signature = _header_value(rng, rng.randint(0, 200)).strip()
    elif signing == "several":
        signature = sign(body, secret) + ",v1=" + "0" * 64 + ",t=" + rng.choice(["", "1", "x", str(now)])
    else:
        signature = None
    headers = [] if signature is None else [("Stripe-Signature", signature)]
    headers += [(rng.choice(["X-Junk", "Content-Type", "Expect", "User-Agent", "Accept-Encoding"]),
                 _header_value(rng, rng.randint(0, 200)).strip() or "x") for _ in range(rng.randint(0, 3))]
    case = Case("hostile", request(method, f"/webhooks/stripe/{env}", headers, body), kind=signing)
    if signing == "right" and env in ENVS and method == "POST":
        case.signed.append((env, body))
    if signing in ("stale", "wrong", "other_env", "random", "v0", "none", "several") and method == "POST":
        case.expect = frozenset({400, 404, 405, 413, 417})  # never stored, whatever the body
    return case


_VERSIONS = ["HTTP/1.0", "HTTP/0.9", "HTTP/2.0", "HTTP/1.2", "HTTP/11", "http/1.1", "HTTP/1.1x", "HTTP/"]
_METHODS = ["get", "PRI", "CONNECT", "TRACE", "PO ST", "P\x00ST", "POST\t", "X" * 300, "", "Pöst"]
_TARGETS = ["*", "http://127.0.0.1/webhooks/stripe/sandbox", "/webhooks/stripe/sandbox?x=1",
            "/webhooks//stripe/sandbox", "/webhooks/stripe/sandbox#f", "/%2e%2e/webhooks/stripe/sandbox",
            "/webhooks/stripe/sand%62ox", "/" + "a" * 9000, "webhooks/stripe/sandbox", "/\x00",
            "/webhooks/stripe/sandbox\x7f", "/webhooks/stripe/sändbox"]
_TE = ["chunked", " chunked", "chunked, chunked", "identity", "gzip, chunked", "CHUNKED", "chunked\x0b",
       "chunked;q=1", "x-chunked", ""]
_CL = ["+5", "0x10", "-1", "1e3", "99999999999999999999", " 12 ", "12, 12", "", "٣"]
_TLS_HELLO = bytes.fromhex("16030100a5010000a10303") + bytes(32) + b"\x00\x00\x02\x13\x01\x01\x00"


def _chunked(rng: Random, body: bytes, *, odd: bool = True) -> bytes:
    """`body` in chunks of random sizes; `odd`: sizes written in ways a parser may refuse."""
    out = bytearray()
    i = 0
    while i < len(body):
        n = rng.randint(1, max(1, len(body) - i))
        size = f"{n:x}"
        if odd:
            size = rng.choice([size, size.upper(), "0" * rng.randint(1, 3) + size, size + ";ext=1",
                               size + " ", size])
        out += size.encode() + b"\r\n" + body[i:i + n] + b"\r\n"
        i += n
    trailers = [b"", b"X-Trailer: 1\r\n", b"Stripe-Signature: t=1,v1=00\r\n"] if odd else [b""]
    out += b"0\r\n" + rng.choice(trailers) + b"\r\n"
    return bytes(out)


def raw_http(rng: Random, ctx: Context) -> Case:
    """A genuine delivery, then broken at the byte level."""
    env = rng.choice(ENVS)
    body = genuine_body(rng, env, compact=True, customers=ctx.customers)
    signature = sign(body, SECRETS[env])
    path = f"/webhooks/stripe/{env}"
    sig = ("Stripe-Signature", signature)
    case = Case("raw_http", b"", signed=[(env, body)], may_go_unanswered=True,
                no_echo=_mac(signature).encode())
    kind = case.kind = rng.choice([
        "flip", "insert", "delete", "bare_lf", "obs_fold", "version", "method", "target", "cl_te",
        "double_cl", "bad_cl", "cl_short", "cl_long", "chunked", "chunked_broken", "long_line",
        "many_headers", "dup_headers", "pipelined", "smuggle", "tls", "garbage", "leading_crlf",
        "nul_in_value", "expect", "upgrade", "space_before_colon", "no_host",
    ])
    if kind in ("flip", "insert", "delete", "bare_lf"):
        head, _, _ = request("POST", path, [sig], body).partition(b"\r\n\r\n")
        data = bytearray(head)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(data))
            if kind == "flip":
                data[at] = rng.choice([0, 9, 10, 13, 32, 58, 127, 128, 255, rng.randint(0, 255)])
            elif kind == "insert":
                data[at:at] = rng.choice([b"\r", b"\n", b"\x00", b":", b" ", b"\xff", b"\r\n", b"\r\n ",
                                          rng.randbytes(rng.randint(1, 8))])
            elif kind == "delete":
                del data[at:at + rng.randint(1, 6)]
            else:
                data = bytearray(bytes(data).replace(b"\r\n", b"\n", rng.randint(1, 3)))
        case.data = bytes(data) + b"\r\n\r\n" + body
    elif kind == "obs_fold":
        case.data = request("POST", path, [("X-A", "a\r\n folded"), sig], body)
    elif kind == "version":
        case.data = request("POST", path, [sig], body, version=rng.choice(_VERSIONS))
    elif kind == "method":
        case.data = request(rng.choice(_METHODS), path, [sig], body)
    elif kind == "target":
        case.data = request("POST", rng.choice(_TARGETS), [sig], body)
    elif kind == "cl_te":
        headers = [sig, ("Transfer-Encoding", rng.choice(_TE))]
        rng.shuffle(headers)
        case.data = request("POST", path, headers, _chunked(rng, body) if rng.random() < 0.5 else body)
    elif kind == "double_cl":
        extra = rng.choice([len(body), len(body) + 1, 0])
        case.data = request("POST", path, [sig, ("Content-Length", str(extra))], body)
    elif kind == "bad_cl":
        case.data = request("POST", path, [sig, ("Content-Length", rng.choice(_CL))], body,
                            content_length=False)
    elif kind == "cl_short":  # the rest of the body would be read as the next request
        cut = rng.randint(0, len(body))
        case.data = request("POST", path, [sig, ("Content-Length", str(cut))], body, content_length=False)
    elif kind == "cl_long":  # never completes: the sender stops
        case.data = request("POST", path, [sig, ("Content-Length", str(len(body) + rng.randint(1, 500)))],
                            body, content_length=False)
        case.half_close = True
    elif kind == "chunked":
        case.data = request("POST", path, [sig, ("Transfer-Encoding", "chunked")], _chunked(rng, body),
                            content_length=False)
    elif kind == "chunked_broken":
        chunked = bytearray(_chunked(rng, body))
        at = rng.randrange(len(chunked))
        broken = rng.choice([chunked[:at], chunked[:at] + b"zz\r\n" + chunked[at:],
                             chunked.replace(b"\r\n", b"\n", 1), chunked[:-5]])
        case.data = request("POST", path, [sig, ("Transfer-Encoding", "chunked")], bytes(broken),
                            content_length=False)
        case.half_close = True
    elif kind == "long_line":
        case.data = request("POST", path, [sig, ("X-Long", "a" * rng.randint(8000, 12000))], body)
    elif kind == "many_headers":
        case.data = request("POST", path, [sig, *((f"X-H{i}", "v") for i in range(rng.randint(100, 300)))],
                            body)
    elif kind == "dup_headers":
        dup = rng.choice([("Host", "other"), ("Content-Type", "text/plain"), sig,
                          ("Stripe-Signature", sign(body, SECRETS[env], timestamp=int(ctx.now()) - 10**6))])
        case.data = request("POST", path, [sig, dup], body)
    elif kind == "pipelined":
        first = request("POST", path, [sig], body, close=False)
        second = rng.choice([raw_http, valid, None])
        inner = second(rng, ctx) if second else Case("", b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        case.signed += inner.signed
        case.data = first + inner.data
    elif kind == "smuggle":
        hidden = valid(rng, ctx)
        case.signed += hidden.signed
        smuggled = b"0\r\n\r\n" + hidden.data
        case.data = request("POST", path, [sig, ("Transfer-Encoding", "chunked")], smuggled)
    elif kind == "tls":
        case.data = _TLS_HELLO + rng.randbytes(rng.randint(0, 200))
    elif kind == "garbage":
        case.data = rng.randbytes(rng.randint(1, 3000)) + b"\r\n\r\n"
    elif kind == "leading_crlf":
        case.data = b"\r\n" * rng.randint(1, 5) + request("POST", path, [sig], body)
    elif kind == "nul_in_value":
        case.data = request("POST", path, [sig, ("X-Nul", "a\x00b")], body)
    elif kind == "expect":
        value = rng.choice(["100-continue", "100-CONTINUE", "100-continue, foo", "\x80", "", "200-ok"])
        case.data = request("POST", path, [sig, ("Expect", value)], body)
    elif kind == "upgrade":
        case.data = request("POST", path, [sig, ("Connection", "Upgrade"),
                                           ("Upgrade", rng.choice(["websocket", "h2c", "x"]))], body)
    elif kind == "space_before_colon":
        case.data = request("POST", path, [sig], body).replace(b"Stripe-Signature:", b"Stripe-Signature :")
    else:  # no_host
        case.data = request("POST", path, [sig], body).replace(b"Host: 127.0.0.1\r\n", b"")
    return case


def _signature_variant(rng: Random, body: bytes, env: str, now: int) -> tuple[str, list[str], bool]:
    """(kind, Stripe-Signature values, whether the grammar and the clock accept them)."""
    good = sign(body, SECRETS[env], timestamp=now)
    t, mac = f"t={now}", _mac(good)
    hexx = rng.randbytes(32).hex()
    accepted = {
        "canonical": [good],
        "v1 first": [f"v1={mac},{t}"],
        "extra v1": [f"{t},v1={hexx},v1={mac}"],
        "with v0": [f"{good},v0={hexx}"],
        "unknown scheme": [f"{good},v9=abc"],
        "rotated secret": [sign(body, SANDBOX_OLD_SECRET, timestamp=now)] if env == "sandbox" else [good],
    }
    old = now - rng.randint(TOLERANCE_S + 60, 5 * 365 * 86_400)
    stale = sign(body, SECRETS[env], timestamp=old)
    digits = str(now)
    refused = {
        "stale then fresh t": [f"{stale},t={now}"],
        "fresh then stale t": [f"{good},t={old}"],
        "t twice, same": [f"{good},{t}"],
        "space": [good.replace(",", rng.choice([", ", " ,", ",\t"]))],
        "space around =": [good.replace("=", " =", 1)],
        "leading zero": [f"t=0{digits},v1={mac}"],
        "plus": [f"t=+{digits},v1={mac}"],
        "underscore": [f"t={digits[:4]}_{digits[4:]},v1={mac}"],
        "arabic-indic": [f"t={digits.translate(str.maketrans('0123456789', '٠١٢٣٤٥٦٧٨٩'))},v1={mac}"],
        "4000 digits": [f"t={'0' * (4000 - len(digits))}{digits},v1={mac}"],
        "13 digits": [f"t={now * 1000},v1={mac}"],
        "negative": [f"t=-{digits},v1={mac}"],
        "decimal": [f"t={digits}.0,v1={mac}"],
        "empty t": [f"t=,v1={mac}"],
        "no t": [f"v1={mac}"],
        "future": [sign(body, SECRETS[env], timestamp=now + rng.randint(TOLERANCE_S + 60, 10**9))],
        "stale": [stale],
        "v1 not hex": [f"{t},v1={mac[:-1]}g"],
        "v1 non-ASCII": [f"{t},v1={rng.choice(['é', 'é' * 64, 'ａ' * 64, mac[:-1] + 'é'])}"],
        "v1 63": [f"{t},v1={mac[:-1]}"],
        "v1 65": [f"{t},v1={mac}0"],
        "v1 empty": [f"{t},v1="],
        "v1 uppercase": [f"{t},v1={mac.upper()}"],
        "empty item": [good.replace(",", ",,")],
        "trailing comma": [good + ","],
        "leading comma": ["," + good],
        "T": [f"T={digits},v1={mac}"],
        "V1": [f"{t},V1={mac}"],
        "scheme without value": [f"{good},v0"],
        "non-ASCII value": [f"{good},v0=ü"],
        "semicolons": [good.replace(",", ";")],
        "over 1024 characters": [good + "".join(f",v0={hexx}" for _ in range(16))],
        "two headers": [good, stale] if rng.random() < 0.5 else [stale, good],
        "only v0": [sign(body, SECRETS[env], timestamp=now, scheme="v0")],
        "wrong secret": [sign(body, "whsec_" + hexx, timestamp=now)],
    }
    if rng.random() < 0.25:
        kind = rng.choice(sorted(accepted))
        return kind, accepted[kind], True
    kind = rng.choice(sorted(refused))
    return kind, refused[kind], False


def signature(rng: Random, ctx: Context) -> Case:
    env = rng.choice(ENVS)
    body = genuine_body(rng, env, customers=ctx.customers)
    kind, values, ok = _signature_variant(rng, body, env, int(ctx.now()))
    data = request("POST", f"/webhooks/stripe/{env}", [("Stripe-Signature", v) for v in values], body)
    case = Case("signature", data, kind=kind, signed=[(env, body)],
                expect=frozenset({200}) if ok else frozenset({400}), no_echo=values[0][-40:].encode())
    if ok:
        case.must_store = (env, body)
    return case


_BOMBS: dict[str, bytes] = {}


def _bomb(encoding: str) -> bytes:
    """~100 KB on the wire, 100 MB once inflated (made once per process)."""
    if encoding not in _BOMBS:
        zeros = b"\0" * 100_000_000
        _BOMBS[encoding] = gzip.compress(zeros, 9) if encoding == "gzip" else zlib.compress(zeros, 9)
    return _BOMBS[encoding]


def encoding(rng: Random, ctx: Context) -> Case:
    env = rng.choice(ENVS)
    body = genuine_body(rng, env, customers=ctx.customers)
    content_encodings: list[str] = rng.choice([
        [], [], ["identity"], ["Identity"], [" identity "], ["IDENTITY"],
        ["gzip"], ["deflate"], ["br"], ["x-gzip"], ["compress"], ["zstd"], ["gzip, identity"],
        ["identity, gzip"], [""], ["gzip;q=1"], ["gz\x7fip"], ["gzïp"], ["identity", "gzip"],
        ["identity", "identity"],
    ])
    transfer = rng.choice([None, None, None, "chunked", "gzip, chunked", "deflate, chunked"])
    passes = all(v.strip().lower() == "identity" for v in content_encodings) and transfer in (None, "chunked")
    payload_kind = rng.choice(["raw", "gzip", "deflate", "truncated gzip", "bomb"] if not passes else ["raw"])
    if payload_kind == "raw":
        payload = body
    elif payload_kind == "gzip":
        payload = gzip.compress(body)
    elif payload_kind == "deflate":
        payload = zlib.compress(body)
    elif payload_kind == "truncated gzip":
        payload = gzip.compress(body)[: rng.randint(1, 30)]
    else:
        payload = _bomb(rng.choice(["gzip", "deflate"]))
    # signed over the bytes sent, or (what aiohttp used to verify and store) over the inflated ones
    signed_over = payload if rng.random() < 0.5 else body
    sig = sign(signed_over, SECRETS[env])
    headers = [("Stripe-Signature", sig), *(("Content-Encoding", v) for v in content_encodings)]
    if transfer:
        headers.append(("Transfer-Encoding", transfer))
        data = request("POST", f"/webhooks/stripe/{env}", headers, _chunked(rng, payload, odd=False),
                       content_length=False)
    else:
        data = request("POST", f"/webhooks/stripe/{env}", headers, payload)
    case = Case("encoding", data, kind=f"{content_encodings or 'none'} {transfer or ''} {payload_kind}",
                signed=[(env, signed_over)], no_echo=_mac(sig).encode())
    if passes:
        ok = signed_over == payload
        case.expect = frozenset({200}) if ok else frozenset({400})
        if ok:
            case.must_store = (env, body)
    else:
        # never 200; 400 when the value itself is no valid header (a DEL character)
        case.expect = frozenset({400, 413, 415})
    return case


def _strange(rng: Random, env: str, ctx: Context) -> tuple[str, bytes]:
    good = genuine_body(rng, env, compact=True, customers=ctx.customers)
    doc = orjson.loads(good)
    kind = rng.choice([
        "binary", "latin-1", "overlong utf-8", "utf-8 surrogate", "bom", "utf-16", "utf-32",
        "duplicate livemode", "duplicate id", "duplicate type", "duplicate object", "nan", "infinity",
        "huge int", "huge float", "deep", "missing field", "wrong type", "huge id", "huge type",
        "nul in string", "lone surrogate escape", "trailing garbage", "two documents", "whitespace",
        "empty", "top-level array", "top-level string", "null", "near the limit", "over the limit",
        "unicode", "livemode mismatch", "id not evt_", "unhandled type", "object not event",
    ])
    live = "true" if env == "production" else "false"
    other = "false" if env == "production" else "true"
    if kind == "binary":
        return kind, rng.randbytes(rng.randint(1, 3000))
    if kind == "latin-1":
        return kind, good.replace(b'"metadata":{', '"metadata":{"n":"é",'.encode("latin-1"))
    if kind == "overlong utf-8":
        return kind, good.replace(b'"metadata":{', b'"metadata":{"n":"\xc0\xaf",')
    if kind == "utf-8 surrogate":
        return kind, good.replace(b'"metadata":{', b'"metadata":{"n":"\xed\xa0\x80",')
    if kind == "bom":
        return kind, b"\xef\xbb\xbf" + good
    if kind in ("utf-16", "utf-32"):
        return kind, good.decode().encode(kind)
    if kind.startswith("duplicate"):
        key = kind.split()[1]
        value = {"livemode": other, "id": '"evt_dup"', "type": '"plan.created"', "object": '"charge"'}[key]
        first = rng.random() < 0.5
        text = good.decode()
        return kind, (text[0] + f'"{key}":{value},' + text[1:] if first else text[:-1] + f',"{key}":{value}}}'
                      ).encode()
    if kind == "nan":
        return kind, good.replace(b'"created":', b'"nan":NaN,"created":')
    if kind == "infinity":
        return kind, good.replace(b'"created":', b'"inf":-Infinity,"created":')
    if kind == "huge int":
        return kind, good.replace(b'"created":', b'"created":' + b"9" * rng.randint(20, 400) + b',"was":')
    if kind == "huge float":
        return kind, good.replace(b'"created":', b'"f":1e400,"created":')
    if kind == "deep":
        depth = rng.randint(200, 20000)
        return kind, good.replace(b'"metadata":{', b'"metadata":{"d":' + b"[" * depth + b"]" * depth + b",")
    if kind == "missing field":
        field_ = rng.choice(["id", "type", "created", "livemode", "data", "object"])
        del doc[field_]
        return kind + " " + field_, orjson.dumps(doc)
    if kind == "wrong type":
        field_ = rng.choice(["id", "type", "created", "livemode", "data"])
        doc[field_] = rng.choice([None, True, 1, 1.5, "1800000000", [], {}, {"object": []}])
        return kind + " " + field_, orjson.dumps(doc)
    if kind == "huge id":
        doc["id"] = "evt_" + "y" * rng.randint(1_000, min(ctx.limit // 2, 100_000))
        return kind, orjson.dumps(doc)
    if kind == "huge type":
        doc["type"] = "plan." + "x" * rng.randint(1_000, min(ctx.limit // 2, 100_000))
        return kind, orjson.dumps(doc)
    if kind == "nul in string":
        doc["data"]["object"]["metadata"]["n"] = "a\x00b"
        return kind, orjson.dumps(doc)
    if kind == "lone surrogate escape":
        return kind, good.replace(b'"metadata":{', b'"metadata":{"n":"\\ud800",')
    if kind == "trailing garbage":
        return kind, good + rng.choice([b"x", b"}", b"\x00", b",{}"])
    if kind == "two documents":
        return kind, good + b"\n" + good
    if kind == "whitespace":
        return kind, b" \t\r\n" * rng.randint(1, 10)
    if kind == "empty":
        return kind, b""
    if kind == "top-level array":
        return kind, b"[" + good + b"]"
    if kind == "top-level string":
        return kind, orjson.dumps(good.decode())
    if kind == "null":
        return kind, b"null"
    if kind in ("near the limit", "over the limit"):
        near = kind == "near the limit"
        target = ctx.limit - rng.randint(10, 200) if near else ctx.limit + rng.randint(1, 200)
        doc["data"]["object"]["metadata"]["pad"] = ""
        size = len(orjson.dumps(doc))
        doc["data"]["object"]["metadata"]["pad"] = "p" * max(0, target - size)
        return kind, orjson.dumps(doc)
    if kind == "unicode":
        doc["data"]["object"]["metadata"] = {"ä\u202e": "😀\u200b\ufeff", "name": "ﷺ" * 50}
        return kind, orjson.dumps(doc)
    if kind == "livemode mismatch":
        return kind, good.replace(f'"livemode":{live}'.encode(), f'"livemode":{other}'.encode())
    if kind == "id not evt_":
        doc["id"] = rng.choice(["cus_1", "", "EVT_1", "evt", " evt_1"])
        return kind, orjson.dumps(doc)
    if kind == "unhandled type":
        doc["type"] = rng.choice(["plan.created", "invoice.created", "customer.source.created", "x"])
        return kind, orjson.dumps(doc)
    doc["object"] = rng.choice(["charge", "", None, "Event"])  # object not event
    return kind, orjson.dumps(doc)


def strange_body(rng: Random, ctx: Context) -> Case:
    env = rng.choice(ENVS)
    kind, body = _strange(rng, env, ctx)
    sig = sign(body, SECRETS[env])
    return Case("strange_body", request("POST", f"/webhooks/stripe/{env}", [("Stripe-Signature", sig)], body),
                kind=kind, signed=[(env, body)], expect=frozenset({200, 400, 413}),
                no_echo=_mac(sig).encode())


FAMILIES: dict[str, Callable[[Random, Context], Case]] = {
    "valid": valid,
    "hostile": hostile,
    "raw_http": raw_http,
    "signature": signature,
    "encoding": encoding,
    "strange_body": strange_body,
}


# --- sending and judging -------------------------------------------------------------------------

_STATUS = re.compile(rb"HTTP/\d\.\d (\d{3}) ")  # ingest answers in the request's version


@dataclass
class Exchange:
    statuses: list[int]  # every final answer, in order (interim 100s left out)
    bodies: list[bytes]
    raw: bytes


def _parse(buf: bytes) -> tuple[list[int], list[bytes], bool]:
    """The complete answers in `buf`, and whether the last one said Connection: close."""
    statuses: list[int] = []
    bodies: list[bytes] = []
    closing = False
    at = 0
    while True:
        end = buf.find(b"\r\n\r\n", at)
        if end < 0:
            break
        head = buf[at:end]
        match = _STATUS.match(head)
        if not match:
            break
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
            if name.strip().lower() == b"connection" and value.strip().lower() == b"close":
                closing = True
        if len(buf) < end + 4 + length:
            break
        status = int(match[1])
        if status >= 200:
            statuses.append(status)
            bodies.append(buf[end + 4:end + 4 + length])
        at = end + 4 + length
    return statuses, bodies, closing


async def exchange(port: int, case: Case, *, timeout_s: float = 20.0, idle_s: float = 0.15) -> Exchange:
    """Send the case's bytes; read the answers until the server closes, or (after a complete
    keep-alive answer) nothing more comes within idle_s, or timeout_s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    buf = bytearray()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        try:
            writer.write(case.data)
            await writer.drain()
            if case.half_close:
                writer.write_eof()
        except (ConnectionResetError, BrokenPipeError):
            pass  # refused mid-send (e.g. an oversized header): read what was answered
        while True:
            statuses, _, closing = _parse(bytes(buf))
            wait = deadline - loop.time()
            if statuses and not closing:
                wait = min(wait, idle_s)
            if wait <= 0:
                break
            try:
                chunk = await asyncio.wait_for(reader.read(65536), wait)
            except TimeoutError:
                break
            if not chunk:
                break
            buf += chunk
    except (ConnectionResetError, BrokenPipeError):
        pass
    finally:
        writer.close()
    statuses, bodies, _ = _parse(bytes(buf))
    return Exchange(statuses, bodies, bytes(buf))


@dataclass
class Judge:
    """Checks every answer as it comes, and the log at the end; counts what a report needs."""

    failures: list[str] = field(default_factory=list)
    signed: dict[str, set[bytes]] = field(default_factory=lambda: {env: set() for env in ENVS})
    acknowledged: set[bytes] = field(default_factory=set)  # bodies some request got a 200 for
    # bodies whose sender saw no answer (it stopped sending, or its request never completed):
    # ingest may have stored them, as it stores any complete delivery whose answer is lost
    unanswered_bodies: set[bytes] = field(default_factory=set)
    must_store: dict[str, set[bytes]] = field(default_factory=lambda: {env: set() for env in ENVS})
    cases: Counter[str] = field(default_factory=Counter)
    statuses: dict[str, Counter[str]] = field(default_factory=dict)
    server_errors: int = 0
    unanswered: Counter[str] = field(default_factory=Counter)
    sent_by: dict[bytes, str] = field(default_factory=dict)  # signed body -> the case and its answers

    def fail(self, case: Case, problem: str, answer: Exchange) -> None:
        if len(self.failures) < 50:
            self.failures.append(f"{case.family}/{case.kind}: {problem}; sent {case.data[:200]!r}; "
                                 f"answered {answer.raw[:300]!r}")

    def answer(self, case: Case, answer: Exchange) -> None:
        self.cases[case.family] += 1
        counts = self.statuses.setdefault(case.family, Counter())
        for env, body in case.signed:
            self.signed[env].add(body)
            self.sent_by[body] = f"{case.family}/{case.kind} answered {answer.statuses}"
        if not answer.statuses:
            counts["none"] += 1
            self.unanswered[f"{case.family}/{case.kind}"] += 1
            self.unanswered_bodies.update(body for _, body in case.signed)
            if not case.may_go_unanswered:
                self.fail(case, "no answer", answer)
            return
        for status in answer.statuses:
            counts[str(status)] += 1
        if any(s >= 500 for s in answer.statuses):
            self.server_errors += 1
            self.fail(case, "a 5xx", answer)
        if case.expect is not None and answer.statuses[0] not in case.expect:
            self.fail(case, f"answered {answer.statuses[0]}, expected one of {sorted(case.expect)}", answer)
        if case.no_echo and case.no_echo in answer.raw:
            self.fail(case, "a header value was echoed", answer)
        for status, body in zip(answer.statuses, answer.bodies, strict=True):
            if status >= 400 or case.family != "raw_http":  # raw cases may ask for /metrics
                try:
                    doc = orjson.loads(body) if body else None
                except orjson.JSONDecodeError:
                    doc = None
                if not isinstance(doc, dict) or (status >= 400 and "code" not in doc.get("error", {})):
                    self.fail(case, f"a {status} that is not ingest's JSON", answer)
        if 200 in answer.statuses:  # (one request may have been several: any 200 may be theirs)
            for _, body in case.signed:
                self.acknowledged.add(body)
            if case.must_store:
                self.must_store[case.must_store[0]].add(case.must_store[1])
        elif case.must_store:
            self.fail(case, f"a genuine delivery answered {answer.statuses[0]}", answer)

    def log(self, records: dict[str, list[bytes]]) -> dict[str, int]:
        """Judge what the topics hold; returns the counts for the report (failures: the first 50)."""
        unverified = refused = unanswered = unreadable = lost = 0
        for env, values in records.items():
            present = set(values)
            for value in values:
                if value not in self.signed[env]:
                    unverified += 1
                    self.failures.append(f"{env}: an unverified record {value[:120]!r}")
                elif value in self.unanswered_bodies and value not in self.acknowledged:
                    unanswered += 1
                elif value not in self.acknowledged:
                    refused += 1
                    self.failures.append(f"{env}: stored after a refusal ({self.sent_by.get(value)}): "
                                         f"{value[:120]!r}")
                try:
                    _id, event_type, _, livemode, _, _ = read_envelope(orjson.loads(value))
                    if event_type not in READ_TYPES or livemode is not (env == "production"):
                        raise StripeParseError("type", "not one ingest writes")
                except (orjson.JSONDecodeError, StripeParseError) as exc:
                    unreadable += 1
                    self.failures.append(f"{env}: a record the worker cannot read ({exc}) {value[:120]!r}")
            missing = self.must_store[env] - present
            lost += len(missing)
            self.failures += [f"{env}: acknowledged but not stored {v[:120]!r}" for v in list(missing)[:5]]
        del self.failures[50:]
        return {"records": sum(len(v) for v in records.values()), "unverified_written": unverified,
                "written_after_a_refusal": refused, "written_answer_unseen": unanswered,
                "unreadable_for_the_worker": unreadable, "acknowledged_but_lost": lost}


# --- the bounded run in `make test` ---------------------------------------------------------------


def test_fuzzed_requests_never_get_5xx_and_never_write_unverified_bytes(
    bootstrap: str, topic_prefix: str, reliability: Reliability
) -> None:
    asyncio.run(make_topics(bootstrap, topic_prefix))
    judge = Judge()
    ctx = Context(limit=LIMIT)
    cfg = settings(bootstrap, max_body_bytes=LIMIT)
    with ingest_server(cfg, topic_prefix) as server:

        def fuzz(family: Callable[[Random, Context], Case]) -> None:
            @hsettings(max_examples=EXAMPLES // len(FAMILIES), deadline=None, database=None,
                       suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
            @given(rng=st.randoms(use_true_random=False))
            def send(rng: Random) -> None:
                case = family(rng, ctx)
                before = len(judge.failures)
                judge.answer(case, asyncio.run(exchange(server.port, case)))
                assert len(judge.failures) == before, judge.failures[before:]

            send()

        for name in sorted(FAMILIES):  # each family its share of the examples
            fuzz(FAMILIES[name])

    records = {}
    for env in ENVS:
        topic = Topics(env, topic_prefix).stripe_events
        records[env] = [r.value for r in asyncio.run(read_topic(bootstrap, topic)) if r.value is not None]
    counts = judge.log(records)
    sent = sum(judge.cases.values())
    reliability.record(
        "test_fuzz_webhook_endpoint",
        what="hypothesis over six families: genuine deliveries, hostile requests, raw-socket HTTP, "
             "signature-header grammar, content encodings, signed strange bodies",
        sent=sent, acknowledged=sum(c["200"] for c in judge.statuses.values()),
        refused=sum(n for c in judge.statuses.values() for s, n in c.items() if s.startswith("4")),
        lost=counts["acknowledged_but_lost"], duplicated=0,
        fuzz_cases=sent, server_errors=judge.server_errors,
        notes=f"{counts['records']} records written, all from correctly signed bodies; unverified bytes "
              f"written: {counts['unverified_written']}; per family: "
              + ", ".join(f"{f} {n}" for f, n in sorted(judge.cases.items())),
    )
    assert not judge.failures, judge.failures[:5]
    assert judge.server_errors == 0
    assert sent >= EXAMPLES
    assert set(judge.cases) == set(FAMILIES)
