"""docs/rules.md#revisions and #campaigns: rules that change over time, kept in the log.

Each fact is priced by the revision in force at its own time, and by the referrer's
campaign then; what was earned is never re-priced. Amounts computed by hand."""

from __future__ import annotations

from processors.rules.engine import Engine
from schemas import control
from schemas.commands import NEW_SIGNUP, REWARD_EARNED
from tests.unit.builders import customer, invoice_paid, ts
from tests.unit.conftest import feed, notifications, payouts, run

V3 = """
[campaign]
revision = 3
currency = "usd"
reward_percent = 25
reward_months = 12
hold_days = 30
late_attribution_days = 30

[currency.usd]
max_reward_per_referral = 10000
signup_bonus = 500
purchase_bonus = 1000
min_payout = 2000
"""


def v(revision: int, *, percent: int = 25, cap: int = 10000, signup: int = 500, extra: str = "") -> str:
    return (V3.replace("revision = 3", f"revision = {revision}")
            .replace("reward_percent = 25", f"reward_percent = {percent}")
            .replace("max_reward_per_referral = 10000", f"max_reward_per_referral = {cap}")
            .replace("signup_bonus = 500", f"signup_bonus = {signup}") + extra)


def publish(engine: Engine, text: str, effective_from: int, published_at: int | None = None) -> None:
    revision = int(text.split("revision = ")[1].split()[0])
    at = published_at if published_at is not None else effective_from - 7 * 86400
    engine.feed_control(control.encode(control.RulesRevision(
        revision, effective_from, text, at, "ops@example.com", "a test")))


def engine_from(text: str) -> Engine:
    from schemas.rules import parse_rules

    return Engine(parse_rules(text))


def earned(engine: Engine, *bodies: bytes) -> list[int]:
    return [n.amount for n in notifications(feed(engine, *bodies), REWARD_EARNED)]


def monthly(engine: Engine, month: int) -> list[int]:
    paid = ts(f"2026-{month:02d}-10")
    return earned(engine, invoice_paid(f"in_{month}", "cus_A", paid, amount_paid=10000))


def test_a_rate_change_mid_subscription_prices_each_payment_at_its_paid_time() -> None:
    # the worked example of docs/rules.md#revisions
    engine = engine_from(V3)
    publish(engine, v(4, percent=20, cap=12000), ts("2026-03-01"), published_at=ts("2026-02-20"))
    feed(engine, customer("cus_A", ts("2026-01-10"), ucc="ucc_X", user="u1"))
    assert monthly(engine, 1) == [1000 + 2500]  # purchase bonus + 25 % (revision 3)
    assert monthly(engine, 2) == [2500]
    assert monthly(engine, 3) == [2000]  # 20 % from March 1 (revision 4)
    assert monthly(engine, 4) == [2000]
    assert monthly(engine, 5) == [1500]  # cut: gross 12,000 under revision 4's cap
    usd = engine.referrer("ucc_X").currencies["usd"]  # type: ignore[union-attr]
    assert usd.earned == 500 + 1000 + 2500 * 2 + 2000 * 2 + 1500
    [payout] = payouts(run(engine, "r1", ts("2026-06-15")))
    assert payout.rules_revision == 4  # the revision in force at the run's as_of


def test_a_raised_cap_lets_further_rewards_flow_and_never_reprices_what_was_earned() -> None:
    engine = engine_from(v(3, cap=4000))
    publish(engine, v(4, cap=6000), ts("2026-03-01"))
    feed(engine, customer("cus_A", ts("2026-01-10"), ucc="ucc_X", user="u1"))
    assert monthly(engine, 1) == [1000 + 2500]  # gross 4,000: the cap is reached
    assert monthly(engine, 2) == []  # nothing more under revision 3
    assert monthly(engine, 3) == [2000]  # 2,000 more room under revision 4
    assert monthly(engine, 4) == []
    assert engine.referrer("ucc_X").currencies["usd"].earned == 6000  # type: ignore[union-attr]


def test_a_lowered_cap_stops_rewards_and_takes_nothing_back() -> None:
    engine = engine_from(V3)
    publish(engine, v(4, cap=3000), ts("2026-02-01"))
    feed(engine, customer("cus_A", ts("2026-01-10"), ucc="ucc_X", user="u1"))
    assert monthly(engine, 1) == [1000 + 2500]  # gross 4,000 under revision 3
    assert monthly(engine, 2) == []  # revision 4's cap of 3,000 is already passed
    assert engine.referrer("ucc_X").currencies["usd"].earned == 4000  # type: ignore[union-attr]


def test_the_signup_bonus_is_the_one_in_force_at_the_signup() -> None:
    engine = engine_from(V3)
    publish(engine, v(4, signup=800), ts("2026-02-01"))
    out = feed(engine, customer("cus_A", ts("2026-01-10"), ucc="ucc_X", user="u1"),
               customer("cus_B", ts("2026-02-10"), ucc="ucc_X", user="u2"))
    assert [n.amount for n in notifications(out, NEW_SIGNUP)] == [500, 800]


