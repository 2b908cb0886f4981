"""Properties of the fraud signals (docs/rules.md#fraud-signals), over generated histories:

- honest histories (every customer its own e-mail address and card, the referrers' own
  customers included) never open a `suspected_fraud` case, whatever the order;
- in histories with shared e-mail addresses and cards, linked own customers and bursts of
  signups, duplicating or reordering the log's events never changes which cases open, nor
  what they say.

(The worker's own stage code under generated schedules is checked against replay with these
signals in tests/unit/test_interleavings.py.)"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processors.rules.engine import Engine
from schemas import commands, control
from schemas.commands import SUSPECTED_FRAUD, ReviewCase
from schemas.rules import RuleBook
from tests.unit.builders import charge, customer
from tests.unit.conftest import make_rules
from tests.unit.histories import START, histories

KEY = b"identity-key-for-the-properties"
Item = bytes | control.ControlRecord


def book(**campaign: object) -> RuleBook:
    return RuleBook.of(make_rules(**campaign), KEY)


def opened(items: list[Item], rules: RuleBook) -> list[bytes]:
    """The suspected_fraud cases the log opens, as their records' bytes, sorted."""
    e = Engine(rules)
    found = []
    for item in items:
        out = e.feed_stripe(item) if isinstance(item, bytes) else e.feed_control_record(item)
        found += [commands.encode(r.record) for r in out
                  if isinstance(r.record, ReviewCase) and r.record.kind == SUSPECTED_FRAUD]
    return sorted(found)


def own_customers(draw: st.DrawFn, emails: list[str | None], cards: list[str | None]
                  ) -> list[tuple[int, bytes]]:
    """The referrers' own customers: ucc_X's cus_own_X, ucc_Y's cus_own_Y, each with a
    mailbox and a card drawn from the pools."""
    out = []
    for ucc in ("X", "Y"):
        t = START + draw(st.integers(0, 90)) * 86_400
        out.append((t, customer(f"cus_own_{ucc}", t, email=draw(st.sampled_from(emails)))))
        card = draw(st.sampled_from(cards))
        if card is not None:
            out.append((t + 60, charge(f"ch_own_{ucc}", f"cus_own_{ucc}", t + 60, amount=1500, card=card)))
    return out


def with_links(draw: st.DrawFn, events: list[tuple[int, bytes]]) -> list[Item]:
    events.sort(key=lambda e: e[0])
    items: list[Item] = [b for _, b in events]
    for ucc in ("ucc_X", "ucc_Y"):
        at = draw(st.integers(0, len(items)))
        items.insert(at, control.ReferrerLink(ucc, f"cus_own_{ucc[-1]}", START, "ops", "own account"))
    return items


@st.composite
def honest_logs(draw: st.DrawFn) -> list[Item]:
    """Up to six referred customers and the two own customers, no two of them sharing an
    e-mail address or a card (Gmail's dots and +tags aside: every address differs as a mailbox)."""
    n = draw(st.integers(1, 6))
    events: list[tuple[int, bytes]] = []
    for i in range(n):
        h = draw(histories(cus=f"cus_{i}", user=f"u{i}", uccs=("ucc_X", "ucc_Y"), currencies=("usd",),
                           email=f"person.{i}+ref@example.com", card=f"fp_{i}", charges=True))
        events += h.events
    for ucc in ("X", "Y"):
        events += [(START, customer(f"cus_own_{ucc}", START, email=f"{ucc.lower()}.owner@example.com")),
                   (START + 60, charge(f"ch_own_{ucc}", f"cus_own_{ucc}", START + 60, amount=1500,
                                       card=f"fp_own_{ucc}"))]
    return with_links(draw, events)


@st.composite
def suspect_logs(draw: st.DrawFn) -> list[Item]:
    """Referred and own customers drawing from small pools of mailboxes and cards (so they
    share some), linked anywhere, and signups close enough in time to make bursts."""
    emails: list[str | None] = ["ana@example.com", "Ana+1@Example.com", "bea@example.com", None]
    cards: list[str | None] = ["fp_1", "fp_2", None]
    n = draw(st.integers(1, 6))
    events: list[tuple[int, bytes]] = []
    for i in range(n):
        h = draw(histories(cus=f"cus_{i}", user=f"u{i}", uccs=("ucc_X", "ucc_Y"), currencies=("usd",),
                           conflicts=False, email=draw(st.sampled_from(emails)),
                           card=draw(st.sampled_from(cards)), charges=draw(st.booleans())))
        events += h.events
    events += own_customers(draw, emails, cards)
    return with_links(draw, events)


SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@SETTINGS
@given(honest_logs(), st.randoms(use_true_random=False))
def test_honest_histories_never_fire_a_signal(items: list[Item], rnd: object) -> None:
    rules = book()
    assert opened(items, rules) == []
    shuffled = list(items)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert opened(shuffled, rules) == []


@SETTINGS
@given(suspect_logs(), st.randoms(use_true_random=False), st.data())
def test_duplicating_or_reordering_events_never_changes_which_cases_open(
    items: list[Item], rnd: object, data: st.DataObject,
) -> None:
    rules = book(max_signups_per_day=1)
    expected = opened(items, rules)
    shuffled = list(items)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert opened(shuffled, rules) == expected, "another order opened other cases"
    again = data.draw(st.lists(st.sampled_from(items), max_size=8), label="delivered again")
    duplicated = list(shuffled)
    for item in again:
        duplicated.insert(data.draw(st.integers(0, len(duplicated))), item)
    assert opened(duplicated, rules) == expected, "duplicates opened other cases"


def test_the_generated_suspect_logs_do_open_every_kind_of_case() -> None:
    """The property above is about something: the generator reaches each signal."""
    seen: set[str] = set()

    @settings(max_examples=200, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(suspect_logs())
    def collect(items: list[Item]) -> None:
        for raw in opened(items, book(max_signups_per_day=1)):
            case = commands.decode(raw)
            assert isinstance(case, ReviewCase)
            seen.add(str(case.details["signal"]))

    collect()
    assert seen == set(commands.SIGNALS)
