"""Records of the control topic: payout runs and review decisions.

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


ControlRecord = PayoutRun | ReviewDecision | ControlPlaced | RulesRevision | CampaignAssignment
_TYPES: dict[str, type[ControlRecord]] = {
    "payout_run": PayoutRun,
    "review_decision": ReviewDecision,
    "control_placed": ControlPlaced,
    "rules_revision": RulesRevision,
    "campaign_assignment": CampaignAssignment,
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
        return PayoutRun(run_id, _seconds(doc, "as_of"), _seconds(doc, "requested_at"))
    fields = {k: doc.get(k) for k in ("case_id", "ucc", "approve", "reason", "decided_at")}
    if not isinstance(fields["case_id"], str) or not isinstance(fields["ucc"], str):
        raise ControlDecodeError("case_id and ucc: expected strings")
    if not isinstance(fields["approve"], bool):
        raise ControlDecodeError("approve: expected true or false")
    if not isinstance(fields["reason"], str):
        raise ControlDecodeError("reason: expected a string")
    return ReviewDecision(
        fields["case_id"], fields["ucc"], fields["approve"], fields["reason"], _seconds(doc, "decided_at")
    )


def _seconds(doc: dict[str, object], name: str) -> int:
    v = doc.get(name)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ControlDecodeError(f"{name}: expected Unix seconds")
    return v


def _text(doc: dict[str, object], name: str) -> str:
    v = doc.get(name)
    if not isinstance(v, str):
        raise ControlDecodeError(f"{name}: expected a string")
    return v
