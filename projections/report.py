"""The replay report: per referrer and currency, as a table, CSV, JSON or an HTML page.

Amounts are integers in minor units in CSV and JSON (exact, and what a notebook wants);
the table and the HTML page show them in the currency's units for reading (`major`,
`money`; the decimal places come from `minor_unit_exponent`). Currencies are never summed
together: totals are per currency. Rendering is deterministic (no clock, fixed order), so
the same log and rules always give byte-identical CSV, JSON and HTML.
"""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson

from schemas.rules import CAMPAIGN_KEYS, CURRENCY_KEYS, Rules


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
    # which revisions each fold used, e.g. "the log's revisions: 3 (from the start), 4 (from …)"
    rules_used: str = ""
    compare_used: str | None = None

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
    rules_used: str = "",
    compare_used: str | None = None,
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
                  tuple(rows), rules_used, compare_used)


def iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


# --- currencies ---------------------------------------------------------------------------

# Stripe's zero- and three-decimal currencies; every other currency has two decimals.
_ZERO_DECIMAL = frozenset(
    ["bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga",
     "pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf"]
)
_THREE_DECIMAL = frozenset(["bhd", "jod", "kwd", "omr", "tnd"])
# A symbol only where it names one currency; every other currency is shown with its code.
_SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£", "jpy": "¥", "krw": "₩", "inr": "₹"}


def minor_unit_exponent(currency: str) -> int:
    """How many decimal places `currency`'s minor unit has, as Stripe counts amounts: 0 for
    the zero-decimal currencies (jpy, krw, …), 3 for bhd, jod, kwd, omr and tnd, else 2.
    The one place that knows this: every amount the reports show goes through it."""
    code = currency.lower()
    return 0 if code in _ZERO_DECIMAL else 3 if code in _THREE_DECIMAL else 2


def major(amount: int, currency: str) -> str:
    """Minor units as a decimal string in major units, exact (no floats): 2750 usd is
    "27.50", 500 jpy is "500", 1234 kwd is "1.234"."""
    places = minor_unit_exponent(currency)
    if places == 0:
        return f"{amount:,}"
    sign = "-" if amount < 0 else ""
    whole, frac = divmod(abs(amount), 10**places)
    return f"{sign}{whole:,}.{frac:0{places}d}"


def money(amount: int, currency: str, *, signed: bool = False) -> str:
    """An amount for people, in the currency's units: "$27.50", "¥500", "-€3.00",
    "CHF 12.00" (a no-break space after a code). `signed` marks a gain with "+" (a change
    of zero has no sign)."""
    sign = "-" if amount < 0 else "+" if signed and amount > 0 else ""
    digits = major(abs(amount), currency)
    symbol = _SYMBOLS.get(currency.lower())
    return f"{sign}{symbol}{digits}" if symbol else f"{sign}{currency.upper()}\u00a0{digits}"


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
        "rules_used": report.rules_used,
        "compare_used": report.compare_used,
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
    out = [title]
    if report.rules_used:
        out.append(f"rules: {report.rules_used}")
    if report.compare_used:
        out.append(f"compared with: {report.compare_used}")
    out += ["", line(head), rule, *map(line, body)]
    if not body:
        out.append("(no referrers in this log)")
    out += [rule, *map(line, totals)]
    if report.skipped:
        out += ["", f"{report.skipped:,} records could not be read and were skipped, as the worker "
                    f"skips them."]
    return "\n".join(out) + "\n"


# --- HTML ---------------------------------------------------------------------------------
#
# One self-contained page to mail around: no scripts, styles, fonts or images from
# anywhere else, so it opens offline. Charts are inline SVG drawn here; the table sorts with
# a few lines of inline JavaScript and is complete without it. Every amount is shown in its
# currency's units (`money`). Size grows with the table, about 80 bytes a referrer: 0.8 MB
# for 10,000 (tests/replay/test_html_report.py keeps it under 1 MB).


class RulesVersion(NamedTuple):
    """One set of rules the page shows: what to call it (a file name; later also a revision
    kept in the log), its revision, and the rules. The first is the one replayed; the page
    compares it with the others."""

    label: str
    revision: int
    rules: Rules


