"""Records of the control topic: what operators (and `payouts execute`) tell the workers.

Payout runs, review decisions, rules revisions, campaign assignments, payout outcomes,
referrers' payout accounts, manual ledger adjustments and links of a referrer to its own
Stripe customer (docs/cli.md#control-records).
Every record an operator writes names its `actor` and its `reason`; records written
before they did decode with both empty.

See docs/rules.md#holding-and-payouts and docs/rules.md#review-cases.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import orjson

from schemas.commands import fact_id

VERSION = 1


@dataclass(frozen=True, slots=True)
class PayoutRun:
    run_id: str
    as_of: int  # Unix seconds: entries payable by then are paid
    requested_at: int
    actor: str = ""  # "" in runs appended before runs named their actor
    reason: str = ""

    @property
    def control_id(self) -> str:
        # the run id is the idempotency key: the same run twice pays nothing more
        return fact_id("payout_run", self.run_id)


@dataclass(frozen=True, slots=True)
class ReviewDecision:
    case_id: str
    ucc: str
    approve: bool
    reason: str
    decided_at: int
    actor: str = ""  # "" in decisions appended before decisions named their actor

    @property
    def control_id(self) -> str:
        return fact_id("review_decision", self.case_id, int(self.approve), self.reason, self.decided_at)


@dataclass(frozen=True, slots=True)
class ControlPlaced:
    """Written by the worker, not by an operator: the control record at `control_offset` has
    its markers in every stripe-events partition (`markers`: partition → marker offset), so
    it takes effect there (docs/design.md#one-order). Replay reads these to know, before it
    merges, which control records wait for their markers."""

    control_offset: int
    markers: dict[str, int]

    @property
    def control_id(self) -> str:
        return fact_id("control_placed", self.control_offset)


@dataclass(frozen=True, slots=True)
class RulesRevision:
    """A rules file published to take effect from `effective_from` (docs/rules.md#revisions).
    `rules` is the file's text as `refstream rules publish` checked it; `revision` is its
    `[campaign] revision`."""

    revision: int
    effective_from: int
    rules: str
    published_at: int
    actor: str
    reason: str

    @property
    def control_id(self) -> str:
        return fact_id("rules_revision", self.revision, self.effective_from, self.rules)


@dataclass(frozen=True, slots=True)
class CampaignAssignment:
    """Puts a referrer on a named campaign of the rules from `published_at` on, never
    retroactively (docs/rules.md#campaigns)."""

    ucc: str
    campaign: str
    published_at: int
    actor: str
    reason: str

    @property
    def control_id(self) -> str:
        return fact_id("campaign_assignment", self.ucc, self.campaign, self.published_at)


# PayoutOutcome.status (docs/cli.md#control-records)
PAID = "paid"
FAILED = "failed"
RETURNED = "returned"
OUTCOMES = (PAID, FAILED, RETURNED)
PENDING = "pending"  # a payout with no outcome yet


def outcome_applies(current: str, status: str) -> bool:
    """Whether an outcome `status` changes a payout that is `current` (PENDING or an
    outcome): paid only a pending one; failed and returned a pending or a paid one. Failed
    and returned are final. The referrer stage and the CLI both go by this."""
    return current == PENDING if status == PAID else current in (PENDING, PAID)


@dataclass(frozen=True, slots=True)
class PayoutOutcome:
    """What became of a payout: `paid` (by `payouts execute`, `reference` the Stripe transfer
    id, or by hand with `payouts mark-paid`, `reference` the operator's), `failed` (never
    reached the referrer) or `returned` (reached them and came back). Failed and returned
    put the amount back into the referrer's payable balance (docs/cli.md#control-records)."""

    payout_id: str
    ucc: str
    status: str  # OUTCOMES
    reference: str  # the transfer id or the operator's reference; "" when there is none
    at: int
    actor: str
    reason: str

    @property
    def control_id(self) -> str:
        # one outcome of each status per payout: the same one twice changes nothing
        return fact_id("payout_outcome", self.payout_id, self.status)


@dataclass(frozen=True, slots=True)
class ReferrerAccount:
    """Where a referrer is paid from `set_at` on: a Stripe connected account (`acct_…`, for
    `payouts execute`) or an e-mail address (for `payouts export --format paypal|wise`).
    The latest of each kind counts (docs/cli.md#referrers)."""

    ucc: str
    account: str
    set_at: int
    actor: str
    reason: str
    name: str = ""  # the account holder's name, for a batch file that asks for one (Wise)

    @property
    def control_id(self) -> str:
        return fact_id("referrer_account", self.ucc, self.account, self.set_at)

    @property
    def kind(self) -> str:
        """`stripe` for a connected account, `email` for an address."""
        return "stripe" if self.account.startswith("acct_") else "email"


@dataclass(frozen=True, slots=True)
class LedgerAdjustment:
    """A ledger entry made by a person: `amount` (minor units, + owed to the referrer,
    − taken back) payable from `at` on, paid and replayed like any other entry
    (docs/cli.md#control-records). `adjustment_id` is its idempotency key: the same
    id twice adjusts once."""

    adjustment_id: str
    ucc: str
    currency: str
    amount: int
    at: int
    actor: str
    reason: str

    @property
    def control_id(self) -> str:
        return fact_id("ledger_adjustment", self.adjustment_id)


@dataclass(frozen=True, slots=True)
class ReferrerLink:
    """`customer_id` is the referrer `ucc`'s own Stripe customer (the one whose user holds the
    referral code), from `linked_at` on: its e-mail address and cards are the referrer's own,
    so a referral that shares one is a self-referral (docs/rules.md#fraud-signals). It takes
    effect at that customer's stage partition. Linking the same pair again changes nothing."""

    ucc: str
    customer_id: str
    linked_at: int
    actor: str
    reason: str

    @property
    def control_id(self) -> str:
        return fact_id("referrer_link", self.ucc, self.customer_id)


def adjustment_id(ucc: str, currency: str, amount: int, at: int, actor: str, reason: str) -> str:
    """The default id of an adjustment: from everything it says, its time included."""
    return fact_id("adjustment", ucc, currency, amount, at, actor, reason)


ControlRecord = (PayoutRun | ReviewDecision | ControlPlaced | RulesRevision | CampaignAssignment
                 | PayoutOutcome | ReferrerAccount | LedgerAdjustment | ReferrerLink)
_TYPES: dict[str, type[ControlRecord]] = {
    "payout_run": PayoutRun,
    "review_decision": ReviewDecision,
    "control_placed": ControlPlaced,
    "rules_revision": RulesRevision,
    "campaign_assignment": CampaignAssignment,
    "payout_outcome": PayoutOutcome,
    "referrer_account": ReferrerAccount,
    "ledger_adjustment": LedgerAdjustment,
    "referrer_link": ReferrerLink,
}
_TAGS = {cls: tag for tag, cls in _TYPES.items()}


def control_id(record: ControlRecord) -> str:
    return record.control_id


class ControlDecodeError(ValueError):
    pass


def encode(record: ControlRecord) -> bytes:
    tag = _TAGS[type(record)]
    return orjson.dumps({"v": VERSION, "type": tag, **asdict(record)}, option=orjson.OPT_SORT_KEYS)


def decode(raw: bytes) -> ControlRecord:
    """Raises ControlDecodeError naming what is wrong."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ControlDecodeError(f"not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ControlDecodeError("a control record is a JSON object")
    if doc.get("v") != VERSION:
        raise ControlDecodeError(f"unknown control record version {doc.get('v')!r}")
    cls = _TYPES.get(doc.get("type", ""))
    if cls is None:
        raise ControlDecodeError(f"unknown control record type {doc.get('type')!r}")
    if cls is ControlPlaced:
        offset, markers = doc.get("control_offset"), doc.get("markers")
        if isinstance(offset, bool) or not isinstance(offset, int) or not isinstance(markers, dict):
            raise ControlDecodeError("control_placed: expected control_offset and markers")
        return ControlPlaced(offset, {str(k): int(v) for k, v in markers.items()})
    if cls is RulesRevision:
        revision, rules = doc.get("revision"), doc.get("rules")
        if isinstance(revision, bool) or not isinstance(revision, int) or not isinstance(rules, str):
            raise ControlDecodeError("rules_revision: expected revision (a number) and rules (text)")
        return RulesRevision(revision, _seconds(doc, "effective_from"), rules, _seconds(doc, "published_at"),
                             _text(doc, "actor"), _text(doc, "reason"))
    if cls is CampaignAssignment:
        return CampaignAssignment(_text(doc, "ucc"), _text(doc, "campaign"), _seconds(doc, "published_at"),
                                  _text(doc, "actor"), _text(doc, "reason"))
    if cls is PayoutRun:
        run_id = doc.get("run_id")
        if not isinstance(run_id, str) or not run_id:
            raise ControlDecodeError("run_id: expected a non-empty string")
        return PayoutRun(run_id, _seconds(doc, "as_of"), _seconds(doc, "requested_at"),
                         _text(doc, "actor", ""), _text(doc, "reason", ""))
    if cls is PayoutOutcome:
        status = _text(doc, "status")
        if status not in OUTCOMES:
            raise ControlDecodeError(f"status: expected one of {', '.join(OUTCOMES)}, not {status!r}")
        return PayoutOutcome(_id(doc, "payout_id"), _id(doc, "ucc"), status, _text(doc, "reference"),
                             _seconds(doc, "at"), _text(doc, "actor"), _text(doc, "reason"))
    if cls is ReferrerAccount:
        return ReferrerAccount(_id(doc, "ucc"), _id(doc, "account"), _seconds(doc, "set_at"),
                               _text(doc, "actor"), _text(doc, "reason"), _text(doc, "name", ""))
    if cls is ReferrerLink:
        return ReferrerLink(_id(doc, "ucc"), _id(doc, "customer_id"), _seconds(doc, "linked_at"),
                            _text(doc, "actor"), _text(doc, "reason"))
    if cls is LedgerAdjustment:
        amount = doc.get("amount")
        if isinstance(amount, bool) or not isinstance(amount, int) or amount == 0:
            raise ControlDecodeError("amount: expected a non-zero whole number of minor units")
        return LedgerAdjustment(_id(doc, "adjustment_id"), _id(doc, "ucc"), _id(doc, "currency"), amount,
                                _seconds(doc, "at"), _text(doc, "actor"), _text(doc, "reason"))
    fields = {k: doc.get(k) for k in ("case_id", "ucc", "approve", "reason", "decided_at")}
    if not isinstance(fields["case_id"], str) or not isinstance(fields["ucc"], str):
        raise ControlDecodeError("case_id and ucc: expected strings")
    if not isinstance(fields["approve"], bool):
        raise ControlDecodeError("approve: expected true or false")
    if not isinstance(fields["reason"], str):
        raise ControlDecodeError("reason: expected a string")
    return ReviewDecision(
        fields["case_id"], fields["ucc"], fields["approve"], fields["reason"], _seconds(doc, "decided_at"),
        _text(doc, "actor", ""),
    )


def _seconds(doc: dict[str, object], name: str) -> int:
    v = doc.get(name)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ControlDecodeError(f"{name}: expected Unix seconds")
    return v


def _text(doc: dict[str, object], name: str, missing: str | None = None) -> str:
    """The string field `name`; `missing` (when given) if the record has none."""
    v = doc.get(name, missing)
    if not isinstance(v, str):
        raise ControlDecodeError(f"{name}: expected a string")
    return v


def _id(doc: dict[str, object], name: str) -> str:
    v = _text(doc, name)
    if not v:
        raise ControlDecodeError(f"{name}: expected a non-empty string")
    return v
