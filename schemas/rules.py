"""The rules file (docs/rules.md#the-rules-file): TOML, versioned; loaded, validated, mistakes explained.

`parse_rules` raises `RulesError` naming the first mistake with its line and field, so
`refstream rules check FILE` can tell an operator exactly what to fix.
"""

from __future__ import annotations

import re
import tomllib
from bisect import bisect_right
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path
from typing import Any

CURRENCY_RE = re.compile(r"^[a-z]{3}$")

CAMPAIGN_KEYS: dict[str, str] = {
    "revision": "a whole number that grows with each change, e.g. 3",
    "currency": "the signup bonus's ISO currency code in lower case, e.g. \"usd\"",
    "reward_percent": "a percentage of the invoice base between 0 and 100, e.g. 25",
    "reward_months": "how many calendar months after signup earn rewards, e.g. 12",
    "hold_days": "days an entry waits before it is payable, e.g. 30",
    "late_attribution_days": "days a payment may precede its attribution, e.g. 30",
    "organization_level": "true or false",
    "reward_one_off_charges": "true or false",
    "self_referral_check": "true or false",
    "max_referrals_per_card": "how many referrals one card may pay for before they are reviewed, a whole "
                              "number from 0 (no check) to 100, e.g. 1",
    "max_signups_per_day": "how many signups a referrer may bring within 24 hours before they are "
                           "reviewed, a whole number >= 0 (0: no check), e.g. 10",
}
FLAG_KEYS = ("organization_level", "reward_one_off_charges", "self_referral_check")
# the largest `max_referrals_per_card`: the shared-card join tells each referral of a card the
# count as it grows only up to one past it (processors/invoice_link.py)
MAX_REFERRALS_PER_CARD = 100
PLAN_KEYS: dict[str, str] = {
    "reward_percent": "a percentage of the line's base between 0 and 100, e.g. 10",
    "max_reward_per_referral": "minor units of the line's currency, a whole number >= 0, e.g. 50000",
}
CAMPAIGN_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
DEFAULT_CAMPAIGN = "default"
CURRENCY_KEYS: dict[str, str] = {
    "max_reward_per_referral": "minor units, a whole number >= 0, e.g. 10000",
    "signup_bonus": "minor units, a whole number >= 0, e.g. 500",
    "purchase_bonus": "minor units, a whole number >= 0, e.g. 1000",
    "min_payout": "minor units, a whole number >= 1, e.g. 2000",
    "review_above": "minor units, a whole number >= 0, e.g. 50000",
}


class RulesError(ValueError):
    """The first mistake in a rules file: where it is, which field, and how to fix it."""

    def __init__(self, message: str, *, source: str, line: int | None, field: str | None):
        self.source = source
        self.line = line
        self.field = field
        self.message = message
        where = source if line is None else f"{source}:{line}"
        what = f" [{field}]" if field else ""
        super().__init__(f"{where}{what}: {message}")


def _reduce(obj: Any) -> tuple[Any, tuple[Any, ...]]:
    """Pickle a frozen record by its fields (replay sends rules to child processes; compiled
    with mypyc, the default pickling would set attributes on a frozen instance)."""
    from dataclasses import fields

    return (type(obj), tuple(getattr(obj, f.name) for f in fields(obj)))


@dataclass(frozen=True, slots=True)
class CurrencyRules:
    """Limits for one currency; every amount is in that currency's minor units."""

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return _reduce(self)


    max_reward_per_referral: int | None = None  # None: no cap
    signup_bonus: int = 0
    purchase_bonus: int = 0
    min_payout: int = 1
    review_above: int | None = None  # None: never held for size


@dataclass(frozen=True, slots=True)
class PlanRules:
    """A Stripe price's or product's own terms within a campaign (docs/rules.md#the-rules-file)."""

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return _reduce(self)


    reward_percent: Decimal | None = None  # None: the campaign's
    max_reward_per_referral: int | None = None  # None: counts against the currency's cap


