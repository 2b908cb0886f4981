"""Rules files an operator might write, including broken ones: a clear error, never a traceback."""

from __future__ import annotations

import string

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.rules import CAMPAIGN_KEYS, CURRENCY_KEYS, Rules, RulesError, parse_rules

GOOD = """[campaign]
revision = 3
currency = "usd"
reward_percent = 25

[currency.usd]
signup_bonus = 500
"""

toml_scalars = st.one_of(
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(
        lambda f: {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(str(f), repr(f))
    ),
    st.booleans().map(lambda b: "true" if b else "false"),
    st.text(alphabet=string.printable, max_size=12).map(lambda s: '"' + s.replace('"', "") + '"'),
    st.just("[]"),
    st.just("{}"),
    st.just("1979-05-27T07:32:00Z"),
)
keys = st.sampled_from([*CAMPAIGN_KEYS, *CURRENCY_KEYS, "bogus", "reward percent"])
tables = st.sampled_from(["campaign", "currency.usd", "currency.USD", "currency.eur", "other", "currency"])


@st.composite
def rules_like_files(draw: st.DrawFn) -> str:
    lines: list[str] = []
    for _ in range(draw(st.integers(0, 4))):
        lines.append(f"[{draw(tables)}]")
        for _ in range(draw(st.integers(0, 6))):
            lines.append(f"{draw(keys)} = {draw(toml_scalars)}")
    return "\n".join(lines) + "\n"


def _parses_or_explains(text: str) -> None:
    try:
        rules = parse_rules(text, source="fuzz.toml")
    except RulesError as exc:
        # the message names the file and says what to do; never a bare repr
        assert str(exc).startswith("fuzz.toml")
        assert exc.message and len(exc.message) > 10
    else:
        assert isinstance(rules, Rules)


@settings(max_examples=200, deadline=None)
@given(rules_like_files())
def test_structured_fuzz_gives_rules_or_a_clear_error(text: str) -> None:
    _parses_or_explains(text)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200))
def test_random_text_gives_a_clear_error(text: str) -> None:
    _parses_or_explains(text)


@settings(max_examples=150, deadline=None)
@given(st.integers(0, len(GOOD)), st.text(max_size=5))
def test_one_edit_away_from_a_good_file(at: int, insert: str) -> None:
    _parses_or_explains(GOOD[:at] + insert + GOOD[at:])


def test_mistake_names_line_and_field() -> None:
    text = GOOD.replace("signup_bonus = 500", "signup_bonus = 5.5")
    try:
        parse_rules(text, source="rules.toml")
    except RulesError as exc:
        assert (exc.line, exc.field) == (7, "currency.usd.signup_bonus")
        assert "whole number" in exc.message
    else:
        raise AssertionError("a fractional bonus must be refused")
