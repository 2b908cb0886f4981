"""Unit-test helpers: an Engine under examples/rules.toml's rules, and output filters."""

from __future__ import annotations

from pathlib import Path

import pytest

from processors.rules.engine import Engine, Routed
from schemas import control
from schemas.commands import CaseState, NotificationCommand, PayoutCommand, ReviewCase
from schemas.rules import Rules, load_rules, parse_rules

EXAMPLE_RULES = Path(__file__).resolve().parents[2] / "examples" / "rules.toml"


@pytest.fixture
def rules() -> Rules:
    return load_rules(EXAMPLE_RULES)


def make_rules(**campaign: object) -> Rules:
    """The examples/rules.toml rules with some campaign keys (or `currency_<code>` tables) replaced."""
    base = {"revision": 3, "currency": '"usd"', "reward_percent": 25, "reward_months": 12,
            "hold_days": 30, "late_attribution_days": 30, "organization_level": "false",
            "reward_one_off_charges": "false"}
    tables = {"usd": {"max_reward_per_referral": 10000, "signup_bonus": 500, "purchase_bonus": 1000,
                      "min_payout": 2000, "review_above": 50000}}
    for k, v in campaign.items():
        if k.startswith("currency_"):
            code = k.removeprefix("currency_")
            if v is None:
                tables.pop(code, None)
            else:
                tables[code] = dict(v)  # type: ignore[call-overload]
        elif isinstance(v, bool):
            base[k] = "true" if v else "false"
        elif isinstance(v, str):
            base[k] = f'"{v}"'
        else:
            base[k] = v  # type: ignore[assignment]
    lines = ["[campaign]"] + [f"{k} = {v}" for k, v in base.items()]
    for code, cfg in tables.items():
        lines.append(f"[currency.{code}]")
        lines += [f"{k} = {v}" for k, v in cfg.items()]
    return parse_rules("\n".join(lines) + "\n")


def notifications(out: list[Routed], kind: str | None = None) -> list[NotificationCommand]:
    return [r.record for r in out if isinstance(r.record, NotificationCommand)
            and (kind is None or r.record.kind == kind)]


def payouts(out: list[Routed]) -> list[PayoutCommand]:
    return [r.record for r in out if isinstance(r.record, PayoutCommand)]


def cases(out: list[Routed], kind: str | None = None) -> list[ReviewCase]:
    return [r.record for r in out if isinstance(r.record, ReviewCase)
            and (kind is None or r.record.kind == kind)]


def case_states(out: list[Routed]) -> list[tuple[str, str]]:
    """(case id, status) of the case states in `out` (the review-cases topic's records)."""
    return [(r.record.case_id, r.record.status) for r in out if isinstance(r.record, CaseState)]


def released(out: list[Routed]) -> list[Routed]:
    """`out` without the case states: the commands a step made."""
    return [r for r in out if not isinstance(r.record, CaseState)]


def run(engine: Engine, run_id: str, as_of: int) -> list[Routed]:
    return engine.feed_control(control.encode(control.PayoutRun(run_id, as_of, as_of)))


def decide(engine: Engine, case: ReviewCase, approve: bool, at: int) -> list[Routed]:
    return engine.feed_control(control.encode(
        control.ReviewDecision(case.case_id, case.ucc, approve, "checked by a test", at)))


def feed(engine: Engine, *bodies: bytes) -> list[Routed]:
    out: list[Routed] = []
    for b in bodies:
        out += engine.feed_stripe(b)
    return out
