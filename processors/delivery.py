"""Delivery bookkeeping of the Faust shell: message ids, watermarks, table envelopes.

The workers run at-least-once (docs/pipeline.md says why not Faust's exactly-once). Two
things make the effect exactly-once anyway:

- Every record sent between stages carries the id of the fact that produced it:
  `(upstream, offset, index)`, where `upstream` is the topic-partition the sending agent
  was reading, `offset` the record it was processing there and `index` the position among
  that record's outputs. One agent reads one partition in order and a producer keeps the
  order within a partition, so the ids one receiving key sees from one upstream only grow.
- A stage stores, with each key's state and in the same table value, the highest id it
  applied per upstream (the watermark). A replayed record (after a crash or a rebalance)
  has an id at or below the watermark and is skipped. Because a stage awaits the broker's
  acknowledgement of everything a record produced *before* it writes the new state, a
  skipped record's outputs are known to be delivered already.

No clock and no I/O here: pure functions over bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import orjson

# Kafka header names of the internal topics.
H_MSG_ID = "refstream-msg"  # "<upstream>|<offset>|<index>"
H_KIND = "refstream-kind"  # what the value is: see KIND_*
H_DEST = "refstream-dest"  # outbox only: payouts | notifications | reviews
H_FROM = "refstream-from"  # the sending stage partition, "<stage>:<partition>" (a barrier channel)
H_CONTROL_OFFSET = "refstream-control-offset"  # barriers: the control record's offset

KIND_STRIPE = b"stripe"  # raw Stripe webhook body (schemas/stripe.py)
KIND_EVENT = b"event"  # schemas/events.py record
KIND_COMMAND = b"command"  # schemas/commands.py record (outbox)
KIND_BARRIER = b"barrier"  # a control event passing a stage (processors/alignment.py)

Position = tuple[int, int]  # (offset, index)


@dataclass(frozen=True, slots=True)
class MessageId:
    upstream: str  # "<topic>#<partition>"
    offset: int
    index: int

    @property
    def position(self) -> Position:
        return (self.offset, self.index)

    def encode(self) -> bytes:
        return f"{self.upstream}|{self.offset}|{self.index}".encode()

    @classmethod
    def decode(cls, raw: bytes) -> MessageId:
        upstream, offset, index = raw.decode().rsplit("|", 2)
        return cls(upstream, int(offset), int(index))

    @classmethod
    def of_record(cls, topic: str, partition: int, offset: int, index: int = 0) -> MessageId:
        return cls(f"{topic}#{partition}", offset, index)


@dataclass(slots=True)
class Envelope:
    """A key's stage state (the core's `dumps` bytes, or None) and its watermarks."""

    state: bytes | None = None
    marks: dict[str, Position] = field(default_factory=dict)

    def seen(self, mid: MessageId) -> bool:
        mark = self.marks.get(mid.upstream)
        return mark is not None and mid.position <= mark

    def mark(self, mid: MessageId) -> None:
        self.marks[mid.upstream] = mid.position


_HEAD = struct.Struct(">I")


def dumps_envelope(env: Envelope) -> bytes:
    marks = orjson.dumps({k: list(v) for k, v in env.marks.items()})
    return _HEAD.pack(len(marks)) + marks + (env.state or b"")


def loads_envelope(raw: bytes | None) -> Envelope:
    if not raw:
        return Envelope()
    (n,) = _HEAD.unpack_from(raw)
    marks = orjson.loads(raw[_HEAD.size : _HEAD.size + n])
    state = raw[_HEAD.size + n :]
    return Envelope(state or None, {k: (int(v[0]), int(v[1])) for k, v in marks.items()})


def header(headers: object, name: str) -> bytes | None:
    """A header's value from Faust's/aiokafka's header shapes (mapping or pairs)."""
    if headers is None:
        return None
    items = headers.items() if isinstance(headers, dict) else headers
    for k, v in items:  # type: ignore[attr-defined]
        if k == name:
            return bytes(v) if v is not None else None
    return None


def murmur2_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (Java and aiokafka alike) gives a key."""
    from aiokafka.partitioner import murmur2

    return (murmur2(key) & 0x7FFFFFFF) % partitions
