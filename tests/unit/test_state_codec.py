"""Stage states survive the table round trip: dumps → loads gives the same state, and
folding on from a decoded state gives the same outputs as folding on in memory."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from processors import invoice_link, referral, referrer
from processors.engine import Engine
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
