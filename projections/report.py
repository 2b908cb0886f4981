"""The replay report: per referrer and currency, as a table, CSV, JSON or an HTML page.

Amounts are integers in minor units in CSV and JSON (exact, and what a notebook wants);
the table shows them in major units for reading. Currencies are never summed together:
totals are per currency. Rendering is deterministic (no clock, fixed order), so the same
log and rules always give byte-identical CSV and JSON.
"""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

# Stripe's zero- and three-decimal currencies; every other currency has two decimals.
_ZERO_DECIMAL = frozenset(
    ["bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga",
     "pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf"]
)
_THREE_DECIMAL = frozenset(["bhd", "jod", "kwd", "omr", "tnd"])


@dataclass(frozen=True, slots=True)
class Figures:
    """One referrer's numbers in one currency under one set of rules."""

    referrals: int = 0
    earned: int = 0  # gross: bonuses and rewards, before reversals
    reversed: int = 0  # reversals, as a positive amount
    paid: int = 0  # what the payout runs in the log paid (under these rules)
    payable: int = 0  # what a payout run at `as_of` would pay (may be below min_payout)

    @property
    def net(self) -> int:
        return self.earned - self.reversed

    def __add__(self, other: Figures) -> Figures:
        return Figures(
            self.referrals + other.referrals,
            self.earned + other.earned,
            self.reversed + other.reversed,
            self.paid + other.paid,
            self.payable + other.payable,
        )


ZERO = Figures()


@dataclass(frozen=True, slots=True)
class Row:
    ucc: str
    currency: str
    figures: Figures
    compare: Figures | None = None  # under --compare rules

    @property
    def delta_earned(self) -> int:
        return self.figures.earned - (self.compare or ZERO).earned

    @property
    def delta_net(self) -> int:
        return self.figures.net - (self.compare or ZERO).net

    @property
    def delta_payable(self) -> int:
        return self.figures.payable - (self.compare or ZERO).payable


@dataclass(frozen=True, slots=True)
class Report:
    rules_revision: int
    compare_revision: int | None
    as_of: int  # Unix seconds
    stripe_events: int
    control_events: int
    skipped: int  # records the rules could not read (the live worker dead-letters them)
    rows: tuple[Row, ...]

    @property
    def comparing(self) -> bool:
        return self.compare_revision is not None

    def totals(self) -> list[Row]:
        by_currency: dict[str, tuple[Figures, Figures]] = {}
        for row in self.rows:
            mine, other = by_currency.get(row.currency, (ZERO, ZERO))
            by_currency[row.currency] = (mine + row.figures, other + (row.compare or ZERO))
        return [
            Row("", cur, mine, other if self.comparing else None)
            for cur, (mine, other) in sorted(by_currency.items())
        ]


def build_report(
    mine: dict[tuple[str, str], Figures],
    other: dict[tuple[str, str], Figures] | None,
    *,
    rules_revision: int,
    compare_revision: int | None,
    as_of: int,
    stripe_events: int,
    control_events: int,
    skipped: int,
) -> Report:
    """Rows for every (referrer, currency) seen under either rules; with a comparison they
    are sorted by impact (the largest change of net, either way, first)."""
    keys = set(mine) | (set(other) if other is not None else set())
    rows = [
        Row(ucc, cur, mine.get((ucc, cur), ZERO), None if other is None else other.get((ucc, cur), ZERO))
        for ucc, cur in keys
    ]
    if other is None:
        rows.sort(key=lambda r: (r.ucc, r.currency))
    else:
        rows.sort(key=lambda r: (-abs(r.delta_net), -abs(r.delta_earned), r.ucc, r.currency))
    return Report(rules_revision, compare_revision, as_of, stripe_events, control_events, skipped,
                  tuple(rows))


def iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def major(amount: int, currency: str) -> str:
    """Minor units as a decimal string in major units, exact (no floats)."""
    places = 0 if currency in _ZERO_DECIMAL else 3 if currency in _THREE_DECIMAL else 2
    if places == 0:
        return f"{amount:,}"
    sign = "-" if amount < 0 else ""
    whole, frac = divmod(abs(amount), 10**places)
    return f"{sign}{whole:,}.{frac:0{places}d}"


# --- CSV and JSON -------------------------------------------------------------------------

_BASE = ("referrals", "earned", "reversed", "net", "paid", "payable")


def _columns(report: Report) -> list[str]:
    cols = ["row", "ucc", "currency", *_BASE]
    if report.comparing:
        cols += [f"compare_{c}" for c in _BASE] + ["delta_earned", "delta_net", "delta_payable"]
    return cols


def _record(row: Row, kind: str, comparing: bool) -> dict[str, Any]:
    f = row.figures
    rec: dict[str, Any] = {
        "row": kind, "ucc": row.ucc, "currency": row.currency, "referrals": f.referrals,
        "earned": f.earned, "reversed": f.reversed, "net": f.net, "paid": f.paid, "payable": f.payable,
    }
    if comparing:
        c = row.compare or ZERO
        rec |= {
            "compare_referrals": c.referrals, "compare_earned": c.earned,
            "compare_reversed": c.reversed, "compare_net": c.net, "compare_paid": c.paid,
            "compare_payable": c.payable,
            "delta_earned": row.delta_earned, "delta_net": row.delta_net,
            "delta_payable": row.delta_payable,
        }
    return rec