@dataclass(frozen=True, slots=True)
class Rules:
    """One campaign of one revision, resolved: what prices a fact."""

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return _reduce(self)


    revision: int = 1
    currency: str = "usd"
    reward_percent: Decimal = Decimal(0)
    reward_months: int = 12
    hold_days: int = 30
    late_attribution_days: int = 30
    organization_level: bool = False
    reward_one_off_charges: bool = False
    # fraud signals (docs/rules.md#fraud-signals); 0 turns a limit off
    self_referral_check: bool = True
    max_referrals_per_card: int = 1
    max_signups_per_day: int = 10
    currencies: dict[str, CurrencyRules] = field(default_factory=dict)
    plans: dict[str, PlanRules] = field(default_factory=dict)  # by Stripe price or product id
    name: str = DEFAULT_CAMPAIGN
    # the named campaigns of this revision (only on the default campaign's Rules)
    campaigns: dict[str, Rules] = field(default_factory=dict)

    def campaign(self, name: str | None) -> Rules:
        """The campaign `name` of this revision; the default one when it has no such campaign."""
        if not name or name == self.name:
            return self
        return self.campaigns.get(name, self)

    def plan(self, price: str | None, product: str | None) -> PlanRules | None:
        """A line's plan terms: its price's, else its product's, else None (the campaign's)."""
        plans = self.plans
        if not plans:
            return None
        return (plans.get(price) if price else None) or (plans.get(product) if product else None)

    def currency_rules(self, currency: str) -> CurrencyRules | None:
        """The configured limits of `currency`, or None when the rules do not configure it."""
        return self.currencies.get(currency.lower())

    @property
    def signup_bonus(self) -> int:
        cfg = self.currency_rules(self.currency)
        return cfg.signup_bonus if cfg else 0


def _line_of(text: str, table: str | None, key: str | None) -> int | None:
    """The 1-based line of `key` inside `[table]` (or of the table header), if found."""
    lines = text.splitlines()
    in_table = table is None
    header = re.compile(r"^\s*\[\s*([^\]]+?)\s*\]\s*(#.*)?$")
    for number, line in enumerate(lines, start=1):
        m = header.match(line)
        if m:
            name = m.group(1).replace('"', "").replace(" ", "")
            in_table = table is not None and name == table
            if in_table and key is None:
                return number
            continue
        if in_table and key is not None and re.match(rf"^\s*\"?{re.escape(key)}\"?\s*=", line):
            return number
    return None