_TOP = 10  # bars in a chart: more stop being readable (the table has every referrer)
_HISTOGRAM_MIN = 100  # below this many values a histogram is noise; the bars show them all
_BINS = 20

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:1100px;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{margin-top:1.6em;border-bottom:1px solid #ccc}
.meta{color:#555}.warn{color:#8a3b00}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}
th,td{padding:.2em .6em;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}
thead th{position:sticky;top:0;background:#f3f3f3;border-bottom:1px solid #999}
tbody tr:nth-child(even){background:#fafafa}tfoot th,tfoot td{border-top:1px solid #999;font-weight:600}
caption{position:absolute;width:1px;height:1px;overflow:hidden;clip-path:inset(50%)}
.scroll{max-height:75vh;overflow:auto;border:1px solid #ddd;width:fit-content;max-width:100%}
th button{font:inherit;font-weight:600;background:none;border:0;padding:0;cursor:pointer;color:inherit}
th button:focus-visible{outline:2px solid #1a5fb4;outline-offset:2px}
th[aria-sort=ascending] button::after{content:" \\25B2"}
th[aria-sort=descending] button::after{content:" \\25BC"}
.rules td,.rules th{text-align:left}.rules code{font-size:.95em}
figure{margin:1em 0}figcaption{font-weight:600}
.charts{display:flex;flex-wrap:wrap;gap:0 2em}
svg{max-width:100%;height:auto}svg text{font-size:12px;fill:#222}
.up{fill:#2f6fb0}.down{fill:#c4502a}.plain{fill:#5a7d9a}.out{fill:#aaa}.axis{stroke:#888}
"""

# Sorts a table by the column whose heading button was pressed: numbers biggest first,
# text A to Z, pressing again reverses. Cells are read as shown ("-1,234.50" -> -1234.5).
_JS = """
document.querySelectorAll("table.sortable").forEach(function(t){
var hs=t.tHead.rows[0].cells,b=t.tBodies[0];
Array.prototype.forEach.call(hs,function(th,i){th.querySelector("button").addEventListener("click",function(){
var text=th.hasAttribute("data-text"),was=th.getAttribute("aria-sort"),up=was?was==="descending":text;
var rows=Array.prototype.map.call(b.rows,function(r){var s=r.cells[i].textContent;
return [text?s:parseFloat(s.replace(/[^0-9.\\-]/g,""))||0,r];});
rows.sort(function(x,y){return (x[0]<y[0]?-1:x[0]>y[0]?1:0)*(up?1:-1);});
var f=document.createDocumentFragment();rows.forEach(function(x){f.appendChild(x[1]);});b.appendChild(f);
Array.prototype.forEach.call(hs,function(h){h.removeAttribute("aria-sort");});
th.setAttribute("aria-sort",up?"ascending":"descending");});});});
"""


def _count(n: int, thing: str) -> str:
    return f"{n:,} {thing}{'' if n == 1 else 's'}"


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _settings(rules: Rules) -> dict[str, str]:
    """Every setting of `rules` as the page shows it, keyed as in the rules file (dotted for
    the currency tables), defaults included: what the fold used, not only what was written."""
    out = {
        "currency": rules.currency,
        "reward_percent": f"{rules.reward_percent.normalize():f} %",
        "reward_months": f"{rules.reward_months}",
        "hold_days": f"{rules.hold_days}",
        "late_attribution_days": f"{rules.late_attribution_days}",
        "organization_level": "true" if rules.organization_level else "false",
        "reward_one_off_charges": "true" if rules.reward_one_off_charges else "false",
    }
    for code in sorted(rules.currencies):
        c, p = rules.currencies[code], f"currency.{code}."
        cap, review = c.max_reward_per_referral, c.review_above
        out[p + "max_reward_per_referral"] = "no cap" if cap is None else money(cap, code)
        out[p + "signup_bonus"] = money(c.signup_bonus, code)
        out[p + "purchase_bonus"] = money(c.purchase_bonus, code)
        out[p + "min_payout"] = money(c.min_payout, code)
        out[p + "review_above"] = "never held for size" if review is None else money(review, code)
    return out


def _setting_order(key: str) -> tuple[str, int]:
    if key.startswith("currency."):
        code, name = key[len("currency."):].split(".", 1)
        return (code, list(CURRENCY_KEYS).index(name))
    return ("", list(CAMPAIGN_KEYS).index(key))


def _version_head(v: RulesVersion) -> str:
    return f"<th scope=col>{_e(v.label)}<br><small>revision {v.revision}</small></th>"


def _rules_section(versions: Sequence[RulesVersion]) -> str:
    """The rules side by side: the settings that differ first, the rest folded away. Takes
    any number of versions (two files today, a history of revisions later)."""
    if not versions:
        return ""
    settings = [_settings(v.rules) for v in versions]
    keys = sorted({k for s in settings for k in s}, key=_setting_order)

    def table(rows: list[str]) -> str:
        head = "<tr><th scope=col>setting</th>" + "".join(_version_head(v) for v in versions) + "</tr>"
        body = "".join(
            f"<tr><th scope=row><code>{_e(k)}</code></th>"
            + "".join(f"<td>{_e(s.get(k, 'not set'))}</td>" for s in settings) + "</tr>"
            for k in rows
        )
        return f"<table class=rules><thead>{head}</thead><tbody>{body}</tbody></table>"

    out = ["<section id=rules><h2>Rules</h2>"]
    if len(versions) == 1:
        out.append(table(keys))
    else:
        differ = [k for k in keys if len({s.get(k, "not set") for s in settings}) > 1]
        same = [k for k in keys if k not in differ]
        if differ:
            out.append(f"<p>{len(differ)} setting{'s' if len(differ) != 1 else ''} differ:</p>"
                       + table(differ))
        else:
            out.append("<p>The rules set the same values, so no referrer's figures should "
                       "differ.</p>")
        if same:
            out.append(f"<details><summary>{len(same)} settings the same</summary>{table(same)}"
                       "</details>")
        seen: dict[int, RulesVersion] = {}
        for v, s in zip(versions, settings, strict=True):
            first = seen.setdefault(v.revision, v)
            if first is not v and _settings(first.rules) != s:
                out.append(
                    f"<p class=warn>{_e(first.label)} and {_e(v.label)} both say revision "
                    f"{v.revision} but set different values. Give the changed rules a new "
                    f"<code>revision</code> so reports and payouts can tell them apart.</p>"
                )
    out.append("</section>")
    return "\n".join(out)


def _bar_chart(title: str, bars: Sequence[tuple[str, int, str]], currency: str, scale: int,
               kind: str, *, signed: bool) -> str:
    """Horizontal bars, one per (label, amount, tooltip), lengths on a shared `scale`."""
    width, label_w, value_w, row_h = 500, 130, 100, 22
    bar_w = width - label_w - value_w
    height = row_h * len(bars) + 4
    parts = [f"<figure><figcaption>{_e(title)}</figcaption>"
             f"<svg viewBox=\"0 0 {width} {height}\" width={width} height={height} role=img "
             f"aria-label=\"{_e(title)}\">"]
    for i, (label, amount, tip) in enumerate(bars):
        y = i * row_h + 2
        w = max(1, round(abs(amount) * bar_w / scale)) if amount and scale else 0
        name = label if len(label) <= 18 else label[:17] + "…"
        parts.append(
            f"<g><title>{_e(tip)}</title>"
            f"<text x={label_w - 6} y={y + 15} text-anchor=end>{_e(name)}</text>"
            f"<rect class={kind} x={label_w} y={y + 3} width={w} height={row_h - 6}></rect>"
            f"<text x={label_w + w + 4} y={y + 15}>{_e(money(amount, currency, signed=signed))}</text></g>"
        )
    parts.append("</svg></figure>")
    return "".join(parts)


def _nice_step(span: int, bins: int) -> int:
    """The smallest 1, 2 or 5 × 10^k minor units that covers `span` in `bins` steps."""
    need = max(1, -(-span // bins))
    power = 1
    while True:
        for m in (1, 2, 5):
            if m * power >= need:
                return m * power
        power *= 10


def histogram_bins(values: Sequence[int], bins: int = _BINS) -> list[tuple[int | None, int | None, int]]:
    """(low, high, count) per bin, low inclusive, high exclusive, in minor units with round
    edges. The range is the 1st to the 99th percentile, so that one outlier does not squash
    everyone into one bar; outliers go to an extra first bin (low None) or last (high None)."""
    if not values:
        return []
    v = sorted(values)
    cut = len(v) // 100
    lo, hi = v[cut], v[len(v) - 1 - cut]
    step = _nice_step(hi - lo + 1, bins)
    start = (lo // step) * step
    count = (hi - start) // step + 1
    end = start + count * step
    counts = [0] * count
    under = over = 0
    for x in v:
        if x < start:
            under += 1
        elif x >= end:
            over += 1
        else:
            counts[(x - start) // step] += 1
    out: list[tuple[int | None, int | None, int]] = []
    if under:
        out.append((None, start, under))
    out += [(start + i * step, start + (i + 1) * step, c) for i, c in enumerate(counts)]
    if over:
        out.append((end, None, over))
    return out


def _histogram(title: str, values: Sequence[int], currency: str, *, signed: bool) -> str:
    bins = histogram_bins(values)
    width, left, plot_h, top = 500, 45, 160, 16
    plot_w = width - 2 * left  # room either side for the edge labels, centred on the edges
    height = top + plot_h + 36
    most = max(c for _, _, c in bins)
    slot = plot_w / len(bins)
    parts = [f"<figure><figcaption>{_e(title)}</figcaption>"
             f"<svg viewBox=\"0 0 {width} {height}\" width={width} height={height} role=img "
             f"aria-label=\"{_e(title)}\">"
             f"<text x=0 y=12>{_count(most, 'referrer')}</text>"
             f"<line class=axis x1={left} x2={left + plot_w} y1={top + plot_h} y2={top + plot_h}></line>"]
    for i, (low, high, n) in enumerate(bins):
        h = round(n * plot_h / most)
        x = left + i * slot
        if low is None:
            tip, kind = f"below {money(high or 0, currency, signed=signed)}: {_count(n, 'referrer')}", "out"
        elif high is None:
            tip, kind = f"{money(low, currency, signed=signed)} or more: {_count(n, 'referrer')}", "out"
        else:
            tip = (f"{money(low, currency, signed=signed)} to {money(high, currency, signed=signed)}"
                   f": {_count(n, 'referrer')}")
            kind = "plain"
        parts.append(f"<g><title>{_e(tip)}</title><rect class={kind} x={x + 1:.1f} "
                     f"y={top + plot_h - h} width={slot - 2:.1f} height={h}></rect></g>")
    regular = [(lo, hi) for lo, hi, _ in bins if lo is not None and hi is not None]
    first = 1 if bins[0][0] is None else 0
    start, end = regular[0][0], regular[-1][1]
    x0, x1 = left + first * slot, left + (first + len(regular)) * slot
    base = top + plot_h + 16
    parts.append(f"<text x={x0:.1f} y={base} text-anchor=middle>{_e(money(start, currency, signed=signed))}"
                 f"</text><text x={x1:.1f} y={base} text-anchor=middle>"
                 f"{_e(money(end, currency, signed=signed))}</text>")
    if start < 0 < end:
        xz = x0 + (x1 - x0) * (-start) / (end - start)
        parts.append(f"<line class=axis x1={xz:.1f} x2={xz:.1f} y1={top} y2={top + plot_h}></line>")
        if min(xz - x0, x1 - xz) > 40:  # room for the label between the two ends
            parts.append(f"<text x={xz:.1f} y={base} text-anchor=middle>0</text>")
    parts.append("</svg>")
    if first or bins[-1][1] is None:
        parts.append("<p class=meta>Grey: the referrers past the 1st and 99th percentiles, beyond the range "
                     "drawn.</p>")
    parts.append("</figure>")
    return "".join(parts)


def _charts(report: Report, currency: str, rows: Sequence[Row], names: tuple[str, str]) -> str:
    """Charts that fit the number of referrers: the largest changes as bars (all of them when
    few changed), and a histogram only when there are enough values to make a shape."""
    if report.comparing:
        mine, other = names
        up = sorted((r for r in rows if r.delta_net > 0), key=lambda r: (-r.delta_net, r.ucc))
        down = sorted((r for r in rows if r.delta_net < 0), key=lambda r: (r.delta_net, r.ucc))
        scale = max((abs(r.delta_net) for r in [*up[:_TOP], *down[:_TOP]]), default=0)

        def bars(chosen: list[Row]) -> list[tuple[str, int, str]]:
            return [(r.ucc, r.delta_net,
                     f"{r.ucc}: net {money(r.figures.net, currency)} under {mine}, "
                     f"{money((r.compare or ZERO).net, currency)} under {other}")
                    for r in chosen[:_TOP]]

        def title(what: str, chosen: list[Row]) -> str:
            some = f"the {_TOP} largest of {len(chosen):,}" if len(chosen) > _TOP else f"all {len(chosen)}"
            return f"Net {what} ({some})"

        figs = []
        if up:
            figs.append(_bar_chart(title("increases", up), bars(up), currency, scale, "up", signed=True))
        if down:
            figs.append(_bar_chart(title("decreases", down), bars(down), currency, scale, "down",
                                   signed=True))
        changed = [r.delta_net for r in rows if r.delta_net]
        hist = ""
        if len(changed) >= _HISTOGRAM_MIN:
            hist = _histogram(
                f"Change of net per referrer ({_count(len(changed), 'referrer')} whose net changed)",
                changed, currency, signed=True)
        same = "<p class=meta>Both charts have one scale.</p>" if len(figs) == 2 else ""
        return f"<div class=charts>{''.join(figs)}</div>{same}{hist}" if figs else ""
    with_net = sorted((r for r in rows if r.figures.net), key=lambda r: (-r.figures.net, r.ucc))
    if not with_net:
        return ""
    shown = with_net[:_TOP]
    some = f"the {_TOP} largest of {len(with_net):,}" if len(with_net) > _TOP else f"all {len(with_net)}"
    scale = max(abs(r.figures.net) for r in shown)
    fig = _bar_chart(
        f"Net per referrer ({some})",
        [(r.ucc, r.figures.net, f"{r.ucc}: earned {money(r.figures.earned, currency)}, reversed "
          f"{money(r.figures.reversed, currency)}") for r in shown],
        currency, scale, "plain", signed=False,
    )
    hist = ""
    if len(with_net) >= _HISTOGRAM_MIN:
        hist = _histogram(f"Net per referrer ({_count(len(with_net), 'referrer')} with a net other than 0)",
                          [r.figures.net for r in with_net], currency, signed=False)
    return fig + hist


def unit(currency: str) -> str:
    """What an amount of `currency` is counted in, for headings: "$", "¥", or "CHF"."""
    return _SYMBOLS.get(currency.lower(), currency.upper())


def _table(report: Report, currency: str, rows: Sequence[Row], total: Row) -> str:
    """Every referrer, sortable by any column; totals in the footer, which stays put.

    Kept small, since it is most of the page at 10,000 referrers: the unit is in the
    caption rather than in every cell, end tags a table can do without are left out, and
    a comparison shows what decides who gains (earned, net and payable under the replayed
    rules, net under the compared ones, the change); reversed and paid per referrer are in
    `--format csv`."""
    def cells(row: Row) -> str:
        f = row.figures
        if report.comparing:
            amounts = [major(a, currency) for a in (f.earned, f.net, f.payable, (row.compare or ZERO).net)]
            amounts.append(("+" if row.delta_net > 0 else "") + major(row.delta_net, currency))
        else:
            amounts = [major(a, currency) for a in (f.earned, f.reversed, f.net, f.paid, f.payable)]
        return f"<td>{f.referrals:,}<td>" + "<td>".join(amounts)

    heads = (["earned", "net", "payable", "net, compared", "Δ net"] if report.comparing
             else ["earned", "reversed", "net", "paid", "payable"])
    head = ("<tr><th scope=col data-text><button type=button>referrer</button>"
            "<th scope=col><button type=button>referrals</button>"
            + "".join(f"<th scope=col><button type=button>{_e(h)}</button>" for h in heads) + "</tr>")
    order = ("in order of impact (the largest change of net, either way, first)" if report.comparing
             else "by referrer")
    note = (f"{_count(len(rows), 'referrer')}, {order}. Amounts in {unit(currency)}; payable as of "
            f"{iso(report.as_of)}. Select a column heading to sort by it, again to reverse.")
    body = "\n".join(f"<tr><td>{_e(r.ucc)}{cells(r)}" for r in rows)
    return (f"<p class=meta>{_e(note)}</p><div class=scroll><table class=sortable>"
            f"<caption>Referrers, {_e(currency.upper())}</caption>"
            f"<thead>{head}</thead><tbody>\n{body}\n</tbody>"
            f"<tfoot><tr><th scope=row>total{cells(total)}</tfoot></table></div>")


def to_html(report: Report, rules: Sequence[tuple[str, int, Rules]] = ()) -> str:
    """The what-if page: the rules compared, then per currency a summary, charts and the
    sortable table of every referrer. `rules` is (label, revision, rules) for the rules
    replayed, then the ones compared with; without it the page names revisions only."""
    versions = [RulesVersion(*v) for v in rules]
    mine = versions[0].label if versions else f"revision {report.rules_revision}"
    other = (versions[1].label if len(versions) > 1 else f"revision {report.compare_revision}")
    rev = f" (revision {report.rules_revision})" if versions else ""
    if report.comparing:
        other_rev = f" (revision {report.compare_revision})" if len(versions) > 1 else ""
        title = f"What if: {mine}{rev} against {other}{other_rev}"
    else:
        title = f"Replay under {mine}{rev}"
    meta = (f"Replayed {report.stripe_events:,} Stripe events and {report.control_events:,} control "
            f"events; payable as of {iso(report.as_of)}.")
    if report.comparing:
        meta += f" Δ = {mine} − {other}."
    parts = [f"<h1>{_e(title)}</h1>", f"<p class=meta>{_e(meta)}</p>"]
    if report.skipped:
        parts.append(f"<p class=warn>{report.skipped:,} records could not be read and were skipped, "
                     f"as the worker skips them.</p>")
    totals = {t.currency: t for t in report.totals()}
    currencies = sorted(totals)
    if len(currencies) > 1:
        parts.append("<nav>Currencies: " + ", ".join(
            f"<a href=\"#cur-{_e(c)}\">{_e(c.upper())}</a>" for c in currencies) + "</nav>")
    parts.append(_rules_section(versions))
    if not currencies:
        parts.append("<p>No referrers in this log.</p>")
    for cur in currencies:
        rows = [r for r in report.rows if r.currency == cur]
        t = totals[cur]
        summary = (f"{_count(len(rows), 'referrer')}; net {money(t.figures.net, cur)}, payable "
                   f"{money(t.figures.payable, cur)}")
        if report.comparing:
            c = t.compare or ZERO
            gain = sum(1 for r in rows if r.delta_net > 0)
            lose = sum(1 for r in rows if r.delta_net < 0)
            summary = (f"{_count(len(rows), 'referrer')}. Net {money(t.figures.net, cur)} under {mine}, "
                       f"{money(c.net, cur)} under {other}: {money(t.delta_net, cur, signed=True)}. "
                       f"{_count(gain, 'referrer')} {'gain' if gain != 1 else 'gains'}, {lose:,} "
                       f"{'lose' if lose != 1 else 'loses'}, {len(rows) - gain - lose:,} unchanged")
        parts.append(f"<section id=\"cur-{_e(cur)}\"><h2>{_e(cur.upper())}</h2><p>{_e(summary)}.</p>"
                     f"{_charts(report, cur, rows, (mine, other))}{_table(report, cur, rows, t)}</section>")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>\n"
        + "\n".join(parts)
        + f"\n<script>{_JS}</script>\n</body></html>\n"
    )
