"""The what-if page of `refstream replay --html`: one small self-contained file, amounts in
each currency's units, a table sortable from the keyboard, charts that fit the number of
referrers, and the rules compared side by side (docs/replay.md)."""

from __future__ import annotations

import random
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner

from projections.report import (
    Figures,
    Report,
    build_report,
    histogram_bins,
    minor_unit_exponent,
    money,
    to_html,
)
from refstream.cli import main
from schemas.rules import Rules, parse_rules
from tests.replay.scenario import CURRENT_RULES, PROPOSED_RULES, records, write_export

PROPOSED = parse_rules(PROPOSED_RULES)
CURRENT = parse_rules(CURRENT_RULES)
BOTH: list[tuple[str, int, Rules]] = [("proposed.toml", 4, PROPOSED), ("current.toml", 3, CURRENT)]


class Page(HTMLParser):
    """What a reader sees of the page: its tables (per section: rows of cell texts, and
    whether each heading is a button), figure captions, the texts inside the charts, and
    every attribute that could make a browser fetch something."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: list[dict[str, object]] = []
        self.captions: list[str] = []
        self.svg_texts: list[str] = []
        self.fetching: list[tuple[str, str, str]] = []
        self.scripts: list[str] = []
        self.headings: list[str] = []
        self._cell: list[str] | None = None
        self._section = "tbody"
        self._caption: list[str] | None = None
        self._heading: list[str] | None = None
        self._svg_text: list[str] | None = None
        self._script: list[str] | None = None
        self.feed(text)
        self.close()

    @property
    def table(self) -> dict[str, object]:
        return self.tables[-1]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        for name in ("src", "href", "action", "srcset", "poster", "data", "xlink:href"):
            value = a.get(name)
            if value is not None and not value.startswith("#"):
                self.fetching.append((tag, name, value))
        if tag == "table":
            self.tables.append({"class": a.get("class"), "thead": [], "tbody": [], "tfoot": [],
                                "buttons": []})
        elif tag in ("thead", "tbody", "tfoot"):
            self._section = tag
        elif tag == "tr":
            self.table[self._section].append([])  # type: ignore[attr-defined]
        elif tag in ("td", "th"):
            self._cell = []
            self.table[self._section][-1].append(self._cell)  # type: ignore[index]
        elif tag == "button" and self._section == "thead":
            self.table["buttons"].append(a.get("type"))  # type: ignore[attr-defined]
        elif tag == "figcaption":
            self._caption = []
        elif tag in ("h1", "h2"):
            self._heading = []
        elif tag == "text":
            self._svg_text = []
        elif tag == "script":
            self._script = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th", "tr", "thead", "tbody", "tfoot", "table"):
            self._cell = None  # also where an end tag the table may omit was left out
        if tag in ("thead", "tbody", "tfoot"):
            self._section = "tbody"
        if tag == "figcaption" and self._caption is not None:
            self.captions.append("".join(self._caption))
            self._caption = None
        elif tag in ("h1", "h2") and self._heading is not None:
            self.headings.append("".join(self._heading))
            self._heading = None
        elif tag == "text" and self._svg_text is not None:
            self.svg_texts.append("".join(self._svg_text))
            self._svg_text = None
        elif tag == "script" and self._script is not None:
            self.scripts.append("".join(self._script))
            self._script = None

    def handle_data(self, data: str) -> None:
        for sink in (self._cell, self._caption, self._heading, self._svg_text, self._script):
            if sink is not None:
                sink.append(data)

    def rows(self, index: int, section: str = "tbody") -> list[list[str]]:
        table = [t for t in self.tables if t["class"] == "sortable"][index]
        return [["".join(c).strip() for c in row] for row in table[section]]  # type: ignore[attr-defined]

    def rules_tables(self) -> list[list[list[str]]]:
        return [[["".join(c).strip() for c in row] for row in t["thead"] + t["tbody"]]  # type: ignore[operator]
                for t in self.tables if t["class"] == "rules"]


def random_figures(rng: random.Random) -> Figures:
    """A referrer as a real programme has them: most earn tens to hundreds, a few thousands."""
    earned = int(rng.lognormvariate(9.5, 1.2))
    reversed_ = int(earned * rng.random() * 0.3) if rng.random() < 0.1 else 0
    paid = int((earned - reversed_) * rng.random()) if rng.random() < 0.6 else 0
    return Figures(rng.randint(1, 30), earned, reversed_, paid, earned - reversed_ - paid)


def many_referrers(n: int, *, compare: bool, currency: str = "usd") -> Report:
    rng = random.Random(n)
    mine: dict[tuple[str, str], Figures] = {}
    other: dict[tuple[str, str], Figures] = {}
    for _ in range(n):
        key = (f"ucc_{rng.getrandbits(48):012x}", currency)  # longer ids than the bench's ucc_00001
        f = mine[key] = random_figures(rng)
        changed = int(f.earned * rng.uniform(0.7, 1.3))
        other[key] = f if rng.random() < 0.3 else Figures(f.referrals, changed, f.reversed, f.paid,
                                                          f.payable)
    return build_report(mine, other if compare else None, rules_revision=4,
                        compare_revision=3 if compare else None, as_of=1790000000,
                        stripe_events=1_000_000, control_events=12, skipped=0)


def small(rows: dict[tuple[str, str], tuple[int, int]]) -> Report:
    """A comparison where each (ucc, currency) earns (replayed, compared)."""
    return build_report(
        {k: Figures(1, a, 0, 0, a) for k, (a, _) in rows.items()},
        {k: Figures(1, b, 0, 0, b) for k, (_, b) in rows.items()},
        rules_revision=4, compare_revision=3, as_of=1790000000, stripe_events=10, control_events=0,
        skipped=0,
    )


# --- size -------------------------------------------------------------------------------------


@pytest.mark.parametrize("compare", [True, False], ids=["what-if", "one-rules"])
def test_a_page_for_10000_referrers_is_under_1_mb_and_lists_every_one(compare):
    report = many_referrers(10_000, compare=compare)
    page = to_html(report, BOTH if compare else BOTH[:1])
    assert len(page.encode()) < 1_000_000
    parsed = Page(page)
    assert len(parsed.rows(0)) == 10_000
    assert {r[0] for r in parsed.rows(0)} == {r.ucc for r in report.rows}


# --- amounts ----------------------------------------------------------------------------------


def test_minor_units_become_the_currencys_units():
    assert [minor_unit_exponent(c) for c in ("usd", "eur", "jpy", "krw", "kwd", "USD", "JPY")] == [
        2, 2, 0, 0, 3, 2, 0]
    assert money(2750, "usd") == "$27.50"
    assert money(500, "jpy") == "¥500"
    assert money(150_000, "krw") == "₩150,000"
    assert money(-300, "eur") == "-€3.00"
    assert money(1234, "kwd") == "KWD\u00a01.234"
    assert money(123_456_789, "usd") == "$1,234,567.89"
    assert money(2750, "usd", signed=True) == "+$27.50"
    assert money(-2750, "usd", signed=True) == "-$27.50"
    assert money(0, "usd", signed=True) == "$0.00"


def test_every_amount_on_the_page_is_in_the_currencys_units():
    report = small({("ucc_A", "usd"): (2750, 0), ("ucc_B", "jpy"): (500, 800), ("ucc_C", "kwd"): (1234, 0)})
    page = to_html(report, BOTH)
    parsed = Page(page)
    assert "minor units" not in page
    assert parsed.headings[1:] == ["Rules", "JPY", "KWD", "USD"]
    jpy, kwd, usd = (parsed.rows(i) for i in range(3))
    # referrer, referrals, earned, net, payable, net compared, Δ net
    assert usd == [["ucc_A", "1", "27.50", "27.50", "27.50", "0.00", "+27.50"]]
    assert jpy == [["ucc_B", "1", "500", "500", "500", "800", "-300"]]
    assert kwd == [["ucc_C", "1", "1.234", "1.234", "1.234", "0.000", "+1.234"]]
    assert "Amounts in $;" in page and "Amounts in ¥;" in page and "Amounts in KWD;" in page
    # the summaries and charts say the amount with its currency
    assert "Net $27.50 under proposed.toml, $0.00 under current.toml: +$27.50" in page
    assert "+$27.50" in parsed.svg_texts and "-¥300" in parsed.svg_texts
    # the rules' amounts too: signup_bonus = 500 (usd cents) is $5.00
    (differ, _same) = parsed.rules_tables()
    assert ["currency.usd.purchase_bonus", "$0.00", "$10.00"] in differ


# --- the table --------------------------------------------------------------------------------


def test_the_table_sorts_from_its_column_headings_which_are_buttons():
    report = small({("ucc_A", "usd"): (2750, 0), ("ucc_B", "usd"): (100, 5000), ("ucc_C", "usd"): (900, 900)})
    parsed = Page(to_html(report, BOTH))
    (table,) = [t for t in parsed.tables if t["class"] == "sortable"]
    head = parsed.rows(0, "thead")[0]
    assert head == ["referrer", "referrals", "earned", "net", "payable", "net, compared", "Δ net"]
    assert table["buttons"] == ["button"] * len(head)  # a real <button>: focusable, Enter/Space press it
    # rows start in order of impact; the totals are in the footer, which sorting leaves alone
    assert [r[0] for r in parsed.rows(0)] == ["ucc_B", "ucc_A", "ucc_C"]
    assert parsed.rows(0, "tfoot") == [["total", "3", "37.50", "37.50", "37.50", "59.00", "-21.50"]]
    (script,) = parsed.scripts
    assert "table.sortable" in script and "aria-sort" in script and "click" in script


# --- self-contained ---------------------------------------------------------------------------


def test_the_page_fetches_nothing_so_it_opens_offline():
    page = to_html(many_referrers(500, compare=True), BOTH)
    parsed = Page(page)
    assert parsed.fetching == []  # no src=, no href= but to its own sections
    assert "://" not in page and "@import" not in page and "url(" not in page


def test_referrer_ids_and_labels_are_shown_as_text_never_as_markup():
    evil = "<img src=x onerror=alert(1)>"
    report = small({(evil, "usd"): (100, 0)})
    page = to_html(report, [(f"{evil}.toml", 4, PROPOSED), ("current.toml", 3, CURRENT)])
    assert "<img" not in page
    parsed = Page(page)
    assert parsed.rows(0)[0][0] == evil
    assert parsed.fetching == []


# --- charts -----------------------------------------------------------------------------------


def test_few_referrers_get_bars_for_every_change_and_no_histogram():
    report = small({("ucc_A", "usd"): (2750, 0), ("ucc_B", "usd"): (100, 5000),
                    ("ucc_C", "usd"): (900, 900), ("ucc_D", "usd"): (700, 200)})
    parsed = Page(to_html(report, BOTH))
    assert parsed.captions == ["Net increases (all 2)", "Net decreases (all 1)"]
    assert [t for t in parsed.svg_texts if t.startswith("ucc_")] == ["ucc_A", "ucc_D", "ucc_B"]


def test_many_referrers_get_the_largest_changes_and_a_histogram_of_all():
    report = many_referrers(10_000, compare=True)
    parsed = Page(to_html(report, BOTH))
    up = sorted((r for r in report.rows if r.delta_net > 0), key=lambda r: -r.delta_net)
    down = sorted((r for r in report.rows if r.delta_net < 0), key=lambda r: r.delta_net)
    changed = len(up) + len(down)
    assert parsed.captions == [
        f"Net increases (the 10 largest of {len(up):,})",
        f"Net decreases (the 10 largest of {len(down):,})",
        f"Change of net per referrer ({changed:,} referrers whose net changed)",
    ]
    names = [t for t in parsed.svg_texts if t.startswith("ucc_")]
    assert names == [r.ucc for r in up[:10]] + [r.ucc for r in down[:10]]
    assert money(up[0].delta_net, "usd", signed=True) in parsed.svg_texts


def test_without_a_comparison_the_chart_shows_the_largest_net():
    report = many_referrers(300, compare=False)
    parsed = Page(to_html(report, BOTH[:1]))
    top = sorted(report.rows, key=lambda r: -r.figures.net)[:10]
    assert parsed.captions == ["Net per referrer (the 10 largest of 300)",
                               "Net per referrer (300 referrers with a net other than 0)"]
    assert [t for t in parsed.svg_texts if t.startswith("ucc_")] == [r.ucc for r in top]
    assert parsed.rows(0, "thead")[0] == ["referrer", "referrals", "earned", "reversed", "net", "paid",
                                          "payable"]


def test_histogram_bins_have_round_edges_and_keep_outliers_apart():
    values = [*range(0, 1000, 10), 1_000_000]  # 100 referrers from $0 to $9.90, and one far away
    bins = histogram_bins(values, bins=10)
    assert sum(n for _, _, n in bins) == len(values)
    assert bins[-1] == (1000, None, 1)  # the outlier has a bar of its own past the range
    edges = [lo for lo, _, _ in bins[:-1]]
    assert edges == list(range(0, 1000, 100))  # $1.00 steps, not 1/10 of $10,000
    assert histogram_bins([5] * 200) == [(5, 6, 200)]


# --- the rules --------------------------------------------------------------------------------


def test_the_rules_compared_show_both_revisions_and_the_settings_that_differ():
    parsed = Page(to_html(small({("ucc_A", "usd"): (2750, 0)}), BOTH))
    differ, same = parsed.rules_tables()
    assert differ[0] == ["setting", "proposed.tomlrevision 4", "current.tomlrevision 3"]
    assert differ[1:] == [
        ["reward_percent", "30 %", "25 %"],
        ["reward_months", "6", "12"],
        ["currency.usd.purchase_bonus", "$0.00", "$10.00"],
    ]
    assert ["hold_days", "30", "30"] in same and ["currency.usd.signup_bonus", "$5.00", "$5.00"] in same
    assert ["currency.usd.review_above", "never held for size", "never held for size"] in same
    assert parsed.headings[0] == "What if: proposed.toml (revision 4) against current.toml (revision 3)"


def test_the_rules_section_takes_any_number_of_revisions():
    later = parse_rules(PROPOSED_RULES.replace("revision = 4", "revision = 5")
                        .replace("reward_percent = 30", "reward_percent = 27.5"))
    page = to_html(small({("ucc_A", "usd"): (2750, 0)}),
                   [*BOTH, ("log, 2026-06-01", 5, later)])
    differ, _same = Page(page).rules_tables()
    assert differ[0][1:] == ["proposed.tomlrevision 4", "current.tomlrevision 3", "log, 2026-06-01revision 5"]
    assert ["reward_percent", "30 %", "25 %", "27.5 %"] in differ


def test_two_different_rules_with_the_same_revision_are_pointed_out():
    same_revision = parse_rules(PROPOSED_RULES.replace("revision = 4", "revision = 3"))
    page = to_html(small({("ucc_A", "usd"): (2750, 0)}),
                   [("proposed.toml", 3, same_revision), ("current.toml", 3, CURRENT)])
    assert "proposed.toml and current.toml both say revision 3 but set different values" in page


# --- the command ------------------------------------------------------------------------------


def test_replay_html_writes_the_what_if_page_of_the_scenario(tmp_path: Path):
    log, current, proposed = tmp_path / "log.jsonl", tmp_path / "current.toml", tmp_path / "proposed.toml"
    write_export(log, records())
    current.write_text(CURRENT_RULES)
    proposed.write_text(PROPOSED_RULES)
    page = tmp_path / "report.html"
    result = CliRunner().invoke(main, [
        "replay", "--no-progress", "--rules", str(proposed), "--compare", str(current),
        "--source", str(log), "--as-of", "2026-09-30T00:00:00Z", "--format", "csv",
        "--out", str(tmp_path / "r.csv"), "--html", str(page)])
    assert result.exit_code == 0, result.output
    assert f"HTML report in {page}" in result.stderr
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>")
    parsed = Page(text)
    assert parsed.headings[0] == (f"What if: {proposed} (revision 4) against {current} (revision 3)")
    # the numbers docs/replay.md shows: ucc_X loses 27.50 of net; Y and Z are unchanged
    assert parsed.rows(0) == [
        ["ucc_X", "1", "65.00", "50.00", "15.00", "77.50", "-27.50"],
        ["ucc_Y", "1", "100.00", "100.00", "100.00", "100.00", "0.00"],
        ["ucc_Z", "1", "5.00", "5.00", "5.00", "5.00", "0.00"],
    ]
    assert parsed.captions == ["Net decreases (all 1)"]
    assert "0 referrers gain, 1 loses, 2 unchanged" in text
    assert parsed.fetching == []


def test_an_empty_log_gives_a_page_that_says_so():
    report = build_report({}, {}, rules_revision=4, compare_revision=3, as_of=0, stripe_events=0,
                          control_events=0, skipped=0)
    page = to_html(report, BOTH)
    assert "No referrers in this log." in page
    assert Page(page).rules_tables()  # the rules are still compared


def test_the_page_is_the_same_bytes_every_time():
    report = many_referrers(200, compare=True)
    assert to_html(report, BOTH) == to_html(report, BOTH)