def parse_rules(text: str, source: str = "<rules>") -> Rules:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        raise RulesError(
            f"this is not valid TOML ({exc}). Check quotes, brackets and `key = value` lines.",
            source=source, line=int(m.group(1)) if m else None, field=None,
        ) from None

    def fail(message: str, table: str | None, key: str | None) -> RulesError:
        name = f"{table}.{key}" if table and key else (table or key)
        return RulesError(message, source=source, line=_line_of(text, table, key), field=name)

    for top in doc:
        if top not in ("campaign", "currency", "plan", "campaigns"):
            raise fail(
                f"unknown table [{top}]. A rules file has [campaign], [currency.<code>], "
                f"[plan.\"<price or product id>\"] and [campaigns.<name>] tables only.", top, None,
            )
    campaign = doc.get("campaign")
    if not isinstance(campaign, dict):
        raise RulesError(
            "the [campaign] table is missing. Add it with at least `revision`, `currency` "
            "and `reward_percent` (see docs/rules.md#the-rules-file).",
            source=source, line=None, field="campaign",
        )
    for key in campaign:
        if key not in CAMPAIGN_KEYS:
            known = ", ".join(CAMPAIGN_KEYS)
            raise fail(f"unknown key {key!r}. Known keys: {known}.", "campaign", key)

    def whole(table: str, key: str, value: Any, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            hint = (CURRENCY_KEYS if "currency" in table.split(".") else CAMPAIGN_KEYS)[key]
            raise fail(f"{value!r} is not valid here: expected {hint}.", table, key)
        return value

    def flag(key: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise fail(f"{value!r} is not valid here: expected true or false.", "campaign", key)
        return value

    def card_limit(table: str, value: Any) -> int:
        key = "max_referrals_per_card"
        if (isinstance(value, bool) or not isinstance(value, int)
                or not 0 <= value <= MAX_REFERRALS_PER_CARD):
            raise fail(f"{value!r} is not valid here: expected {CAMPAIGN_KEYS[key]}.", table, key)
        return value

    for required in ("revision", "currency", "reward_percent"):
        if required not in campaign:
            raise fail(
                f"`{required}` is missing from [campaign]: expected {CAMPAIGN_KEYS[required]}.",
                "campaign", None,
            )

    currency = campaign["currency"]
    if not isinstance(currency, str) or not CURRENCY_RE.match(currency.strip().lower()):
        raise fail(f"{currency!r} is not valid here: expected {CAMPAIGN_KEYS['currency']}.",
                   "campaign", "currency")
    currency = currency.strip().lower()

    raw_percent = campaign["reward_percent"]
    try:
        if isinstance(raw_percent, bool) or not isinstance(raw_percent, int | float | str):
            raise InvalidOperation
        percent = Decimal(str(raw_percent))
    except InvalidOperation:
        percent = Decimal(-1)
    if not percent.is_finite() or not (Decimal(0) <= percent <= Decimal(100)):
        raise fail(f"{raw_percent!r} is not valid here: expected {CAMPAIGN_KEYS['reward_percent']}.",
                   "campaign", "reward_percent")

    def percent_of(table: str, key: str, raw: Any, hint: str) -> Decimal:
        try:
            if isinstance(raw, bool) or not isinstance(raw, int | float | str):
                raise InvalidOperation
            value = Decimal(str(raw))
        except InvalidOperation:
            value = Decimal(-1)
        if not value.is_finite() or not (Decimal(0) <= value <= Decimal(100)):
            raise fail(f"{raw!r} is not valid here: expected {hint}.", table, key)
        return value

    def currencies_of(prefix: str, tables: Any, base: dict[str, CurrencyRules]) -> dict[str, CurrencyRules]:
        """[<prefix>currency.<code>] tables over `base`: keys a table sets replace the base's."""
        out = dict(base)
        if not isinstance(tables, dict):
            raise fail(f"`{prefix}currency` must be tables like [{prefix}currency.usd].",
                       prefix + "currency", None)
        for code, cfg in tables.items():
            table = f"{prefix}currency.{code}"
            if not CURRENCY_RE.match(code):
                raise fail(
                    f"{code!r} is not a currency code. Use the lower-case ISO code, e.g. "
                    f"[{prefix}currency.usd].", table, None,
                )
            if not isinstance(cfg, dict):
                raise fail(f"[{table}] must be a table of limits.", f"{prefix}currency", code)
            for key in cfg:
                if key not in CURRENCY_KEYS:
                    known = ", ".join(CURRENCY_KEYS)
                    raise fail(f"unknown key {key!r}. Known keys: {known}.", table, key)
            was = out.get(code, CurrencyRules())
            cap = cfg.get("max_reward_per_referral", was.max_reward_per_referral)
            review = cfg.get("review_above", was.review_above)
            out[code] = CurrencyRules(
                max_reward_per_referral=None if cap is None
                else whole(table, "max_reward_per_referral", cap, 0),
                signup_bonus=whole(table, "signup_bonus", cfg.get("signup_bonus", was.signup_bonus), 0),
                purchase_bonus=whole(table, "purchase_bonus",
                                     cfg.get("purchase_bonus", was.purchase_bonus), 0),
                min_payout=whole(table, "min_payout", cfg.get("min_payout", was.min_payout), 1),
                review_above=None if review is None else whole(table, "review_above", review, 0),
            )
        return out

    def plans_of(prefix: str, tables: Any, base: dict[str, PlanRules]) -> dict[str, PlanRules]:
        out = dict(base)
        if not isinstance(tables, dict):
            raise fail(f"`{prefix}plan` must be tables like [{prefix}plan.\"price_123\"].",
                       prefix + "plan", None)
        for plan_id, cfg in tables.items():
            table = f"{prefix}plan.{plan_id}"
            if not isinstance(cfg, dict):
                raise fail(f"[{table}] must be a table of keys.", f"{prefix}plan", plan_id)
            for key in cfg:
                if key not in PLAN_KEYS:
                    raise fail(f"unknown key {key!r}. Known keys: {', '.join(PLAN_KEYS)}.", table, key)
            was = out.get(plan_id, PlanRules())
            pct, cap = cfg.get("reward_percent"), cfg.get("max_reward_per_referral")
            if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 0):
                raise fail(f"{cap!r} is not valid here: expected {PLAN_KEYS['max_reward_per_referral']}.",
                           table, "max_reward_per_referral")
            out[plan_id] = PlanRules(
                was.reward_percent if pct is None else percent_of(table, "reward_percent", pct,
                                                                   PLAN_KEYS["reward_percent"]),
                was.max_reward_per_referral if cap is None else cap,
            )
        return out

    currencies = currencies_of("", doc.get("currency", {}), {})
    plans = plans_of("", doc.get("plan", {}), {})
    default = Rules(
        revision=whole("campaign", "revision", campaign["revision"], 0),
        currency=currency,
        reward_percent=percent,
        reward_months=whole("campaign", "reward_months", campaign.get("reward_months", 12), 0),
        hold_days=whole("campaign", "hold_days", campaign.get("hold_days", 30), 0),
        late_attribution_days=whole(
            "campaign", "late_attribution_days", campaign.get("late_attribution_days", 30), 0
        ),
        organization_level=flag("organization_level", campaign.get("organization_level", False)),
        reward_one_off_charges=flag(
            "reward_one_off_charges", campaign.get("reward_one_off_charges", False)
        ),
        self_referral_check=flag("self_referral_check", campaign.get("self_referral_check", True)),
        max_referrals_per_card=card_limit("campaign", campaign.get("max_referrals_per_card", 1)),
        max_signups_per_day=whole("campaign", "max_signups_per_day",
                                  campaign.get("max_signups_per_day", 10), 0),
        currencies=currencies,
        plans=plans,
    )

    # named campaigns: the default campaign with the keys they set replaced
    named: dict[str, Rules] = {}
    campaigns = doc.get("campaigns", {})
    if not isinstance(campaigns, dict):
        raise fail("`campaigns` must be tables like [campaigns.partners].", "campaigns", None)
    for name, cfg in campaigns.items():
        table = f"campaigns.{name}"
        if not CAMPAIGN_NAME_RE.match(name) or name == DEFAULT_CAMPAIGN:
            raise fail(f"{name!r} is not a campaign name: use lower-case letters, digits, - and _ "
                       f"(and not {DEFAULT_CAMPAIGN!r}), e.g. [campaigns.partners].", table, None)
        if not isinstance(cfg, dict):
            raise fail(f"[{table}] must be a table of keys.", "campaigns", name)
        changes: dict[str, Any] = {"name": name}
        for key, value in cfg.items():
            if key in ("currency", "plan") and isinstance(value, dict):
                continue
            if key not in CAMPAIGN_KEYS or key == "revision":
                known = ", ".join(k for k in CAMPAIGN_KEYS if k != "revision")
                raise fail(f"unknown key {key!r}. A campaign may set: {known}, and its own "
                           f"[{table}.currency.<code>] and [{table}.plan.\"<id>\"] tables.", table, key)
            if key == "reward_percent":
                changes[key] = percent_of(table, key, value, CAMPAIGN_KEYS[key])
            elif key in FLAG_KEYS:
                if not isinstance(value, bool):
                    raise fail(f"{value!r} is not valid here: expected true or false.", table, key)
                changes[key] = value
            elif key == "currency":
                if not isinstance(value, str) or not CURRENCY_RE.match(value.strip().lower()):
                    raise fail(f"{value!r} is not valid here: expected {CAMPAIGN_KEYS[key]}.", table, key)
                changes[key] = value.strip().lower()
            elif key == "max_referrals_per_card":
                changes[key] = card_limit(table, value)
            else:
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise fail(f"{value!r} is not valid here: expected {CAMPAIGN_KEYS[key]}.", table, key)
                changes[key] = value
        changes["currencies"] = currencies_of(f"{table}.", cfg.get("currency", {}), default.currencies)
        changes["plans"] = plans_of(f"{table}.", cfg.get("plan", {}), default.plans)
        named[name] = replace(default, **changes)
    return replace(default, campaigns=named)


def load_rules(path: str | Path) -> Rules:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise RulesError(
            f"cannot read the rules file ({exc.strerror}). Check the path, or set "
            f"REFSTREAM_RULES to the file.", source=str(p), line=None, field=None,
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RulesError(
            f"the file is not UTF-8 text (byte {exc.start}). Save it as UTF-8.",
            source=str(p), line=None, field=None,
        ) from None
    return parse_rules(text, source=str(p))


# --- revisions over time (docs/rules.md#revisions) ----------------------------------------


@dataclass(frozen=True, slots=True)
class Revision:
    """A rules file in force from `effective_from` (Unix seconds) on."""

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return _reduce(self)


    effective_from: int
    rules: Rules
    key: str = ""  # what it stands for in the log (its control record's id): dedupes a revision seen twice


class RuleBook:
    """The revisions known so far. A fact is priced by the revision with the greatest
    `effective_from` at or before the fact's time (ties: the greater revision number);
    a fact earlier than every known revision by the earliest one. Pure and immutable.

    `identity_key` is the one piece of configuration the core needs beside the rules: the
    key of the identity tokens the fraud signals compare (REFSTREAM_IDENTITY_KEY,
    processors/rules/identity.py; None: no tokens). It travels with the book so that every stage
    and replay get it where they get the rules; a book made from it keeps it."""

    __slots__ = ("_starts", "identity_key", "revisions")

    def __init__(self, revisions: list[Revision] | tuple[Revision, ...],
                 identity_key: bytes | None = None) -> None:
        if not revisions:
            raise ValueError("a rule book needs at least one revision")
        ordered = sorted(revisions, key=lambda r: (r.effective_from, r.rules.revision))
        self.revisions: tuple[Revision, ...] = tuple(ordered)
        self._starts = [r.effective_from for r in ordered]
        self.identity_key = identity_key

    def __reduce__(self) -> tuple[type[RuleBook], tuple[tuple[Revision, ...], bytes | None]]:
        # pickled to replay's child processes; compiled with mypyc, the default needs __init__'s argument
        return (RuleBook, (self.revisions, self.identity_key))

    @classmethod
    def of(cls, rules: Rules, identity_key: bytes | None = None) -> RuleBook:
        """One rules file for all time (`refstream replay --rules FILE`, tests)."""
        return cls([Revision(0, rules)], identity_key)

    def keyed(self, identity_key: bytes | None) -> RuleBook:
        """The same revisions with this identity key."""
        if identity_key == self.identity_key:
            return self
        return RuleBook(self.revisions, identity_key)

    def at(self, t: int) -> Rules:
        starts = self._starts
        if len(starts) == 1 or t < starts[1]:
            return self.revisions[0].rules
        i = bisect_right(starts, t) - 1
        return self.revisions[i].rules

    def adding(self, revision: Revision) -> RuleBook:
        if revision.key and any(r.key == revision.key for r in self.revisions):
            return self  # the same revision again (its marker written twice, or the first one)
        return RuleBook((*self.revisions, revision), self.identity_key)

    @property
    def latest(self) -> Revision:
        """The revision published last: the greatest revision number."""
        return max(self.revisions, key=lambda r: r.rules.revision)


@lru_cache(maxsize=64)
def parse_rules_cached(text: str) -> Rules:
    """`parse_rules` of a revision's text, once per text: the same revisions are read back by
    every worker partition and every replay."""
    return parse_rules(text, "<published revision>")
