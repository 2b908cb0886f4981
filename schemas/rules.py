"""The rules file (docs/rules.md#the-rules-file): TOML, versioned; loaded, validated, mistakes explained.

`parse_rules` raises `RulesError` naming the first mistake with its line and field, so
`refstream rules check FILE` can tell an operator exactly what to fix.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
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
}
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


@dataclass(frozen=True, slots=True)
class CurrencyRules:
    """Limits for one currency; every amount is in that currency's minor units."""

    max_reward_per_referral: int | None = None  # None: no cap
    signup_bonus: int = 0
    purchase_bonus: int = 0
    min_payout: int = 1
    review_above: int | None = None  # None: never held for size


@dataclass(frozen=True, slots=True)
class Rules:
    revision: int = 1
    currency: str = "usd"
    reward_percent: Decimal = Decimal(0)
    reward_months: int = 12
    hold_days: int = 30
    late_attribution_days: int = 30
    organization_level: bool = False
    reward_one_off_charges: bool = False
    currencies: dict[str, CurrencyRules] = field(default_factory=dict)

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
        if top not in ("campaign", "currency"):
            raise fail(
                f"unknown table [{top}]. A rules file has [campaign] and [currency.<code>] "
                f"tables only.", top, None,
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
            hint = (CURRENCY_KEYS if table.startswith("currency") else CAMPAIGN_KEYS)[key]
            raise fail(f"{value!r} is not valid here: expected {hint}.", table, key)
        return value

    def flag(key: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise fail(f"{value!r} is not valid here: expected true or false.", "campaign", key)
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

    currencies: dict[str, CurrencyRules] = {}
    tables = doc.get("currency", {})
    if not isinstance(tables, dict):
        raise fail("`currency` must be tables like [currency.usd].", "currency", None)
    for code, cfg in tables.items():
        table = f"currency.{code}"
        if not CURRENCY_RE.match(code):
            raise fail(
                f"{code!r} is not a currency code. Use the lower-case ISO code, e.g. "
                f"[currency.usd].", table, None,
            )
        if not isinstance(cfg, dict):
            raise fail(f"[{table}] must be a table of limits.", "currency", code)
        for key in cfg:
            if key not in CURRENCY_KEYS:
                known = ", ".join(CURRENCY_KEYS)
                raise fail(f"unknown key {key!r}. Known keys: {known}.", table, key)
        cap = cfg.get("max_reward_per_referral")
        review = cfg.get("review_above")
        currencies[code] = CurrencyRules(
            max_reward_per_referral=None if cap is None
            else whole(table, "max_reward_per_referral", cap, 0),
            signup_bonus=whole(table, "signup_bonus", cfg.get("signup_bonus", 0), 0),
            purchase_bonus=whole(table, "purchase_bonus", cfg.get("purchase_bonus", 0), 0),
            min_payout=whole(table, "min_payout", cfg.get("min_payout", 1), 1),
            review_above=None if review is None else whole(table, "review_above", review, 0),
        )

    return Rules(
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
        currencies=currencies,
    )


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