def _records(report: Report) -> Iterable[dict[str, Any]]:
    for row in report.rows:
        yield _record(row, "referrer", report.comparing)
    for row in report.totals():
        yield _record(row, "total", report.comparing)


def to_csv(report: Report) -> str:
    """One header line, one line per referrer and currency, then one `total` line per
    currency (filter on the `row` column to drop them). Amounts in minor units."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_columns(report), lineterminator="\n")
    writer.writeheader()
    writer.writerows(_records(report))
    return buf.getvalue()


def to_json(report: Report) -> bytes:
    doc = {
        "as_of": iso(report.as_of),
        "rules_revision": report.rules_revision,
        "compare_revision": report.compare_revision,
        "events": {"stripe": report.stripe_events, "control": report.control_events,
                   "skipped": report.skipped},
        "amounts": "minor units",
        "rows": [_record(r, "referrer", report.comparing) for r in report.rows],
        "totals": [_record(r, "total", report.comparing) for r in report.totals()],
    }
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"


# --- table --------------------------------------------------------------------------------


def to_table(report: Report) -> str:
    head = ["referrer", "cur", "referrals", "earned", "reversed", "net", "paid",
            f"payable {iso(report.as_of)}"]
    if report.comparing:
        head += [f"net r{report.compare_revision}", "Δ net"]

    def cells(row: Row, label: str) -> list[str]:
        f, cur = row.figures, row.currency
        out = [label, cur, str(f.referrals), major(f.earned, cur), major(f.reversed, cur),
               major(f.net, cur), major(f.paid, cur), major(f.payable, cur)]
        if report.comparing:
            c = row.compare or ZERO
            out += [major(c.net, cur), ("+" if row.delta_net > 0 else "") + major(row.delta_net, cur)]
        return out

    body = [cells(r, r.ucc) for r in report.rows]
    totals = [cells(r, "TOTAL") for r in report.totals()]
    widths = [max(len(x[i]) for x in [head, *body, *totals]) for i in range(len(head))]

    def line(values: list[str]) -> str:
        return "  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths,
                                                                                           strict=True)))

    rule = "  ".join("-" * w for w in widths)
    title = f"Replay under rules revision {report.rules_revision}"
    if report.comparing:
        title += f", compared with revision {report.compare_revision} (Δ = this − compared)"
    title += (f"; {report.stripe_events:,} stripe events, {report.control_events:,} control events"
              f", payable as of {iso(report.as_of)}")
    out = [title, "", line(head), rule, *map(line, body)]
    if not body:
        out.append("(no referrers in this log)")
    out += [rule, *map(line, totals)]
    if report.skipped:
        out += ["", f"{report.skipped:,} records could not be read and were skipped, as the worker "
                    f"skips them."]
    return "\n".join(out) + "\n"


# --- HTML ---------------------------------------------------------------------------------

_TOP = 40  # bars beyond this many referrers stop being readable; the histogram shows all


def to_html(report: Report) -> str:
    """One self-contained page: plotly.js is embedded, so it opens offline and can be mailed."""
    import plotly.graph_objects as go  # type: ignore[import-untyped]

    parts: list[str] = []
    first = True

    def add(fig: Any, div_id: str) -> None:
        nonlocal first
        fig.update_layout(template="plotly_white", height=460, margin={"t": 60})
        parts.append(fig.to_html(full_html=False, include_plotlyjs=first, div_id=div_id,
                                 config={"displaylogo": False}))
        first = False

    currencies = sorted({r.currency for r in report.rows})
    for cur in currencies:
        rows = [r for r in report.rows if r.currency == cur]
        shown = rows[:_TOP]
        names = [r.ucc for r in shown]
        bars = go.Figure()
        bars.add_bar(name=f"earned, rules r{report.rules_revision}", x=names,
                     y=[r.figures.earned for r in shown])
        if report.comparing:
            bars.add_bar(name=f"earned, compared r{report.compare_revision}", x=names,
                         y=[(r.compare or ZERO).earned for r in shown])
        what = "largest changes" if report.comparing else "referrers"
        more = f" (top {_TOP} of {len(rows)} {what})" if len(rows) > _TOP else ""
        bars.update_layout(barmode="group", title=f"Earned per referrer, {cur} minor units{more}",
                           xaxis_title="referrer", yaxis_title=f"{cur} (minor units)")
        add(bars, f"earned-{cur}")
        if report.comparing:
            hist = go.Figure()
            hist.add_histogram(x=[r.delta_earned for r in rows], name="Δ earned")
            hist.update_layout(
                title=f"Change of earned per referrer (r{report.rules_revision} − "
                      f"r{report.compare_revision}), {cur} minor units, {len(rows)} referrers",
                xaxis_title=f"Δ earned ({cur} minor units)", yaxis_title="referrers", showlegend=False,
            )
            add(hist, f"delta-{cur}")
    summary = html.escape(to_table(report))
    title = html.escape(f"refstream replay, rules revision {report.rules_revision}")
    charts = "\n".join(parts) if parts else "<p>No referrers in this log.</p>"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{title}</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:2em;}pre{font-size:12px;}</style>"
        f"</head><body><h1>{title}</h1>\n{charts}\n<h2>Report</h2><pre>{summary}</pre>\n</body></html>\n"
    )
