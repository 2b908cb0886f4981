"""Fraud signals (docs/rules.md#fraud-signals): self-referral, shared card and velocity each
open one `suspected_fraud` case per referral, which pauses the referral until a person
decides: approve releases what it held, reject voids the referral.

Given/when/then, one signal at a time, through the Engine (the code replay runs)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from processors.rules.engine import Engine, Routed
from processors.rules.identity import normalise_email
from refstream.cli import main
from schemas import control
from schemas.commands import SELF_REFERRAL, SHARED_CARD, SUSPECTED_FRAUD, VELOCITY, ReviewCase
from schemas.rules import RulesError, load_rules
from tests.unit.builders import charge, customer, ts
from tests.unit.conftest import cases, decide, feed, make_rules, payouts, run

KEY = b"identity-key-for-tests-0123456789"
T = ts("2026-01-10")
DAY = 86_400
PAYABLE = T + 40 * DAY  # past the 30 days' hold of a signup bonus earned around T
USD = {"signup_bonus": 500, "min_payout": 1}


def engine(key: bytes | None = KEY, **campaign: object) -> Engine:
    return Engine(make_rules(currency_usd=USD, **campaign), identity_key=key)


def link(e: Engine, ucc: str, cus: str) -> list[Routed]:
    record = control.ReferrerLink(ucc, cus, T, "ana", "the referrer's own account")
    return e.feed_control(control.encode(record))


def fraud(out: list[Routed]) -> list[ReviewCase]:
    return cases(out, SUSPECTED_FRAUD)


def paid(out: list[Routed], ucc: str) -> int:
    return sum(p.amount for p in payouts(out) if p.ucc == ucc)


# --- self-referral ------------------------------------------------------------------------


def self_referral(e: Engine) -> list[Routed]:
    """ucc_X's own customer cus_OWN, and cus_B, referred by ucc_X under the same mailbox."""
    out = feed(e, customer("cus_OWN", T - 90 * DAY, email="ana.silva@gmail.com"))
    out += link(e, "ucc_X", "cus_OWN")
    return out + feed(e, customer("cus_B", T, ucc="ucc_X", user="u_b", email=" Ana.Silva+promo@GMail.com "))


@pytest.mark.parametrize("approve", [True, False], ids=["approve", "reject"])
def test_a_referral_under_its_referrers_own_email_is_held_until_decided(approve: bool) -> None:
    # given ucc_X's own customer, linked by `refstream referrers link`
    # when a referral of ucc_X signs up with the same mailbox (dots, case and +tag aside)
    e = engine()
    [case] = fraud(self_referral(e))
    # then one case names the signal and the customer, dated at the referral's signup
    assert (case.ucc, case.referral_id, case.opened_at) == ("ucc_X", "user:u_b", T)
    assert case.details == {"signal": SELF_REFERRAL, "customer_id": "cus_B"}
    assert paid(run(e, "run-1", PAYABLE), "ucc_X") == 0  # the signup bonus is withheld
    # and a person decides: approve releases the bonus, reject voids the referral
    decide(e, case, approve, PAYABLE)
    assert paid(run(e, "run-2", PAYABLE), "ucc_X") == (500 if approve else 0)
    summary = e.referrer("ucc_X", PAYABLE)
    assert summary is not None and summary.open_cases == 0
    assert summary.currencies["usd"].earned == (500 if approve else 0)


def test_the_link_may_come_after_the_referral_and_the_card_may_be_the_evidence() -> None:
    # given a referral of ucc_X that paid with a card, and the referrer's own customer's
    # charge with that card, both before anyone says whose customer that is
    e = engine()
    out = feed(e, customer("cus_B", T, ucc="ucc_X", user="u_b", email="b@example.com"),
               charge("ch_B", "cus_B", T + 60, amount=900, card="fp_ana"),
               customer("cus_OWN", T - 90 * DAY, email="ana@example.com"),
               charge("ch_OWN", "cus_OWN", T - 80 * DAY, amount=900, card="fp_ana"))
    assert fraud(out) == []
    # when the link arrives, then the same case opens as had it come first
    [case] = fraud(link(e, "ucc_X", "cus_OWN"))
    assert (case.case_id, case.details) == (fraud(self_referral(engine()))[0].case_id,
                                            {"signal": SELF_REFERRAL, "customer_id": "cus_B"})
    assert fraud(link(e, "ucc_X", "cus_OWN")) == []  # linking again changes nothing


