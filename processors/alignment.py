"""Where a control event takes effect: aligned barriers through the stages (docs/design.md#one-order).

A control event (payout run, review decision, …) must take effect at one place in the
stripe-events log, the same place live and in replay. The worker writes that place into the
log itself: for each control record it appends a *marker* to every stripe-events partition
(schemas/topics.py). Every Stripe record before a partition's marker comes before the control
event, every record after it comes after.

The stages then carry the cut through, the way aligned checkpoint barriers do: a stage
partition that receives the barrier on one of its input channels stops taking that channel's
records (they are *held*) until the barrier has arrived on every channel it expects; then it
applies the control event, sends the barrier on, and releases what it held. So every record
derived from before the cut is folded before the control event at every stage, and none
derived from after it. Held records are part of the stage partition's table value, so a
crash or a rebalance neither loses nor repeats them.

Pure: no I/O, no clock. `Alignment` is the per-partition state; `Aligner` is one record's
worth of bookkeeping over it.
"""

from __future__ import annotations

from typing import NamedTuple

import orjson


class HeldRecord(NamedTuple):
    """An input record taken while its channel waited at a barrier."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]


class Pending(NamedTuple):
    control_offset: int
    control: bytes  # the control record's stored bytes
    arrived: frozenset[str]  # the channels that delivered it


class Alignment(NamedTuple):
    done: int = -1  # the highest control offset this stage partition has completed
    pending: tuple[Pending, ...] = ()  # in control offset order
    held: tuple[tuple[str, HeldRecord], ...] = ()  # (channel, record), in arrival order

    def blocked(self, channel: str) -> bool:
        return any(channel in p.arrived for p in self.pending)


class Completed(NamedTuple):
    control_offset: int
    control: bytes


def arrive(
    a: Alignment, control_offset: int, control: bytes, channel: str, expected: frozenset[str],
) -> tuple[Alignment, bool, list[Completed], list[tuple[str, HeldRecord]]]:
    """A barrier for `control_offset` arrived on `channel`.

    Returns the new state, whether the arrival was new (False: a duplicate, e.g. a marker
    written twice or a barrier re-sent after a crash), the barriers it completed (in order)
    and the held records released by them (in arrival order; a caller feeds them back in,
    and a record whose channel is still blocked is held again)."""
    if control_offset <= a.done:
        return a, False, [], []
    pending = list(a.pending)
    for i, p in enumerate(pending):
        if p.control_offset == control_offset:
            if channel in p.arrived:
                return a, False, [], []
            pending[i] = Pending(control_offset, p.control, p.arrived | {channel})
            break
    else:
        pending.append(Pending(control_offset, control, frozenset((channel,))))
        pending.sort()
    done = a.done
    completed: list[Completed] = []
    while pending and expected <= pending[0].arrived:
        head = pending.pop(0)
        done = head.control_offset
        completed.append(Completed(head.control_offset, head.control))
    if not completed:
        return Alignment(done, tuple(pending), a.held), True, [], []
    return Alignment(done, tuple(pending), ()), True, completed, list(a.held)


def hold(a: Alignment, channel: str, record: HeldRecord) -> Alignment:
    return Alignment(a.done, a.pending, (*a.held, (channel, record)))


# --- table value codec ----------------------------------------------------------------------


def _b(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("latin-1")


def _u(text: str | None) -> bytes | None:
    return None if text is None else text.encode("latin-1")


def dumps(a: Alignment) -> bytes:
    # latin-1 maps every byte to one code point: arbitrary bytes round-trip through JSON
    return orjson.dumps([
        a.done,
        [[p.control_offset, _b(p.control), sorted(p.arrived)] for p in a.pending],
        [[ch, r.topic, r.partition, r.offset, _b(r.key), _b(r.value), [[k, _b(v)] for k, v in r.headers]]
         for ch, r in a.held],
    ])


def loads(raw: bytes | None) -> Alignment:
    if not raw:
        return Alignment()
    done, pending, held = orjson.loads(raw)
    return Alignment(
        done,
        tuple(Pending(k, _u(c) or b"", frozenset(arrived)) for k, c, arrived in pending),
        tuple((ch, HeldRecord(t, p, o, _u(k), _u(v) or b"", tuple((hk, _u(hv) or b"") for hk, hv in hs)))
              for ch, t, p, o, k, v, hs in held),
    )
