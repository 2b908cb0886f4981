"""The JSON the worker's web API and `refstream audit --json` answer (docs/cli.md#worker):
a referrer's summary and history, every amount as `{"amount": <minor units>, "currency": …}`.

Pure: the worker (processors/web.py) and the CLI (refstream/commands/audit.py) build the
same answers from the same state, so they say the same.
"""

from __future__ import annotations

from typing import Any

from processors.rules import referrer


def money(amount: int, currency: str) -> dict[str, Any]:
    return {"amount": amount, "currency": currency}


def summary_json(s: referrer.ReferrerSummary, as_of: int) -> dict[str, Any]:
    return {
        "ucc": s.ucc, "referrals": s.referrals, "open_cases": s.open_cases, "as_of": as_of,
        "currencies": {c: {name: money(getattr(f, name), c)
                           for name in ("earned", "reversed", "net", "paid", "payable")}
                       for c, f in s.currencies.items()},
    }


def history_json(state: referrer.ReferrerState, as_of: int) -> dict[str, Any]:
    """The summary, and the history with each line's money and the balance owed after it
    (per currency): the last balance of each currency is `net − paid`."""
    balance: dict[str, int] = {}
    lines = []
    for h in referrer.history(state):
        line: dict[str, Any] = {"at": h.at, "kind": h.kind, "source_event_id": h.source,
                                "referral_id": h.referral_id, "ref": h.ref, "note": h.note,
                                "figure": h.figure, "amount": None, "balance": None}
        if h.currency is not None:
            balance[h.currency] = balance.get(h.currency, 0) + h.amount
            line["amount"] = money(h.amount, h.currency)
            line["balance"] = money(balance[h.currency], h.currency)
        lines.append(line)
    return {**summary_json(referrer.summary(state, as_of), as_of), "history": lines}