def test_the_referrer_signing_up_under_its_own_code_is_a_self_referral() -> None:
    e = engine()
    link(e, "ucc_X", "cus_OWN")
    [case] = fraud(feed(e, customer("cus_OWN", T, ucc="ucc_X", user="u_self", email="ana@example.com")))
    assert case.details == {"signal": SELF_REFERRAL, "customer_id": "cus_OWN"}


def test_other_mailboxes_and_cards_and_other_referrers_fire_nothing() -> None:
    e = engine()
    feed(e, customer("cus_OWN", T - 90 * DAY, email="ana@example.com"),
         charge("ch_OWN", "cus_OWN", T - 80 * DAY, amount=900, card="fp_ana"))
    link(e, "ucc_X", "cus_OWN")
    out = feed(e, customer("cus_B", T, ucc="ucc_X", user="u_b", email="ana@example.org"),
               charge("ch_B", "cus_B", T, amount=900, card="fp_bea"),
               # the referrer's own mailbox, but a referral of another referrer
               customer("cus_C", T, ucc="ucc_Y", user="u_c", email="ana@example.com"))
    assert fraud(out) == []


def test_without_an_identity_key_nothing_is_compared() -> None:
    e = engine(key=None)
    assert fraud(self_referral(e)) == []
    assert paid(run(e, "run-1", PAYABLE), "ucc_X") == 500


def test_a_campaign_may_turn_the_self_referral_check_off() -> None:
    assert fraud(self_referral(engine(self_referral_check=False))) == []


# --- shared card --------------------------------------------------------------------------


def shared_card(e: Engine, n: int) -> list[Routed]:
    """n referrals of two referrers, each customer paying with card fp_1."""
    out: list[Routed] = []
    for i in range(n):
        ucc = "ucc_X" if i % 2 == 0 else "ucc_Y"
        t = T + i * 3 * DAY
        out += feed(e, customer(f"cus_{i}", t, ucc=ucc, user=f"u{i}", email=f"p{i}@example.com"),
                    charge(f"ch_{i}", f"cus_{i}", t + 60, amount=2000, card="fp_1"))
    return out


def test_one_card_paying_for_two_referrals_holds_both_until_each_is_decided() -> None:
    # given the default limit of one referral per card
    e = engine()
    # when the customers of two referrals (of two referrers) pay with one card
    out = shared_card(e, 2)
    # then each referral opens its case
    x, y = sorted(fraud(out), key=lambda c: c.ucc)
    assert [(c.ucc, c.referral_id, c.opened_at) for c in (x, y)] == [
        ("ucc_X", "user:u0", T), ("ucc_Y", "user:u1", T + 3 * DAY)]
    assert x.details == {"signal": SHARED_CARD, "customer_id": "cus_0", "max_referrals_per_card": 1}
    assert paid(run(e, "run-1", PAYABLE), "ucc_X") == 0
    # and approving one releases it; rejecting the other voids that referral
    decide(e, x, True, PAYABLE)
    decide(e, y, False, PAYABLE)
    out = run(e, "run-2", PAYABLE)
    assert (paid(out, "ucc_X"), paid(out, "ucc_Y")) == (500, 0)
    summary = e.referrer("ucc_Y", PAYABLE)
    assert summary is not None and summary.currencies["usd"].earned == 0


def test_a_higher_limit_lets_that_many_referrals_share_a_card() -> None:
    e = engine(max_referrals_per_card=2)
    assert fraud(shared_card(e, 2)) == []
    # the third referral of the card: all three are held
    out = feed(e, customer("cus_2", T + 6 * DAY, ucc="ucc_X", user="u2", email="p2@example.com"),
               charge("ch_2", "cus_2", T + 6 * DAY + 60, amount=2000, card="fp_1"))
    assert sorted(c.referral_id for c in fraud(out)) == ["user:u0", "user:u1", "user:u2"]
    assert {c.details["max_referrals_per_card"] for c in fraud(out)} == {2}


