"""Payout runs skip the referrers they cannot pay (docs/performance.md#payout-runs), and that
changes nothing a user could see.

- `due_at` is never late: a run whose as_of is before a referrer's `due_at` steps it to
  exactly `note_run` (the run's id noted, nothing out), whatever the referrer's history.
- The `Engine`, which only notes the run's id for a referrer unchanged since the last run
  and not due, gives every output, every table value and every summary that stepping every
  referrer at every run gives: over generated histories of several customers and referrers,
  with runs at any as_of (backwards too, and the same run id again), review decisions,
  payouts that fail, adjustments, a campaign with a lower min_payout, and a later revision
  that lowers it for everyone.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processors.rules import referrer
from processors.rules.engine import Engine
from processors.rules.referrer import ALWAYS, due_at, note_run
from schemas import commands, control
from schemas.events import Routed
from schemas.rules import RuleBook, parse_rules
from tests.unit.builders import customer, invoice_paid, ts
from tests.unit.histories import START, histories

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DAY = 86400

RULES_TEXT = """
[campaign]
revision = 3
currency = "usd"
reward_percent = 25
reward_months = 12
hold_days = 30
late_attribution_days = 30
reward_one_off_charges = true

[currency.usd]
max_reward_per_referral = 6000
signup_bonus = 500
purchase_bonus = 1000
min_payout = 2500
review_above = 3000

[currency.eur]
purchase_bonus = 700
min_payout = 1500

[campaigns.partners]
reward_percent = 30