def test_a_later_revision_in_the_log_does_not_price_what_came_before_it() -> None:
    # the log order decides, as in the live worker (docs/design.md#one-order): a revision
    # published after a payment was folded never re-prices it, even if in force earlier
    engine = engine_from(V3)
    feed(engine, customer("cus_A", ts("2026-01-10"), ucc="ucc_X", user="u1"))
    assert monthly(engine, 3) == [1000 + 2500]
    publish(engine, v(4, percent=10), ts("2026-02-01"))
    assert monthly(engine, 4) == [1000]
    assert engine.referrer("ucc_X").currencies["usd"].earned == 500 + 3500 + 1000  # type: ignore[union-attr]


PARTNERS = """
[campaigns.partners]
reward_percent = 40
[campaigns.partners.currency.usd]
max_reward_per_referral = 20000
"""


def test_a_partner_assignment_prices_later_payments_only() -> None:
    engine = engine_from(v(3, extra=PARTNERS))
    feed(engine, customer("cus_A", ts("2026-01-10"), ucc="ucc_P", user="u1"))
    feed(engine, invoice_paid("in_1", "cus_A", ts("2026-01-10"), amount_paid=10000))
    engine.feed_control(control.encode(control.CampaignAssignment(
        "ucc_P", "partners", ts("2026-02-01"), "ops@example.com", "partner agreement signed")))
    # paid before the assignment (though folded after it): still the default campaign's 25 %
    assert earned(engine, invoice_paid("in_0", "cus_A", ts("2026-01-20"), amount_paid=10000)) == [2500]
    # paid after: the partners' 40 %, under their own cap of 20,000
    assert monthly(engine, 2) == [4000]
    assert monthly(engine, 3) == [4000]
    usd = engine.referrer("ucc_P").currencies["usd"]  # type: ignore[union-attr]
    assert usd.earned == 500 + 1000 + 2500 + 2500 + 4000 + 4000
    # another referrer stays on the default campaign
    feed(engine, customer("cus_B", ts("2026-01-10"), ucc="ucc_Q", user="u2"))
    assert earned(engine, invoice_paid("in_b", "cus_B", ts("2026-02-10"), amount_paid=10000)) == [1000 + 2500]


def test_an_assignment_before_the_first_signup_is_kept() -> None:
    engine = engine_from(v(3, extra=PARTNERS))
    engine.feed_control(control.encode(control.CampaignAssignment(
        "ucc_P", "partners", ts("2026-01-01"), "ops@example.com", "signed before any referral")))
    feed(engine, customer("cus_A", ts("2026-01-10"), ucc="ucc_P", user="u1"))
    assert monthly(engine, 1) == [1000 + 4000]


PLANS = """
[plan."price_enterprise"]
reward_percent = 10
max_reward_per_referral = 1500
[plan."prod_free_tier"]
reward_percent = 0
"""


def test_a_plan_with_its_own_rate_on_a_mixed_invoice_in_both_api_shapes() -> None:
    for new_shape in (False, True):
        engine = engine_from(v(3, cap=100000, extra=PLANS))
        feed(engine, customer("cus_A", ts("2026-01-10"), ucc="ucc_X", user="u1"))
        # 24,000 paid, 4,000 of it tax: base 20,000 split over the lines by their amounts
        # (12,000 / 6,000 / 6,000 of 24,000): 10,000 enterprise, 5,000 free tier, 5,000 other
        out = earned(engine, invoice_paid(
            "in_1", "cus_A", ts("2026-01-10"), amount_paid=24000, total=24000, total_excluding_tax=20000,
            new_shape=new_shape,
            lines=[(12000, "price_enterprise", "prod_ent"), (6000, "price_x", "prod_free_tier"),
                   (6000, None, None)]))
        # purchase bonus 1,000 + enterprise 10 % of 10,000 + free tier 0 + other 25 % of 5,000
        assert out == [1000 + 1000 + 0 + 1250], new_shape
        # the enterprise plan's own cap of 1,500 per referral: 500 more at most
        out = earned(engine, invoice_paid(
            "in_2", "cus_A", ts("2026-02-10"), amount_paid=20000, new_shape=new_shape,
            lines=[(20000, "price_enterprise", "prod_ent")]))
        assert out == [500], new_shape


def test_an_invoice_whose_lines_use_the_campaign_rate_earns_as_without_plans() -> None:
    # three lines of the campaign rate: rounded once over the whole base, as before
    engine = engine_from(V3)
    feed(engine, customer("cus_A", ts("2026-01-10"), ucc="ucc_X", user="u1"))
    lines: list[tuple[int, str | None, str | None]] = [(333, "price_a", None), (333, "price_b", None),
                                                        (335, None, None)]
    out = earned(engine, invoice_paid("in_1", "cus_A", ts("2026-01-10"), amount_paid=1001, lines=lines))
    assert out == [1000 + 250]  # round(1001 × 25 %) = 250


def test_a_rule_book_pickles_for_replays_child_processes() -> None:
    # replay --jobs and --compare send it to other processes, compiled core or not
    import pickle

    from schemas.rules import Revision, RuleBook, parse_rules

    book = RuleBook([Revision(0, parse_rules(v(3, extra=PARTNERS + PLANS))),
                     Revision(ts("2026-03-01"), parse_rules(v(4, percent=20)), key="k4")])
    again = pickle.loads(pickle.dumps(book))
    assert [(r.effective_from, r.rules, r.key) for r in again.revisions] == [
        (r.effective_from, r.rules, r.key) for r in book.revisions]