def test_one_referral_paying_again_or_through_a_second_customer_shares_nothing() -> None:
    e = engine(organization_level=True)
    out = feed(e, customer("cus_A", T, ucc="ucc_X", user="u1", org="o1"),
               charge("ch_1", "cus_A", T + 60, amount=2000, card="fp_1"),
               charge("ch_2", "cus_A", T + 30 * DAY, amount=2000, card="fp_1"),
               customer("cus_A2", T + DAY, ucc="ucc_X", user="u2", org="o1"),  # the same organisation
               charge("ch_3", "cus_A2", T + DAY, amount=2000, card="fp_1"))
    assert fraud(out) == []


def test_a_limit_of_zero_turns_the_shared_card_check_off() -> None:
    assert fraud(shared_card(engine(max_referrals_per_card=0), 3)) == []


# --- velocity -----------------------------------------------------------------------------


def signups(e: Engine, times: list[int], ucc: str = "ucc_X") -> list[Routed]:
    out: list[Routed] = []
    for i, t in enumerate(times):
        out += feed(e, customer(f"cus_v{t}", t, ucc=ucc, user=f"v{t}", email=f"v{i}@example.com"))
    return out


def test_more_signups_in_24_hours_than_the_limit_holds_each_of_them() -> None:
    # given a limit of two signups a day
    e = engine(max_signups_per_day=2)
    # when three referrals sign up within 24 hours, and another two days later
    burst = [T, T + 3600, T + DAY - 1]
    out = signups(e, [*burst, T + 3 * DAY])
    # then the three of the burst are held, the later one is not
    held = sorted(fraud(out), key=lambda c: c.opened_at)
    assert [(c.referral_id, c.opened_at) for c in held] == [(f"user:v{t}", t) for t in burst]
    assert {str(c.details) for c in held} == {str({"signal": VELOCITY, "max_signups_per_day": 2})}
    assert paid(run(e, "run-1", T + 45 * DAY), "ucc_X") == 500  # the later one's bonus only
    # and decisions work as for every case
    decide(e, held[0], True, T + 45 * DAY)
    decide(e, held[1], False, T + 45 * DAY)
    assert paid(run(e, "run-2", T + 45 * DAY), "ucc_X") == 500  # the approved one's
    summary = e.referrer("ucc_X", T + 45 * DAY)
    assert summary is not None and summary.open_cases == 1  # the third still waits


def test_signups_a_day_apart_or_of_other_referrers_are_not_a_burst() -> None:
    e = engine(max_signups_per_day=2)
    out = signups(e, [T, T + DAY, T + 2 * DAY, T + 2 * DAY + 60])
    out += signups(e, [T + 2 * DAY + 120], ucc="ucc_Y")
    assert fraud(out) == []


def test_the_burst_is_found_whatever_order_its_signups_arrive_in() -> None:
    times = [T + 7200, T, T + DAY + 3000, T + 3600, T + 3 * DAY]
    expected = {c.case_id for c in fraud(signups(engine(max_signups_per_day=2), sorted(times)))}
    assert len(expected) == 4  # [T, T + 1 h, T + 2 h] and [T + 1 h, T + 2 h, T + 1 d + 50 min]
    assert {c.case_id for c in fraud(signups(engine(max_signups_per_day=2), times))} == expected


def test_the_default_limit_is_ten_signups_a_day() -> None:
    assert fraud(signups(engine(), [T + i * 60 for i in range(10)])) == []
    assert len(fraud(signups(engine(), [T + i * 60 for i in range(11)]))) == 11


# --- identity evidence ---------------------------------------------------------------------


@pytest.mark.parametrize("raw, normal", [
    (" Ana.Silva+promo@GMail.com ", "anasilva@gmail.com"),
    ("a.n.a@googlemail.com", "ana@gmail.com"),
    ("Ana.Silva+x@Example.com", "ana.silva@example.com"),
    ("no-at-sign", None), ("@example.com", None), ("a@b@c", None), ("+tag@example.com", None),
])
def test_emails_are_compared_as_mailboxes(raw: str, normal: str | None) -> None:
    assert normalise_email(raw) == normal


