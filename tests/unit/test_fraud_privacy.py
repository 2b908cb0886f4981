"""Identity evidence stays private (docs/rules.md#fraud-signals): e-mail addresses and card
fingerprints are compared as keyed tokens. Nothing the worker writes — stage topics, the
outbox and its commands, table values and keys — holds them in clear, and neither does any
state replay builds; only the stripe-events log itself keeps what Stripe sent."""

from __future__ import annotations

from processors.rules import invoice_link, referral, referrer
from processors.rules.engine import Engine
from schemas import control
from schemas.commands import SUSPECTED_FRAUD
from schemas.rules import RuleBook
from tests.unit.builders import charge, customer, ts
from tests.unit.conftest import make_rules
from tests.unit.pipeline_sim import Sim, replay

T = ts("2026-01-10")
EMAIL = "Ana.Silva+promo@GMail.com"
CARD = "fpSecretCard42"
CLEAR = [b"ana.silva", b"Ana.Silva", b"anasilva", b"gmail", b"GMail", b"promo", CARD.encode(), b"SecretCard"]
BOOK = RuleBook.of(make_rules(), b"identity-key-for-the-privacy-test")


def bodies() -> list[bytes]:
    return [
        customer("cus_OWN", T - 86_400, email="ana.silva@gmail.com"),
        charge("ch_OWN", "cus_OWN", T - 3600, amount=900, card=CARD),
        customer("cus_B", T, ucc="ucc_X", user="u_b", email=EMAIL),
        charge("ch_B", "cus_B", T + 60, amount=900, card=CARD),
        customer("cus_C", T, ucc="ucc_Y", user="u_c", email="carla@example.com"),
        charge("ch_C", "cus_C", T + 60, amount=900, card=CARD),
    ]


def leaks(blob: bytes) -> list[bytes]:
    return [c for c in CLEAR if c in blob]


def test_no_clear_email_or_card_fingerprint_leaves_the_stripe_log() -> None:
    sim = Sim(3, BOOK)  # type: ignore[arg-type]
    for body in bodies():
        sim.ingest(body)
    sim.request(control.ReferrerLink("ucc_X", "cus_OWN", T, "ana", "own account"))
    sim.drain()
    published = sim.published()
    # the evidence did its work: a self-referral and two shared-card cases
    assert sum(SUSPECTED_FRAUD.encode() in raw for raw in published.values()) >= 3
    assert any(b"self_referral" in raw for raw in published.values())
    assert any(b"shared_card" in raw for raw in published.values())
    for topic, parts in sim.topics.items():
        if topic == sim.w.stripe_events:
            continue  # what Stripe sent: the source of truth
        for part in parts:
            for r in part:
                blob = (r.key or b"") + r.value + b"".join(k.encode() + v for k, v in r.headers)
                assert not leaks(blob), (topic, blob[:200])
    tokens = 0
    for unit in sim.units:
        for key, value in unit.table.items():
            assert not leaks(key.encode() + value), (unit.stage, key)
            tokens += key.startswith("identity:")
    assert tokens >= 3  # the joins are keyed by tokens: two mailboxes, one card

    engine, made = replay(sim, BOOK)  # type: ignore[arg-type]
    assert made == published
    states = ([referral.dumps(s) for s in engine.customers.values()]
              + [invoice_link.dumps(s) for s in engine.invoices.values()]
              + [referrer.dumps(s) for s in engine.referrers.values()])
    for raw in states:
        assert not leaks(raw), raw[:200]


def test_another_key_gives_other_tokens_and_the_same_cases() -> None:
    def run(key: bytes) -> tuple[set[str], list[str]]:
        e = Engine(RuleBook.of(make_rules(), key))
        for body in bodies():
            e.feed_stripe(body)
        out = e.feed_control_record(control.ReferrerLink("ucc_X", "cus_OWN", T, "ana", "own account"))
        return set(e.invoices), sorted(r.record.case_id for r in out if r.dest == "reviews")

    keys_a, cases_a = run(b"identity-key-number-one-000000")
    keys_b, cases_b = run(b"identity-key-number-two-000000")
    assert {k for k in keys_a if k.startswith("identity:")}.isdisjoint(keys_b)
    assert cases_a == cases_b
