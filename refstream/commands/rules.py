"""`refstream rules check FILE`: validate a rules file before using it.

Keys, defaults and limits: docs/rules.md#the-rules-file.
"""

from __future__ import annotations

import click

from schemas.rules import Rules, RulesError, load_rules

RULES_DOC = "docs/rules.md#the-rules-file"


def describe(rules: Rules) -> str:
    """One line an operator can read back: what the file will do."""
    parts = [
        f"revision {rules.revision}",
        f"{rules.reward_percent}% for {rules.reward_months} months",
        f"signup bonus in {rules.currency}",
        f"hold {rules.hold_days} days",
        f"late attribution {rules.late_attribution_days} days",
        f"organization level {'on' if rules.organization_level else 'off'}",
        f"one-off charges {'rewarded' if rules.reward_one_off_charges else 'not rewarded'}",
    ]
    currencies = ", ".join(sorted(rules.currencies)) or "none (every invoice opens a review case)"
    return "ok: " + ", ".join(parts) + f"; currencies: {currencies}"


@click.group(name="rules")
def rules() -> None:
    """Reward rules files.

    Keys, defaults and limits: docs/rules.md#the-rules-file.
    """


@rules.command(name="check")
@click.argument("file", type=click.Path(dir_okay=False, path_type=str))
def check(file: str) -> None:
    """Validate FILE; explain the first mistake with its line and field.

    Keys, defaults and limits: docs/rules.md#the-rules-file.
    """
    try:
        loaded = load_rules(file)
    except RulesError as exc:
        click.echo(f"error: {exc}", err=True)
        if exc.line is not None or exc.field is not None:  # a mistake in the text, not an unreadable file
            click.echo(f"Keys, defaults and limits: {RULES_DOC}", err=True)
        raise SystemExit(1) from None
    click.echo(describe(loaded))