def test_a_referrer_link_round_trips_and_its_id_is_the_pair() -> None:
    record = control.ReferrerLink("ucc_X", "cus_OWN", T, "ana", "own account")
    assert control.decode(control.encode(record)) == record
    assert record.control_id == control.ReferrerLink("ucc_X", "cus_OWN", T + 1, "bo", "again").control_id
    with pytest.raises(control.ControlDecodeError, match="customer_id: expected a non-empty string"):
        control.decode(b'{"v":1,"type":"referrer_link","ucc":"u","customer_id":"","linked_at":1,'
                       b'"actor":"a","reason":"r"}')


# --- configuration -------------------------------------------------------------------------


def test_rules_check_says_what_the_signals_hold(tmp_path: Path) -> None:
    from tests.unit.conftest import EXAMPLE_RULES

    result = CliRunner().invoke(main, ["rules", "check", str(EXAMPLE_RULES)])
    assert result.exit_code == 0
    assert ("fraud signals: self-referral on, shared card above 1 referral, velocity above 10 signups a day"
            in result.output)
    mine = tmp_path / "rules.toml"
    mine.write_text(EXAMPLE_RULES.read_text().replace(
        "[campaign]\n", "[campaign]\nself_referral_check = false\nmax_referrals_per_card = 3\n"
                        "max_signups_per_day = 0\n")
        + "\n[campaigns.partners]\nmax_referrals_per_card = 0\nmax_signups_per_day = 50\n")
    result = CliRunner().invoke(main, ["rules", "check", str(mine)])
    assert result.exit_code == 0, result.output
    assert "fraud signals: self-referral off, shared card above 3 referrals, velocity off" in result.output
    partners = load_rules(mine).campaign("partners")
    assert (partners.self_referral_check, partners.max_referrals_per_card, partners.max_signups_per_day) == (
        False, 0, 50)


@pytest.mark.parametrize("line, field, hint", [
    ("max_referrals_per_card = 101", "campaign.max_referrals_per_card", "from 0 (no check) to 100"),
    ("max_referrals_per_card = -1", "campaign.max_referrals_per_card", "from 0 (no check) to 100"),
    ("max_signups_per_day = 2.5", "campaign.max_signups_per_day", "a whole number >= 0 (0: no check)"),
    ("max_signups_per_day = true", "campaign.max_signups_per_day", "a whole number >= 0"),
    ('self_referral_check = "yes"', "campaign.self_referral_check", "true or false"),
])
def test_rules_check_refuses_a_bad_limit_naming_line_and_fix(tmp_path: Path, line: str, field: str,
                                                             hint: str) -> None:
    bad = tmp_path / "rules.toml"
    bad.write_text(f'[campaign]\nrevision = 3\ncurrency = "usd"\nreward_percent = 25\n{line}\n')
    result = CliRunner().invoke(main, ["rules", "check", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}:5 [{field}]" in result.output and hint in result.output


def test_a_named_campaign_is_held_to_the_same_limits(tmp_path: Path) -> None:
    bad = tmp_path / "rules.toml"
    bad.write_text('[campaign]\nrevision = 3\ncurrency = "usd"\nreward_percent = 25\n'
                   '[campaigns.partners]\nmax_referrals_per_card = 500\n')
    with pytest.raises(RulesError, match=r"campaigns.partners.max_referrals_per_card.*from 0 \(no check\)"):
        load_rules(bad)


def test_a_short_identity_key_is_refused_naming_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    from refstream.settings import SettingsError, identity_key_from_env

    monkeypatch.setenv("REFSTREAM_IDENTITY_KEY", "secret")
    with pytest.raises(SettingsError, match="6 characters long; use at least 16") as err:
        identity_key_from_env()
    assert "secret" not in str(err.value)  # a key is never echoed
    monkeypatch.setenv("REFSTREAM_IDENTITY_KEY", " ")
    assert identity_key_from_env() is None


@pytest.mark.parametrize("args, problem", [
    (["ucc_X", "--customer", "ana@example.com", "--reason", "own"], "is not a Stripe customer id"),
    (["ucc_X", "--customer", "cus_A", "--reason", " "], "the reason is empty"),
    (["", "--customer", "cus_A", "--reason", "own"], "the referrer's code is empty"),
])
def test_referrers_link_refuses_what_is_not_a_link(args: list[str], problem: str) -> None:
    result = CliRunner().invoke(main, ["referrers", "link", *args])
    assert result.exit_code == 2 and problem in result.output