[campaigns.partners.currency.usd]
signup_bonus = 500
purchase_bonus = 1000
min_payout = 600
"""
RULES = parse_rules(RULES_TEXT, "test rules")
# a later revision: every referrer is paid from 100 usd of 1 on
LOWER = control.RulesRevision(4, START + 200 * DAY, RULES_TEXT.replace("revision = 3", "revision = 4")
                              .replace("min_payout = 2500", "min_payout = 100"), START + 190 * DAY, "ops", "")


class EveryReferrer(Engine):
    """The reference: a payout run steps every referrer, as before the skipping."""

    def _payout_run(self, run: control.PayoutRun) -> list[Routed]:
        produced: list[Routed] = []
        for ucc in sorted(self.referrers):
            self.referrers[ucc], out = referrer.step(self.referrers[ucc], run, self.book)
            produced += out
        return self._run(produced) if produced else []


def _controls(data: st.DataObject, i: int, engine: Engine, opened: list[commands.ReviewCase],
              payouts: list[commands.PayoutCommand]) -> list[control.ControlRecord]:
    """Some control records to fold after the `i`-th event: decided by hypothesis."""
    out: list[control.ControlRecord] = []
    for _ in range(data.draw(st.integers(0, 2), label=f"controls {i}")):
        kind = data.draw(st.sampled_from(["run", "run", "run", "again", "decision", "outcome", "adjustment",
                                          "assignment", "revision"]))
        at = START + data.draw(st.integers(0, 700)) * DAY
        ucc = data.draw(st.sampled_from(["ucc_X", "ucc_Y", "ucc_Z"]))
        if kind == "run":
            out.append(control.PayoutRun(f"run{i}-{len(out)}", at, at))
        elif kind == "again":  # an earlier run's id again, maybe with another as_of
            out.append(control.PayoutRun(f"run{data.draw(st.integers(0, i))}-0", at, at))
        elif kind == "decision" and opened:
            case = data.draw(st.sampled_from(opened))
            out.append(control.ReviewDecision(case.case_id, case.ucc, data.draw(st.booleans()), "test",
                                              max(at, case.opened_at)))
        elif kind == "outcome" and payouts:
            p = data.draw(st.sampled_from(payouts))
            out.append(control.PayoutOutcome(p.payout_id, p.ucc, data.draw(st.sampled_from(
                [control.PAID, control.FAILED, control.RETURNED])), "", at, "ops", ""))
        elif kind == "adjustment":
            out.append(control.LedgerAdjustment(f"adj{i}", ucc, data.draw(st.sampled_from(["usd", "eur"])),
                                                data.draw(st.integers(-3000, 3000).filter(bool)), at, "ops",
                                                "test"))
        elif kind == "assignment":
            out.append(control.CampaignAssignment(ucc, "partners", at, "ops", "test"))
        elif kind == "revision" and engine.book.latest.rules.revision == 3:
            out.append(LOWER)
    return out


@PROPERTY
@given(st.data(), histories(cus="cus_A", user="u1", uccs=("ucc_X",)),
       histories(cus="cus_B", user="u2", uccs=("ucc_Y",), conflicts=False, currencies=("usd", "eur")),
       histories(cus="cus_C", user="u3", uccs=("ucc_X", "ucc_Z"), conflicts=False))
def test_skipping_referrers_a_run_cannot_pay_changes_no_output_and_no_state(data, a, b, c) -> None:  # type: ignore[no-untyped-def]
    bodies = [body for _, body in sorted(a.events + b.events + c.events, key=lambda e: e[0])]
    skipping, every = Engine(RULES), EveryReferrer(RULES)
    opened: list[commands.ReviewCase] = []
    payouts: list[commands.PayoutCommand] = []
    for i, body in enumerate(bodies):
        out = skipping.feed_stripe(body)
        assert every.feed_stripe(body) == out
        for record in _controls(data, i, skipping, opened, payouts):
            raw = control.encode(record)
            out += (got := skipping.feed_control(raw))
            assert every.feed_control(raw) == got
        opened += [r.record for r in out if isinstance(r.record, commands.ReviewCase)]
        payouts += [r.record for r in out if isinstance(r.record, commands.PayoutCommand)]
    final = control.encode(control.PayoutRun("final", START + 900 * DAY, START + 900 * DAY))
    assert skipping.feed_control(final) == every.feed_control(final)
    assert skipping.referrers.keys() == every.referrers.keys()
    for ucc, state in skipping.referrers.items():
        assert referrer.dumps(state) == referrer.dumps(every.referrers[ucc])
    assert skipping.summaries() == every.summaries()


@PROPERTY
@given(st.data(), histories(cus="cus_A", user="u1", uccs=("ucc_X",)),
       histories(cus="cus_B", user="u2", uccs=("ucc_X",), conflicts=False, currencies=("usd", "eur")))
def test_a_run_before_a_referrers_due_time_only_notes_its_id(data, a, b) -> None:  # type: ignore[no-untyped-def]
    bodies = [body for _, body in sorted(a.events + b.events, key=lambda e: e[0])]
    book = RuleBook.of(RULES)
    engine = Engine(book)
    cut = data.draw(st.integers(0, len(bodies)))
    for body in bodies[:cut]:
        engine.feed_stripe(body)
    if data.draw(st.booleans()):
        mid = START + data.draw(st.integers(0, 400)) * DAY
        engine.feed_control(control.encode(control.PayoutRun("mid", mid, mid)))
    for state in engine.referrers.values():
        due = due_at(state, book)
        if due == ALWAYS:
            continue  # a waiting refund case: every run steps it
        latest = START + 900 * DAY if due is None else due - 1
        as_of = data.draw(st.integers(min(latest, START - 400 * DAY), latest))
        run = control.PayoutRun("probe", as_of, as_of)
        assert referrer.step(state, run, book) == (note_run(state, run), [])


def test_a_referrer_with_an_earning_due_is_paid_by_the_first_run_after_its_hold() -> None:
    engine = Engine(RULES)
    engine.feed_stripe(customer("cus_1", ts("2026-01-10"), ucc="ucc_X", user="u1"))
    engine.feed_stripe(invoice_paid("in_1", "cus_1", ts("2026-01-11"), amount_paid=4000, total=4000,
                                    total_excluding_tax=4000, charge="ch_1"))
    state = engine.referrers["ucc_X"]
    # 500 signup bonus + 1000 purchase bonus + 25 % of 4000: 2500 usd, all payable 30 days on
    assert due_at(state, RuleBook.of(RULES)) == ts("2026-02-10")
    early = engine.feed_control(control.encode(control.PayoutRun("jan", ts("2026-01-31"), ts("2026-01-31"))))
    assert early == [] and engine.referrers["ucc_X"].runs == ("jan",)
    paid = engine.feed_control(control.encode(control.PayoutRun("feb", ts("2026-02-28"), ts("2026-02-28"))))
    assert [r.record.amount for r in paid if isinstance(r.record, commands.PayoutCommand)] == [2500]
    assert engine.referrers["ucc_X"].runs == ("jan", "feb")
