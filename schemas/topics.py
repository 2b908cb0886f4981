"""Topic names per environment, partition counts and configs (docs/design.md#topics-and-keys).

Every stage and every test derives names from here, so sandbox and production can never
share a topic, and a test can run the whole system under a private prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

STRIPE_EVENTS = "stripe-events"
CONTROL = "control"
PAYOUTS = "payouts"
NOTIFICATIONS = "notifications"
REVIEWS = "reviews"
REVIEW_CASES = "review-cases"
DEAD_LETTERS = "dead-letters"
DELIVERY_DEAD_LETTERS = "delivery-dead-letters"

# Partitions bound how many workers can share the load; 8 is plenty for one programme
# and cheap for a single-node dev broker.
DEFAULT_PARTITIONS = 8

# The stripe-events log is the source of truth: kept forever. Control events (payout
# runs, review decisions) are facts too, so they are kept forever as well. Outputs are
# commands for downstream consumers, which can always be recomputed by replay.
FOREVER = {"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete"}
OUTPUT_RETENTION = {"retention.ms": str(30 * 24 * 3600 * 1000), "cleanup.policy": "delete"}
# Review cases, though, are state a person acts on, for as long as a case is open: their
# states are compacted, never deleted for age. Each record's key is its own id (a case's
# opening and its end are two keys), so compaction only ever drops an exact duplicate: the
# publisher's duplicate check reads these ids back, and none of them may disappear.
COMPACTED = {"cleanup.policy": "compact", "retention.ms": "-1", "retention.bytes": "-1"}


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]


@dataclass(frozen=True, slots=True)
class Topics:
    """The names of one environment's topics. `prefix` is `refstream` in operation."""

    env: str
    prefix: str = "refstream"

    def _name(self, kind: str) -> str:
        return f"{self.prefix}.{kind}.{self.env}"

    @property
    def stripe_events(self) -> str:
        return self._name(STRIPE_EVENTS)

    @property
    def control(self) -> str:
        return self._name(CONTROL)

    @property
    def payouts(self) -> str:
        return self._name(PAYOUTS)

    @property
    def notifications(self) -> str:
        return self._name(NOTIFICATIONS)

    @property
    def reviews(self) -> str:
        return self._name(REVIEWS)

    @property
    def review_cases(self) -> str:
        return self._name(REVIEW_CASES)

    @property
    def dead_letters(self) -> str:
        return self._name(DEAD_LETTERS)

    @property
    def delivery_dead_letters(self) -> str:
        """Outputs `refstream deliver` gave up on, with the last error (docs/cli.md#deliver)."""
        return self._name(DELIVERY_DEAD_LETTERS)

    def specs(self, partitions: int = DEFAULT_PARTITIONS) -> list[TopicSpec]:
        return [
            TopicSpec(self.stripe_events, partitions, dict(FOREVER)),
            # Control events are few; they are fanned out to referrer partitions by the
            # worker, so one partition keeps their order total.
            TopicSpec(self.control, 1, dict(FOREVER)),
            TopicSpec(self.payouts, partitions, dict(OUTPUT_RETENTION)),
            TopicSpec(self.notifications, partitions, dict(OUTPUT_RETENTION)),
            TopicSpec(self.reviews, partitions, dict(OUTPUT_RETENTION)),
            # as many partitions as the other outputs: the publisher writes each case state
            # to the partition of its ucc, next to the referrer's other commands
            TopicSpec(self.review_cases, partitions, dict(COMPACTED)),
            TopicSpec(self.dead_letters, 1, dict(FOREVER)),
            # records a person must look at, like the dead letters above: kept until then
            TopicSpec(self.delivery_dead_letters, 1, dict(FOREVER)),
        ]


# Header names on every stripe-events record (docs/design.md#topics-and-keys).
H_EVENT_ID = "refstream-event-id"
H_EVENT_TYPE = "refstream-event-type"
H_ENV = "refstream-env"
H_RECEIVED_AT = "refstream-received-at"


# --- where control events take effect (docs/design.md#one-order) ---------------------------
#
# For every control record, the worker appends a marker to each stripe-events partition:
# key `\x00control:<control offset>`, value the control record's bytes. The event takes effect
# after every Stripe record before the markers and before every record after them. Once all
# markers are written it appends `\x00placed:<control offset>` to the control topic, so a
# reader knows in advance which control records have markers. Stripe customer ids never
# start with a NUL byte, so these keys cannot collide with ingest's.

_MARKER = b"\x00control:"
_PLACED = b"\x00placed:"


def marker_key(control_offset: int) -> bytes:
    return _MARKER + str(control_offset).encode()


def marker_offset(key: bytes | None) -> int | None:
    """The control offset a stripe-events record marks, or None for a Stripe event."""
    if key is None or not key.startswith(_MARKER):
        return None
    return int(key[len(_MARKER):])


def placed_key(control_offset: int) -> bytes:
    return _PLACED + str(control_offset).encode()


def placed_offset(key: bytes | None) -> int | None:
    """The control offset a control-topic record says is placed, or None for a control event."""
    if key is None or not key.startswith(_PLACED):
        return None
    return int(key[len(_PLACED):])
