"""The output records: payouts, notifications, review cases and their states
(docs/cli.md#output-records).

Every id is a pure function of the facts it stands for (`fact_id`), so a replayed or
retried command carries the same id and a consumer can drop duplicates.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, fields
from typing import Any

import orjson

from schemas.frozen import fast_init

# Notification kinds (docs/cli.md#output-records)
NEW_SIGNUP = "new_signup"
REWARD_EARNED = "reward_earned"
REWARD_REVERSED = "reward_reversed"
RECURRING_REWARDS_CANCELLED = "recurring_rewards_cancelled"
PAYOUT_CREATED = "payout_created"
# a payout's outcome came back failed or returned: its amount is payable again
# (docs/rules.md#the-payout-lifecycle)
PAYOUT_FAILED = "payout_failed"
PAYOUT_RETURNED = "payout_returned"

# Review case kinds (docs/rules.md#review-cases)
ATTRIBUTION_CONFLICT = "attribution_conflict"
LATE_ATTRIBUTION = "late_attribution"
UNSUPPORTED_CURRENCY = "unsupported_currency"
UNLINKED_REFUND = "unlinked_refund"
LARGE_REWARD = "large_reward"
SUSPECTED_FRAUD = "suspected_fraud"  # details.signal: one of SIGNALS (docs/rules.md#fraud-signals)
CASE_KINDS = (ATTRIBUTION_CONFLICT, LATE_ATTRIBUTION, UNSUPPORTED_CURRENCY, UNLINKED_REFUND, LARGE_REWARD,
              SUSPECTED_FRAUD)

# Fraud signals: the `signal` of a suspected_fraud case
SELF_REFERRAL = "self_referral"
SHARED_CARD = "shared_card"
VELOCITY = "velocity"
SIGNALS = (SELF_REFERRAL, SHARED_CARD, VELOCITY)

# Case states (CaseState.status): a case opens once and ends once, by a decision or, for an
# unlinked refund, by its charge's link (docs/rules.md#review-cases)
CASE_OPEN = "open"
CASE_APPROVED = "approved"
CASE_REJECTED = "rejected"
CASE_LINKED = "linked"
CASE_STATUSES = (CASE_OPEN, CASE_APPROVED, CASE_REJECTED, CASE_LINKED)


def fact_id(*parts: str | int | None) -> str:
    """A 128-bit hex id derived from the facts (order matters; None and "" differ)."""
    try:
        text = "\x1f".join(parts)  # type: ignore[arg-type]  # most ids: strings only, no conversion
    except TypeError:  # a None or an int among them
        text = "\x1f".join([p if type(p) is str else "\x00" if p is None else str(p) for p in parts])
    return _blake2b(text.encode(), digest_size=16).hexdigest()


_blake2b = hashlib.blake2b


@fast_init
@dataclass(frozen=True, slots=True)
class PayoutCommand:
    payout_id: str
    run_id: str
    ucc: str
    currency: str
    amount: int
    as_of: int
    entry_ids: tuple[str, ...]
    rules_revision: int


@fast_init
@dataclass(frozen=True, slots=True)
class NotificationCommand:
    notification_id: str
    kind: str
    ucc: str
    referral_id: str | None  # None for payout_created, payout_failed, payout_returned
    currency: str | None
    amount: int
    source_event_id: str  # the Stripe event id, or the control record's id for payouts
    occurred_at: int


@fast_init
@dataclass(frozen=True, slots=True)
class ReviewCase:
    case_id: str
    kind: str
    ucc: str
    referral_id: str
    details: dict[str, Any]
    opened_at: int


@fast_init
@dataclass(frozen=True, slots=True)
class CaseState:
    """One change of a review case: it opened, or it ended (approved, rejected, linked).

    Written to the compacted review-cases topic, which keeps every case for as long as it
    exists, whatever the other topics' retention: `refstream review list` and `resolve`
    read it. The closing record repeats what the opening one said, so each record stands
    alone."""

    case_state_id: str  # case_state_id(case_id, status)
    case_id: str
    kind: str
    ucc: str
    referral_id: str
    status: str  # CASE_STATUSES
    details: dict[str, Any]  # as on the ReviewCase
    opened_at: int
    decided_at: int | None  # None while open: the decision's time, or the time of the link
    reason: str | None  # None while open: the decision's reason, or why the link ended it


def case_state_id(case_id: str, status: str) -> str:
    return fact_id("case_state", case_id, status)


Command = PayoutCommand | NotificationCommand | ReviewCase | CaseState


# Commands whose fields are all plain values: their dict is built from the slots directly,
# several times cheaper than `asdict`'s deep copy and the same bytes (a review case's and a
# case state's `details` may hold anything, so they keep `asdict`).
_FLAT: dict[type[Any], tuple[str, ...]] = {
    cls: tuple(f.name for f in fields(cls)) for cls in (PayoutCommand, NotificationCommand)
}


def encode(command: Command) -> bytes:
    """JSON bytes with exactly the documented fields (keys sorted, so bytes are stable)."""
    names = _FLAT.get(type(command))
    doc = asdict(command) if names is None else {name: getattr(command, name) for name in names}
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)


def decode(raw: bytes) -> Command:
    """The record back from its JSON (told apart by its id field)."""
    doc = orjson.loads(raw)
    if not isinstance(doc, dict):
        raise ValueError("an output record is a JSON object")
    if "payout_id" in doc:
        doc["entry_ids"] = tuple(doc["entry_ids"])
        return PayoutCommand(**doc)
    if "notification_id" in doc:
        return NotificationCommand(**doc)
    if "case_state_id" in doc:  # before case_id, which it carries too
        return CaseState(**doc)
    if "case_id" in doc:
        return ReviewCase(**doc)
    raise ValueError("not a payout, notification, review case or case state record")
