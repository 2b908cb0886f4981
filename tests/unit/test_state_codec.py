"""Stage states survive the table round trip: dumps → loads gives the same state, and
folding on from a decoded state gives the same outputs as folding on in memory."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from processors.rules import invoice_link, referral, referrer
from processors.rules.engine import Engine
from schemas import control
from tests.unit.histories import START, History, histories
from tests.unit.test_properties import CAPPED_RULES


@settings(max_examples=60, deadline=None)
@given(st.data(), histories())
def test_every_state_round_trips_and_folding_on_from_it_is_the_same(data: st.DataObject, h: History) -> None:
    bodies = h.bodies
    cut = data.draw(st.integers(0, len(bodies)))
    engine = Engine(CAPPED_RULES)
    for b in bodies[:cut]:
        engine.feed_stripe(b)
    engine.feed_control(control.encode(control.PayoutRun("mid", START + 90 * 86400, 0)))
    restored = Engine(CAPPED_RULES)
    for table, module in ((engine.customers, referral), (engine.invoices, invoice_link),
                          (engine.referrers, referrer)):
        for key, state in table.items():
            again = module.loads(module.dumps(state))  # type: ignore[attr-defined]
            assert again == state
            getattr(restored, {referral: "customers", invoice_link: "invoices", referrer: "referrers"}[
                module])[key] = again
    restored.latest = engine.latest
    for b in bodies[cut:]:
        assert restored.feed_stripe(b) == engine.feed_stripe(b)
    assert restored.summaries() == engine.summaries()


class TableEngine(Engine):
    """Like the workers: every state is encoded into its table and decoded again on
    every step."""

    def _run(self, first):  # type: ignore[no-untyped-def]
        out = super()._run(first)
        for table, module in ((self.customers, referral), (self.invoices, invoice_link),
                              (self.referrers, referrer)):
            for key, state in table.items():
                table[key] = module.loads(module.dumps(state))  # type: ignore[attr-defined]
        return out


@settings(max_examples=40, deadline=None)
@given(st.data(), histories(cus="cus_A", user="u1"), histories(cus="cus_B", user="u2", conflicts=False))
def test_a_table_round_trip_after_every_step_changes_no_output(data: st.DataObject, a: History,
                                                                b: History) -> None:
    bodies = data.draw(st.permutations(a.bodies + b.bodies))
    plain, tabled = Engine(CAPPED_RULES), TableEngine(CAPPED_RULES)
    for i, body in enumerate(bodies):
        assert tabled.feed_stripe(body) == plain.feed_stripe(body)
        if i % 5 == 4:
            run = control.encode(control.PayoutRun(f"r{i}", START + i * 20 * 86400, 0))
            assert tabled.feed_control(run) == plain.feed_control(run)
    assert tabled.summaries() == plain.summaries()


@settings(max_examples=40, deadline=None)
@given(st.data(), histories(cus="cus_A", user="u1"), histories(cus="cus_B", user="u1", conflicts=False))
def test_a_referrer_encoded_reusing_its_unchanged_referrals_is_byte_identical(
        data: st.DataObject, a: History, b: History) -> None:
    # the worker encodes a referrer after every batch, reusing the rows of the referrals
    # the batch did not touch: the table must hold exactly what a fresh encoding gives
    bodies = data.draw(st.permutations(a.bodies + b.bodies))
    engine = Engine(CAPPED_RULES)
    encoded: dict[str, referrer.EncodedReferrals] = {}
    for i, body in enumerate(bodies):
        engine.feed_stripe(body)
        if i % 5 == 4:
            engine.feed_control(control.encode(control.PayoutRun(f"r{i}", START + i * 20 * 86400, 0)))
        for ucc, state in engine.referrers.items():
            assert referrer.dumps(state, encoded.setdefault(ucc, {})) == referrer.dumps(state)
